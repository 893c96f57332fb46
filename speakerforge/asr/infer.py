"""Decoding with an optional hotword list, and the evaluation table of `speakerforge asr eval`.

The model is a FunASR directory or an `asr train` experiment (`speakerforge.asr.funasr_dir.load_funasr`). Two
decodings (`Decoding.mode`):
- `seaco` (FunASR's): for SeACo the no-bias entry is appended to the list, the bias branch is merged as FunASR does
  (its distribution replaces the ASR's at tokens where its argmax is not `NO_BIAS`), and a list longer than 50
  entries is first cut by attention score; a ContextualParaformer's decoder reads the list;
- `ctc`: prefix beam search over the CTC head with the list as a context graph (`speakerforge.asr.context`), as
  WeNet and sherpa bias; it needs no trained bias branch, so it also reaches words no training sentence held.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from speakerforge.asr.data import read_asr_jsonl, read_decode_inputs
from speakerforge.asr.decoding import Decoding
from speakerforge.asr.funasr_dir import load_funasr, read_hotword_list
from speakerforge.asr.metrics import AsrScores, format_table
from speakerforge.data.audio import load_audio

log = logging.getLogger(__name__)


def decode(
    model_path: str | Path,
    data: Sequence[str | Path],
    hotwords: str | None = None,
    decoding: Decoding | None = None,
) -> list[tuple[str, str]]:
    """(key, text) of every utterance of `data` (`read_decode_inputs`), decoded by `model_path`: an `asr train`
    experiment or model file, or a FunASR model directory (`config.yaml` + `model.pt`; SeACo- or
    Contextual-Paraformer, decoded as FunASR, one utterance at a time). `hotwords`: a file (one per line) or a
    string of space-separated hotwords, as FunASR takes them."""
    utts = read_decode_inputs(list(data))
    wavs = [torch.from_numpy(load_audio(u.path, u.start, u.end)) for u in utts]
    fm = load_funasr(model_path)
    texts = fm.transcribe(wavs, read_hotword_list(hotwords) if hotwords else [], decoding)
    return [(u.key, t) for u, t in zip(utts, texts)]


def read_hotwords(path: str | Path) -> list[str]:
    """A hotword list file for scoring: its words once each, in order (a repeated word would count twice)."""
    return list(dict.fromkeys(read_hotword_list(path, file_only=True)))


def evaluate(
    model_path: str | Path,
    data: str | Path,
    hotwords: str | Path,
    distractors: Sequence[str | Path] = (),
    decoding: Decoding | None = None,
) -> tuple[dict[str, dict[str, float]], str]:
    """Scores with no list, the true hotwords, and the true hotwords plus each distractor list; (rows, table).
    Every row uses the same decoding, so the list is the only difference."""
    fm = load_funasr(model_path)
    utts = read_asr_jsonl(data)
    true = read_hotwords(hotwords)
    wavs = [torch.from_numpy(load_audio(u.path, u.start, u.end)) for u in utts]
    conditions: dict[str, list[str]] = {"no hotwords": [], "true hotwords": true}
    for d in distractors:
        extra = [w for w in read_hotwords(d) if w not in true]
        conditions[f"true + {len(extra)} distractors"] = true + extra
    rows = {}
    for name, biasing in conditions.items():
        hyps = fm.transcribe(wavs, biasing, decoding)
        s = AsrScores()
        for u, h in zip(utts, hyps):
            s.add(u.text, h, true)  # recall/precision and B-WER always against the true hotwords
        rows[name] = s.result()
        log.info("%s: %s", name, rows[name])
    return rows, format_table(rows) + "\n" + biasing_summary(rows) + "\n" + (decoding or Decoding()).describe()


def biasing_summary(rows: dict[str, dict[str, float]]) -> str:
    """Each biased condition against the unbiased one: recall ratio and U-WER change (the issue's goal is
    ratio >= 2 and U-WER within +1 point)."""
    base = rows["no hotwords"]
    lines = []
    for name, r in rows.items():
        if name == "no hotwords":
            continue
        if base["recall"] > 0:
            ratio = f"{r['recall'] / base['recall']:.2f}x"
        else:  # no ratio to a zero recall; say whether the list found any hotword at all
            ratio = "no ratio: none found without a list" + ("" if r["recall"] > 0 else " or with it")
        lines.append(
            f"{name}: hotword recall {r['recall']:.1f}% vs {base['recall']:.1f}% without a list "
            f"({ratio}); U-WER {r['u_wer'] - base['u_wer']:+.2f} points"
        )
    return "\n".join(lines)
