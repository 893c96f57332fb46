"""`speakerforge asr export --format funasr`: a model as a FunASR model directory (`config.yaml`, `model.pt`,
`tokens.json`, `am.mvn`, `seg_dict` when there is one, `bpe.model` for learnt pieces) that FunASR's own classes load
strictly and decode as `speakerforge asr decode` does.

The source is a FunASR model directory (SeACo- or Contextual-Paraformer, read strictly and written back, e.g. to
drop a release's extra files or to turn `tokens.txt` into `tokens.json`) or an `asr train` experiment (or its
`model.safetensors`). A `config.yaml` without `frontend_conf.dither` is written with `dither: 0.0`: FunASR dithers
by 1.0 when the key is absent, at decoding too, which would make its output vary from run to run.
"""

from __future__ import annotations

from pathlib import Path

from speakerforge.asr.funasr_dir import load_funasr
from speakerforge.errors import ConfigError

FORMATS = ("funasr",)


def export_asr(src: str | Path, out: str | Path, fmt: str = "funasr", hotwords: str | None = None) -> Path:
    """Write the model at `src` to the folder `out` (new or empty) in `fmt`; returns `out`. `hotwords` (a file or
    a space-separated string, as `asr decode` takes them): words a model with learnt BPE pieces adds to the exported
    `seg_dict`, so FunASR tokenises them as speakerforge does (FunASR maps a word outside it to `<unk>`)."""
    from speakerforge.asr.funasr_dir import read_hotword_list

    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: choose {', '.join(FORMATS)}")
    o = Path(out)
    if o.exists() and (not o.is_dir() or any(o.iterdir())):
        raise ConfigError(f"{o}: the export folder must be new or empty")
    fm = load_funasr(src)
    return fm.save(o, read_hotword_list(hotwords) if hotwords else ())
