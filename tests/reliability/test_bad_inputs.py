"""Bad-input catalogue: every command against every kind of bad input it can meet.

One table (`CASES`), one contract, checked for every row through `speakerforge.cli.main(argv)` in-process:

* the exit code is not 0;
* stderr holds exactly one line, `speakerforge <command>: error: ...`, naming the file (and line, or key);
* no traceback (unless `--debug`: see `test_debug_shows_the_traceback`);
* nothing is left behind: the case's output folder stays empty (no partial file, no temp file) and no temp file
  appears anywhere in the shared fixture tree.

A few rows are also run as a real `python -m speakerforge` subprocess (exit code, stderr without a traceback).
Inputs that look odd but are fine (8 kHz and 44.1 kHz audio, silent audio) have their own tests: they must work,
and embeddings are always finite.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from speakerforge.checkpoint_io import MAGIC
from speakerforge.cli import main
from speakerforge.errors import SpeakerforgeError
from tests.trainutil import tiny_corpus

REPO = Path(__file__).resolve().parents[2]
SR = 16000
# tests.trainutil.TINY_MODEL as --set items without spaces (argv templates are split on spaces), plus settings
# small enough that the model fixture trains in seconds on one CPU thread.
TINY_SETS = [
    "model.name=ecapa_tdnn",
    "model.args.channels=16",
    "model.args.embedding_dim=16",
    "data.batch_size=8",
    "data.crop_seconds=0.5",
    "train.threads=1",
    "train.epochs=1",
    "optim.lr=0.05",
    "train.seed=3",
]


def _sets(*extra: str) -> str:
    return " ".join(f"--set {s}" for s in [*TINY_SETS, *extra])


def _ssl_sets(*extra: str) -> str:
    """`_sets` for `pretrain`, which reads no `data.crop_seconds` (its crops are `ssl.*_seconds`) and refuses it."""
    return " ".join(f"--set {s}" for s in [*TINY_SETS, *extra] if not s.startswith("data.crop_seconds"))


def _noise(seconds: float, seed: int, sr: int = SR) -> np.ndarray:
    n = int(round(seconds * sr))
    rng = np.random.default_rng(seed)
    env = np.interp(np.arange(n), np.linspace(0, n, 12), rng.uniform(0.02, 0.3, 12))
    return (env * rng.standard_normal(n)).astype(np.float32)


class Planted:
    """A pickle that runs a shell command when unpickled: `touch MARKER`."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ----------------------------------------------------------------------------------------------------------------
# the world: every bad input, built once per module
@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Paths by name (used as `{name}` in the case table). Read-only for the cases."""
    root = tmp_path_factory.mktemp("world")
    w: dict[str, Path] = {"root": root}
    a = root / "audio"
    a.mkdir()

    def wav(name: str, samples: np.ndarray, sr: int = SR, subtype: str = "PCM_16") -> Path:
        sf.write(a / name, samples, sr, subtype=subtype)
        return a / name

    w["good_a"] = wav("good_a.wav", _noise(1.0, 1))
    w["good_b"] = wav("good_b.wav", _noise(1.3, 2))
    w["sr8k"] = wav("sr8k.wav", _noise(1.0, 3, 8000), 8000)
    w["sr44k"] = wav("sr44k.wav", np.stack([_noise(1.0, 4, 44100)] * 2, axis=1), 44100)
    w["silent"] = wav("silent.wav", np.zeros(SR, np.float32))
    w["short"] = wav("short.wav", _noise(0.010, 5))  # 10 ms: not even one 25 ms frame
    w["short40"] = wav("short40.wav", _noise(0.040, 6))  # 40 ms: 2 frames, fewer than the network accepts
    nan = _noise(1.0, 7)
    nan[100:200] = np.nan
    w["nan"] = wav("nan.wav", nan, subtype="FLOAT")
    w["empty"] = a / "empty.wav"
    w["empty"].write_bytes(b"")
    w["text"] = a / "text.wav"
    w["text"].write_text("this is a text file, not audio\n")
    w["m4a"] = a / "clip.m4a"
    w["m4a"].write_bytes(b"\x00\x00\x00\x20ftypM4A \x00\x00\x02\x00" + bytes(range(256)) * 4)
    w["dir_wav"] = a / "folder.wav"
    w["dir_wav"].mkdir()
    w["a_file"] = root / "a_file.txt"  # a regular file: paths under it cannot be created, even by root
    w["a_file"].write_text("I am a file\n")
    w["a_dir"] = root / "a_dir"
    w["a_dir"].mkdir()
    w["marker"] = root / "MARKER_code_ran"

    # manifests: one row each, or a few
    m = root / "man"
    for name in ("empty", "text", "nan", "short", "short40", "m4a", "dir_wav", "silent"):
        w[f"m_{name}"] = _jsonl(
            m / f"{name}.jsonl",
            [{"key": "ok", "wav": str(w["good_a"]), "spk": "s1"}, {"key": name, "wav": str(w[name]), "spk": "s2"}],
        )
    w["m_missing_audio"] = _jsonl(
        m / "missing_audio.jsonl",
        [{"key": "ok", "wav": str(w["good_a"]), "spk": "s1"}, {"key": "gone", "wav": "nope/gone.wav", "spk": "s1"}],
    )
    w["m_dup"] = _jsonl(
        m / "dup.jsonl",
        [
            {"key": "a", "wav": str(w["good_a"]), "spk": "s1"},
            {"key": "b", "wav": str(w["good_b"]), "spk": "s1"},
            {"key": "a", "wav": str(w["good_b"]), "spk": "s2"},
        ],
    )
    w["m_rates"] = _jsonl(
        m / "rates.jsonl",
        [{"key": "r8", "wav": str(w["sr8k"]), "spk": "s1"}, {"key": "r44", "wav": str(w["sr44k"]), "spk": "s2"}],
    )
    w["m_badcols"] = m / "badcols.csv"
    w["m_badcols"].write_text(f"ID,dur,path,start,stop\na,1.0,{w['good_a']},,\n")
    w["m_badjson"] = m / "badjson.jsonl"
    w["m_badjson"].write_text(json.dumps({"key": "a", "wav": str(w["good_a"]), "spk": "s"}) + "\n{not json\n")
    w["m_unknown_format"] = m / "list.txt"
    w["m_unknown_format"].write_text(f"a {w['good_a']}\n")
    w["m_dir_jsonl"] = m / "folder.jsonl"
    w["m_dir_jsonl"].mkdir()
    w["kaldi_pipe"] = m / "kaldi_pipe"
    w["kaldi_pipe"].mkdir()
    (w["kaldi_pipe"] / "wav.scp").write_text(f"a {w['good_a']}\nb sox x.wav -t wav - | touch {w['marker']} |\n")
    (w["kaldi_pipe"] / "utt2spk").write_text("a s1\nb s2\n")

    # training corpus, configs
    w["corpus"] = tiny_corpus(root / "corpus", n_speakers=4, utts=3, seconds=1.0)
    cfg = root / "cfg"
    cfg.mkdir()
    w["cfg_unknown"] = cfg / "unknown.yaml"
    w["cfg_unknown"].write_text("optim:\n  lrr: 0.1\n")
    w["cfg_type"] = cfg / "type.yaml"
    w["cfg_type"].write_text("train:\n  epochs: ten\n")
    w["cfg_yaml"] = cfg / "broken.yaml"
    w["cfg_yaml"].write_text("train:\n  epochs: [1, 2\n  seed: 3\n")

    # one tiny trained model, its checkpoint, and model files that are not models
    w["exp"] = root / "exp"
    assert main(["--quiet", "train", "--exp", str(w["exp"]), "--data", str(w["corpus"]), *_sets().split()]) == 0
    w["model"] = w["exp"] / "model.safetensors"
    w["onnx"] = root / "model.onnx"
    assert main(["--quiet", "export", "--model", str(w["model"]), "--onnx", str(w["onnx"])]) == 0
    w["fake_onnx"] = root / "fake.onnx"
    w["fake_onnx"].write_bytes(b"\x00garbage, not a protobuf\xff\xfe")
    w["planted_pt"] = root / "planted.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "evil": Planted(w["marker"])}, w["planted_pt"])
    w["foreign_pt"] = root / "foreign.pt"  # a plain state dict that fits no toolkit's layout of any model
    torch.save({"blocks.0.conv.weight": torch.zeros(2, 2)}, w["foreign_pt"])
    w["planted_pkl"] = root / "planted.pkl"
    w["planted_pkl"].write_bytes(pickle.dumps(Planted(w["marker"])))
    # a checkpoint with a valid header and checksum whose payload is the planted pickle
    w["planted_exp"] = root / "planted_exp"
    (w["planted_exp"] / "checkpoints").mkdir(parents=True)
    (w["planted_exp"] / "config.yaml").write_text((w["exp"] / "config.yaml").read_text())
    payload = w["planted_pt"].read_bytes()
    import hashlib

    w["planted_ckpt"] = w["planted_exp"] / "checkpoints" / "ckpt-000000010.pt"
    w["planted_ckpt"].write_bytes(MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)

    # embeddings, trials, scores
    e = root / "eval"
    e.mkdir()
    rng = np.random.default_rng(0)
    keys = ["u1", "u2", "u3", "u4"]
    w["emb"] = e / "emb.npz"
    np.savez(w["emb"], **{k: rng.standard_normal(16).astype(np.float32) for k in keys})
    w["emb_nan"] = e / "emb_nan.npz"
    np.savez(w["emb_nan"], u1=np.full(16, np.nan, np.float32), u2=np.ones(16, np.float32))
    w["cohort8"] = e / "cohort8.npz"
    np.savez(w["cohort8"], **{f"c{i}": rng.standard_normal(8).astype(np.float32) for i in range(5)})
    w["emb_text"] = e / "text.npz"
    w["emb_text"].write_text("not a zip file\n")
    w["trials"] = e / "trials.txt"
    w["trials"].write_text("1 u1 u2\n0 u1 u3\n1 u3 u4\n0 u2 u4\n")
    w["trials_unknown"] = e / "trials_unknown.txt"
    w["trials_unknown"].write_text("1 u1 u2\n0 u1 ghost\n")
    w["trials_malformed"] = e / "trials_malformed.txt"
    w["trials_malformed"].write_text("1 u1 u2\n0 u1 u3\n1 u3\n0 u2 u4\n")
    w["trials_target"] = e / "trials_target.txt"
    w["trials_target"].write_text("1 u1 u2\n1 u3 u4\n")
    w["scores_target"] = e / "target.score"
    w["scores_target"].write_text("u1 u2 0.5 target\nu3 u4 0.7 target\n")
    w["scores_nan"] = e / "nan.score"
    w["scores_nan"].write_text("u1 u2 0.5 target\nu1 u3 nan nontarget\n")
    w["scores_malformed"] = e / "malformed.score"
    w["scores_malformed"].write_text("u1 u2 0.5 target\nu1 u3 high nontarget\n")
    w["scores_unlabelled"] = e / "unlabelled.score"
    w["scores_unlabelled"].write_text("u1 u2 0.5\nu1 u3 0.1\n")
    w["scores_unlabelled_target"] = e / "unlabelled_target.score"
    w["scores_unlabelled_target"].write_text("u1 u2 0.5\nu3 u4 0.1\n")
    w["scores_ok"] = e / "ok.score"
    w["scores_ok"].write_text("u1 u2 0.5 target\nu1 u3 0.1 nontarget\n")

    # corpus folders for `prepare`
    p = root / "prep"
    (p / "libri_empty").mkdir(parents=True)
    (p / "libri_empty" / "readme.txt").write_text("no audio here\n")
    (p / "libri_bad" / "19" / "198").mkdir(parents=True)
    (p / "libri_bad" / "19" / "198" / "19-198-0001.flac").write_text("not flac\n")
    (p / "libri_ok" / "19" / "198").mkdir(parents=True)
    sf.write(p / "libri_ok" / "19" / "198" / "19-198-0001.flac", _noise(0.5, 8), SR)
    (p / "cv_none").mkdir()
    (p / "cv_header" / "clips").mkdir(parents=True)
    (p / "cv_header" / "validated.tsv").write_text("speaker\tfile\nabc\tx.mp3\n")
    (p / "cv_binary" / "clips").mkdir(parents=True)
    (p / "cv_binary" / "validated.tsv").write_bytes(b"client_id\tpath\n\xff\xfe\x00garbage\x81\n")
    for name in ("libri_ok", "libri_empty", "libri_bad", "cv_none", "cv_header", "cv_binary"):
        w[name] = p / name
    _hardening_world(w, root)
    paths = {k: str(v) for k, v in w.items()}
    paths.update(_model_variants(paths, root))
    return paths


def _hardening_world(w: dict[str, Path], root: Path) -> None:
    """Inputs of the [hardening] probe: hostile configs, headers, archives and model metadata."""
    h = root / "hard"
    h.mkdir()
    bomb = "model:\n  name: ecapa_tdnn\n  args:\n    a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
    for i in range(1, 9):
        bomb += f"    a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n"
    w["cfg_bomb"] = h / "bomb.yaml"
    w["cfg_bomb"].write_text(bomb)
    w["cfg_deep"] = h / "deep.yaml"
    w["cfg_deep"].write_text("model:\n  args:\n    x: " + "[" * 600 + "]" * 600 + "\n")
    w["cfg_deep_map"] = h / "deep_map.yaml"
    w["cfg_deep_map"].write_text("".join("  " * i + f"k{i}:\n" for i in range(300)) + "  " * 300 + "v: 1\n")
    w["cfg_ssl_list"] = h / "list_top.yaml"
    w["cfg_ssl_list"].write_text("- model\n- data\n")
    # audio whose header says 1 Hz: 200 KB that would resample to hours
    w["wav_1hz"] = h / "one_hz.wav"
    sf.write(w["wav_1hz"], _noise(1.0, 11)[:16000], 1000)
    raw = bytearray(w["wav_1hz"].read_bytes())
    raw[24:28] = (1).to_bytes(4, "little")  # sample rate
    raw[28:32] = (2).to_bytes(4, "little")  # byte rate
    w["wav_1hz"].write_bytes(bytes(raw))
    w["m_1hz"] = _jsonl(h / "one_hz.jsonl", [{"key": "hz", "wav": str(w["wav_1hz"]), "spk": "s1"}])
    # a segment that starts past the end of its 1 s file
    rows = [{"key": f"u{i}", "wav": str(w["good_a"]), "spk": f"s{i % 2}"} for i in range(4)]
    rows.append({"key": "late", "wav": str(w["good_b"]), "spk": "s1", "start": 30.0, "end": 31.0})
    w["m_late_segment"] = _jsonl(h / "late.jsonl", rows)
    w["m_bigfield"] = h / "bigfield.csv"
    w["m_bigfield"].write_text(f"ID,dur,path,start,stop,spk\na,1.0,{w['good_a']},,,s1\nb,1.0,{'x' * 140_000},,,s2\n")
    w["m_bom_csv"] = h / "bom.csv"
    w["m_bom_csv"].write_bytes(b"\xef\xbb\xbfID,dur,path,start,stop\na,1.0,x.wav,,\n")
    # an .npz whose one member inflates to 8 MB (declared in the zip directory)
    import zipfile

    w["npz_bomb"] = h / "bomb.npz"
    with zipfile.ZipFile(w["npz_bomb"], "w", zipfile.ZIP_DEFLATED) as zf:
        import io

        buf = io.BytesIO()
        np.save(buf, np.zeros(1_000_000, np.float64))
        zf.writestr("u1.npy", buf.getvalue())
    w["npz_matrix"] = h / "matrix.npz"
    np.savez(w["npz_matrix"], u1=np.zeros((4, 4), np.float32))
    w["trials_bom_unknown"] = h / "trials_bom.txt"
    w["trials_bom_unknown"].write_bytes(b"\xef\xbb\xbf1 u1 u2\n0 u1 nobody\n")
    w["ro_dir"] = h / "readonly_out"
    w["ro_dir"].mkdir()


def _model_variants(w: dict[str, str], root: Path) -> dict[str, str]:
    """Copies of the trained model file (and ONNX model) with hostile or wrong metadata."""
    from speakerforge.checkpoint_io import load_model_file, save_model_file

    h = root / "hard" / "models"
    h.mkdir(parents=True, exist_ok=True)
    state, meta = load_model_file(w["model"])
    out: dict[str, str] = {}

    def variant(name: str, new_meta: object) -> None:
        from safetensors.torch import save

        path = h / f"{name}.safetensors"
        path.write_bytes(
            save({k: v.contiguous() for k, v in state.items()}, metadata={"speakerforge": json.dumps(new_meta)})
        )
        out[f"model_{name}"] = str(path)

    variant("meta_null", None)
    variant("meta_list", [1, 2, 3])
    variant("meta_model_list", {**meta, "model": ["ecapa_tdnn"]})
    variant("meta_args_list", {**meta, "model": {"name": "ecapa_tdnn", "args": [16, 16]}})
    variant("meta_name_int", {**meta, "model": {"name": 7, "args": meta["model"]["args"]}})
    variant("meta_features_str", {**meta, "features": "fbank"})
    variant("meta_mel_text", {**meta, "features": {**meta["features"], "num_mel_bins": "eighty"}})
    variant("meta_mel_huge", {**meta, "features": {**meta["features"], "num_mel_bins": 100000}})
    variant("meta_shift_nan", {**meta, "features": {**meta["features"], "frame_shift": float("nan")}})
    variant("meta_dim_text", {**meta, "embedding_dim": "sixteen"})
    variant("meta_threshold_list", {**meta, "threshold": [0.5]})
    variant("meta_speakers_dict", {**meta, "speakers": {"a": 1}})
    variant(
        "meta_unknown_arg", {**meta, "model": {"name": "ecapa_tdnn", "args": {**meta["model"]["args"], "chanels": 8}}}
    )
    variant(
        "meta_channels_huge",
        {**meta, "model": {"name": "ecapa_tdnn", "args": {**meta["model"]["args"], "channels": 200000}}},
    )
    variant(
        "meta_channels_negative",
        {**meta, "model": {"name": "ecapa_tdnn", "args": {**meta["model"]["args"], "channels": -1}}},
    )
    save_model_file(h / "ok_copy.safetensors", state, meta)
    import onnx

    for name, text in (
        ("list", "[1, 2]"),
        ("features", '{"features": {"num_mel_bins": "x"}, "embedding_dim": 16}'),
        ("dim", '{"embedding_dim": "big", "with_fbank": false}'),
        ("fbank", '{"with_fbank": "yes", "embedding_dim": 16}'),
        ("dim_huge", '{"embedding_dim": 10000000, "with_fbank": false}'),
    ):
        m = onnx.load(w["onnx"])
        for prop in m.metadata_props:
            if prop.key == "speakerforge":
                prop.value = text
        path = h / f"onnx_{name}.onnx"
        onnx.save(m, str(path))
        out[f"onnx_{name}"] = str(path)
    return out


# ----------------------------------------------------------------------------------------------------------------
# the table
@dataclass(frozen=True)
class Case:
    id: str
    argv: str  # formatted with the world's paths and {out} (a fresh empty folder), then split on spaces
    needles: tuple[str, ...]  # each must appear in the error line (formatted the same way)
    subprocess: bool = False

    @property
    def command(self) -> str:
        return self.argv.split()[0]


def C(id: str, argv: str, *needles: str, subprocess: bool = False) -> Case:
    return Case(id, argv, needles, subprocess)


MODEL = "--model {model}"
CASES = [
    # ---- validate: problems are listed on stdout; the verdict is one error line on stderr
    C("validate-missing-manifest", "validate {root}/absent.jsonl", "{root}/absent.jsonl", "not found", subprocess=True),
    C("validate-missing-audio", "validate {m_missing_audio}", "{m_missing_audio}:2", "gone.wav", "not found"),
    C("validate-empty-audio", "validate {m_empty}", "{m_empty}:2", "empty.wav", "empty"),
    C("validate-corrupt-audio", "validate {m_text}", "{m_text}:2", "text.wav", "cannot decode"),
    C("validate-nan-audio-deep", "validate --deep {m_nan}", "{m_nan}:2", "nan.wav", "NaN"),
    C("validate-unsupported-format", "validate {m_m4a}", "{m_m4a}:2", "clip.m4a", "cannot decode"),
    C("validate-directory-as-audio", "validate {m_dir_wav}", "{m_dir_wav}:2", "folder.wav", "directory"),
    C("validate-duplicate-ids", "validate {m_dup}", "{m_dup}:3", "duplicate ID 'a'", "{m_dup}:1"),
    C("validate-bad-csv-columns", "validate {m_badcols}", "{m_badcols}:1", "spk"),
    C("validate-bad-json-line", "validate {m_badjson}", "{m_badjson}:2", "bad JSON"),
    C("validate-unknown-manifest-format", "validate {m_unknown_format}", "{m_unknown_format}", "'.txt'"),
    C("validate-kaldi-pipe", "validate {kaldi_pipe}", "{kaldi_pipe}/wav.scp:2", "pipe"),
    C("validate-directory-as-manifest", "validate {m_dir_jsonl}", "{m_dir_jsonl}", "wav.scp"),
    # ---- prepare
    C("prepare-librispeech-missing", "prepare librispeech {root}/nolibri --out {out}/m", "{root}/nolibri", "not found"),
    C(
        "prepare-librispeech-no-files",
        "prepare librispeech {libri_empty} --out {out}/m",
        "{libri_empty}",
        "no LibriSpeech files",
    ),
    C(
        "prepare-librispeech-corrupt-only",
        "prepare librispeech {libri_bad} --out {out}/m",
        "{libri_bad}",
        "no usable librispeech utterances",
        "19-198-0001.flac",
    ),
    C("prepare-librispeech-unwritable-out", "prepare librispeech {libri_ok} --out {unwritable}/m", "{unwritable}"),
    C("prepare-commonvoice-no-tsv", "prepare commonvoice {cv_none} --out {out}/m", "{cv_none}", "validated.tsv"),
    C(
        "prepare-commonvoice-bad-header",
        "prepare commonvoice {cv_header} --out {out}/m",
        "{cv_header}/validated.tsv:1",
        "client_id",
    ),
    C(
        "prepare-commonvoice-binary-tsv",
        "prepare commonvoice {cv_binary} --out {out}/m",
        "{cv_binary}/validated.tsv",
        "UTF-8",
    ),
    C("prepare-synthetic-zero-speakers", "prepare synthetic --out {out}/s --speakers 0", "synthetic", "speakers"),
    C(
        "prepare-synthetic-trials-impossible",
        "prepare synthetic --out {out}/s --speakers 1 --trials 10",
        "trials",
        "two speakers",
    ),
    C("prepare-synthetic-unwritable-out", "prepare synthetic --out {unwritable}/s --speakers 2", "{unwritable}"),
    C(
        "prepare-demo-unwritable-out",
        "prepare demo --out {unwritable}/d --train-speakers 1 --test-speakers 2",
        "{unwritable}",
    ),
    C("prepare-demo-too-few-speakers", "prepare demo --out {out}/d --test-speakers 1", "test speakers"),
    # ---- train
    C(
        "train-config-missing",
        "train --config {root}/none.yaml --exp {out}/e --data {corpus}",
        "{root}/none.yaml",
        "not found",
    ),
    C("train-config-is-directory", "train --config {a_dir} --exp {out}/e --data {corpus}", "{a_dir}", "directory"),
    C(
        "train-config-unknown-key",
        "train --config {cfg_unknown} --exp {out}/e --data {corpus}",
        "{cfg_unknown}",
        "'optim.lrr'",
        "'optim.lr'",
        subprocess=True,
    ),
    C(
        "train-config-wrong-type",
        "train --config {cfg_type} --exp {out}/e --data {corpus}",
        "{cfg_type}",
        "train.epochs",
        "integer",
    ),
    C(
        "train-config-invalid-yaml",
        "train --config {cfg_yaml} --exp {out}/e --data {corpus}",
        "{cfg_yaml}:3:",
        "invalid YAML",
    ),
    C(
        "train-set-missing-key",
        "train --exp {out}/e --data {corpus} --set train.epoch=3",
        "'train.epoch'",
        "'train.epochs'",
    ),
    C(
        "train-set-wrong-type",
        "train --exp {out}/e --data {corpus} --set data.batch_size=big",
        "data.batch_size",
        "integer",
    ),
    C(
        "train-set-zero-epochs",
        "train --exp {out}/e --data {corpus} " + _sets("train.epochs=0"),
        "train.epochs",
        ">= 1",
    ),
    C("train-set-negative-lr", "train --exp {out}/e --data {corpus} " + _sets("optim.lr=-0.1"), "optim.lr", "> 0"),
    C(
        "train-data-missing",
        "train --exp {out}/e --data {root}/nope.jsonl " + _sets(),
        "{root}/nope.jsonl",
        "not found",
    ),
    C("train-data-duplicate-ids", "train --exp {out}/e --data {m_dup} " + _sets(), "{m_dup}:3", "duplicate ID"),
    C("train-data-bad-columns", "train --exp {out}/e --data {m_badcols} " + _sets(), "{m_badcols}:1", "spk"),
    C("train-data-kaldi-pipe", "train --exp {out}/e --data {kaldi_pipe} " + _sets(), "{kaldi_pipe}/wav.scp:2", "pipe"),
    C(
        "train-data-corrupt-audio",
        "train --exp {out}/e --data {m_text} " + _sets(),
        "{m_text}:2",
        "text.wav",
        "--skip-bad-audio",
    ),
    C(
        "train-data-empty-and-missing-audio",
        "train --exp {out}/e --data {m_empty} {m_missing_audio} " + _sets(),
        "2 unreadable",
        "{m_empty}:2",
        "empty.wav",
    ),
    C(
        "train-data-nan-audio",
        "train --exp {out}/e --data {m_nan} " + _sets("data.batch_size=2"),
        "{m_nan}:2",
        "nan.wav",
        "NaN",
    ),
    C(
        "train-data-nan-audio-in-a-worker",
        "train --exp {out}/e --data {m_nan} " + _sets("data.batch_size=2", "data.num_workers=1"),
        "{m_nan}:2",
        "nan.wav",
        "NaN",
    ),
    C("train-unwritable-exp", "train --exp {unwritable}/e --data {corpus} " + _sets(), "{unwritable}"),
    # ---- finetune
    C(
        "finetune-init-missing",
        "finetune --init {root}/none --exp {out}/e --data {corpus} " + _sets(),
        "{root}/none",
        "not found",
    ),
    C(
        "finetune-init-planted-pickle",
        "finetune --init {planted_pt} --init-format 3dspeaker --exp {out}/e --data {corpus} " + _sets(),
        "{planted_pt}",
        "refused",
    ),
    C(
        "finetune-init-planted-checkpoint",
        "finetune --init {planted_exp} --exp {out}/e --data {corpus} " + _sets(),
        "{planted_exp}",
        "refused",
    ),
    C(
        "finetune-init-not-a-checkpoint",
        "finetune --init {fake_onnx} --exp {out}/e --data {corpus} " + _sets(),
        "{fake_onnx}",
        "not a speakerforge checkpoint",
    ),
    C(
        "finetune-freeze-matches-nothing",
        "finetune --init {exp} --freeze backbone.nothing_here --exp {out}/e --data {corpus} " + _sets(),
        "backbone.nothing_here",
        "matches no",
    ),
    C(
        "finetune-set-missing-key",
        "finetune --init {exp} --exp {out}/e --data {corpus} --set train.frezee=x",
        "'train.frezee'",
        "'train.freeze'",
    ),
    # ---- extract
    C(
        "extract-model-missing",
        "extract --model {root}/none.safetensors --data {m_rates} --out {out}/e.npz",
        "{root}/none.safetensors",
        "not found",
    ),
    C(
        "extract-model-fake-onnx",
        "extract --model {fake_onnx} --data {m_rates} --out {out}/e.npz",
        "{fake_onnx}",
        "ONNX",
    ),
    C(
        "extract-model-planted-checkpoint",
        "extract --model {planted_ckpt} --data {m_rates} --out {out}/e.npz",
        "{planted_ckpt}",
        "refused",
    ),
    C(
        "extract-data-missing",
        "extract " + MODEL + " --data {root}/none.jsonl --out {out}/e.npz",
        "{root}/none.jsonl",
        "not found",
    ),
    C(
        "extract-corrupt-audio",
        "extract " + MODEL + " --data {m_text} --out {out}/e.npz",
        "{m_text}:2",
        "text.wav",
        "cannot decode",
    ),
    C("extract-empty-audio", "extract " + MODEL + " --data {m_empty} --out {out}/e.npz", "{m_empty}:2", "empty.wav"),
    C("extract-nan-audio", "extract " + MODEL + " --data {m_nan} --out {out}/e.npz", "{m_nan}:2", "nan.wav", "NaN"),
    C(
        "extract-too-short-audio",
        "extract " + MODEL + " --data {m_short} --out {out}/e.npz",
        "{m_short}:2",
        "short.wav",
        "shorter",
    ),
    C(
        "extract-too-short-for-the-network",
        "extract " + MODEL + " --data {m_short40} --out {out}/e.npz",
        "{m_short40}:2",
        "short40.wav",
        "shorter",
    ),
    C(
        "extract-onnx-too-short-for-the-network",
        "extract --model {onnx} --data {m_short40} --out {out}/e.npz",
        "{m_short40}:2",
        "short40.wav",
        "shorter",
    ),
    C("extract-unsupported-format", "extract " + MODEL + " --data {m_m4a} --out {out}/e.npz", "{m_m4a}:2", "clip.m4a"),
    C("extract-duplicate-ids", "extract " + MODEL + " --data {m_dup} --out {out}/e.npz", "{m_dup}:3", "duplicate ID"),
    C(
        "extract-kaldi-pipe",
        "extract " + MODEL + " --data {kaldi_pipe} --out {out}/e.npz",
        "{kaldi_pipe}/wav.scp:2",
        "pipe",
    ),
    C("extract-out-not-npz", "extract " + MODEL + " --data {m_rates} --out {out}/e.txt", "{out}/e.txt", ".npz"),
    C(
        "extract-out-is-directory",
        "extract " + MODEL + " --data {m_rates} --out {out}/d.npz",
        "{out}/d.npz",
        "is a folder",
    ),
    C("extract-unwritable-out", "extract " + MODEL + " --data {m_rates} --out {unwritable}/e.npz", "{unwritable}"),
    # ---- score
    C(
        "score-unknown-utterances",
        "score --embeddings {emb} --trials {trials_unknown} --out {out}/s.txt",
        "{trials_unknown}",
        "ghost",
    ),
    C(
        "score-malformed-trials",
        "score --embeddings {emb} --trials {trials_malformed} --out {out}/s.txt",
        "{trials_malformed}:3",
        subprocess=True,
    ),
    C(
        "score-cohort-dimension",
        "score --embeddings {emb} --trials {trials} --cohort {cohort8} --out {out}/s.txt",
        "{cohort8}",
        "8",
        "16",
    ),
    C(
        "score-embeddings-missing",
        "score --embeddings {root}/no.npz --trials {trials} --out {out}/s.txt",
        "{root}/no.npz",
        "not found",
    ),
    C("score-embeddings-corrupt", "score --embeddings {emb_text} --trials {trials} --out {out}/s.txt", "{emb_text}"),
    C(
        "score-embeddings-nan",
        "score --embeddings {emb_nan} --trials {trials_target} --out {out}/s.txt",
        "{emb_nan}",
        "NaN",
    ),
    C(
        "score-trials-is-directory",
        "score --embeddings {emb} --trials {a_dir} --out {out}/s.txt",
        "{a_dir}",
        "directory",
    ),
    C(
        "score-embeddings-is-directory",
        "score --embeddings {out}/d.npz --trials {trials} --out {out}/s.txt",
        "{out}/d.npz",
        "directory",
    ),
    C("score-unwritable-out", "score --embeddings {emb} --trials {trials} --out {unwritable}/s.txt", "{unwritable}"),
    # ---- eval
    C(
        "eval-all-target-trials",
        "eval --scores {scores_target} --out-dir {out}",
        "{scores_target}",
        "all 2 trials are target",
    ),
    C(
        "eval-all-target-trial-list",
        "eval --scores {scores_unlabelled_target} --trials {trials_target} --out-dir {out}",
        "{trials_target}",
        "all 2 trials are target",
    ),
    C("eval-nan-scores", "eval --scores {scores_nan} --out-dir {out}", "{scores_nan}:2", "NaN"),
    C("eval-malformed-scores", "eval --scores {scores_malformed} --out-dir {out}", "{scores_malformed}:2"),
    C(
        "eval-unlabelled-without-trials",
        "eval --scores {scores_unlabelled} --out-dir {out}",
        "{scores_unlabelled}",
        "--trials",
    ),
    C("eval-scores-missing", "eval --scores {root}/no.score --out-dir {out}", "{root}/no.score", "not found"),
    C("eval-unwritable-out-dir", "eval --scores {scores_ok} --out-dir {unwritable}/d", "{unwritable}"),
    # ---- verify
    C("verify-too-short", "verify " + MODEL + " {good_a} {short}", "{short}", "shorter", subprocess=True),
    C("verify-too-short-for-the-network", "verify " + MODEL + " {good_a} {short40}", "{short40}", "shorter"),
    C(
        "verify-onnx-too-short-for-the-network",
        "verify --model {onnx} {good_a} {short40}",
        "{short40}",
        "shorter",
        subprocess=True,
    ),
    C("verify-nan-audio", "verify " + MODEL + " {nan} {good_a}", "{nan}", "NaN"),
    C("verify-missing-audio", "verify " + MODEL + " {good_a} {root}/none.wav", "{root}/none.wav", "not found"),
    C("verify-corrupt-audio", "verify " + MODEL + " {text} {good_a}", "{text}", "cannot decode"),
    C("verify-empty-audio", "verify " + MODEL + " {empty} {good_a}", "{empty}", "empty"),
    C("verify-unsupported-format", "verify " + MODEL + " {m4a} {good_a}", "{m4a}", "cannot decode"),
    C("verify-directory-as-audio", "verify " + MODEL + " {dir_wav} {good_a}", "{dir_wav}", "directory"),
    C(
        "verify-model-planted-pickle",
        "verify --model {planted_pt} {good_a} {good_b}",
        "{planted_pt}",
        "a PyTorch checkpoint",
    ),
    C("verify-model-directory-without-model", "verify --model {a_dir} {good_a} {good_b}", "{a_dir}", "no model"),
    # ---- embed
    C("embed-too-short", "embed " + MODEL + " {good_a} {short} --out {out}/e.npz", "{short}", "shorter"),
    C("embed-too-short-for-the-network", "embed " + MODEL + " {short40} --out {out}/e.npz", "{short40}", "shorter"),
    C("embed-empty-audio", "embed " + MODEL + " {empty} --out {out}/e.npz", "{empty}", "empty"),
    C("embed-nan-audio", "embed " + MODEL + " {good_a} {nan} --out {out}/e.npz", "{nan}", "NaN"),
    C("embed-model-fake-onnx", "embed --model {fake_onnx} {good_a} --out {out}/e.npz", "{fake_onnx}", "ONNX"),
    C("embed-out-bad-suffix", "embed " + MODEL + " {good_a} --out {out}/e.txt", "{out}/e.txt", ".npz"),
    C("embed-unwritable-out", "embed " + MODEL + " {good_a} --out {unwritable}/e.npz", "{unwritable}"),
    # ---- export
    C("export-model-missing", "export --model {root}/none --onnx {out}/m.onnx", "{root}/none", "not found"),
    C(
        "export-model-planted-checkpoint",
        "export --model {planted_ckpt} --onnx {out}/m.onnx",
        "{planted_ckpt}",
        "refused",
    ),
    C("export-model-is-onnx", "export --model {fake_onnx} --onnx {out}/m.onnx", "{fake_onnx}"),
    C("export-unwritable-out", "export " + MODEL + " --onnx {unwritable}/m.onnx", "{unwritable}"),
    # ---- convert
    C(
        "convert-planted-pickle",
        "convert --from 3dspeaker --arch ecapa_tdnn {planted_pt} {out}/m.safetensors",
        "{planted_pt}",
        "refused",
        "system",
    ),
    C(
        "convert-plain-pickle",
        "convert --from wespeaker --arch ecapa_tdnn {planted_pkl} {out}/m.safetensors",
        "{planted_pkl}",
        "refused",
        subprocess=True,
    ),
    C(
        "convert-input-missing",
        "convert --from 3dspeaker --arch ecapa_tdnn {root}/none.pt {out}/m.safetensors",
        "{root}/none.pt",
        "not found",
    ),
    C(
        "convert-input-is-directory",
        "convert --from 3dspeaker --arch ecapa_tdnn {a_dir} {out}/m.safetensors",
        "{a_dir}",
        "directory",
    ),
    C(
        "convert-set-unknown-argument",
        "convert --from 3dspeaker --arch ecapa_tdnn --set model.args.chanels=8 {planted_pt} {out}/m.safetensors",
        "chanels",
    ),
    C(
        "convert-set-wrong-type",
        "convert --from 3dspeaker --arch ecapa_tdnn --set model.args.channels=wide {planted_pt} {out}/m.safetensors",
        "channels",
        "wide",
    ),
    C(
        "convert-set-not-a-model-key",
        "convert --from 3dspeaker --arch ecapa_tdnn --set train.lr=1 {planted_pt} {out}/m.safetensors",
        "train.lr",
    ),
    C("convert-unknown-arch", "convert --from 3dspeaker --arch ecapa {planted_pt} {out}/m.safetensors", "'ecapa'"),
    # ---- inspect
    C("inspect-missing", "inspect {root}/none.safetensors", "{root}/none.safetensors", "not found"),
    C("inspect-fake-onnx", "inspect {fake_onnx}", "{fake_onnx}", "ONNX", subprocess=True),
    C("inspect-planted-pickle", "inspect {planted_pt}", "{planted_pt}"),
    C("inspect-planted-checkpoint", "inspect {planted_ckpt}", "{planted_ckpt}", "refused"),
    C("inspect-text-file", "inspect {a_file}", "{a_file}"),
    C("inspect-folder-without-experiment", "inspect {a_dir}", "{a_dir}", "experiment"),
]


# ---- [hardening]: the classes of the probe, one block each
def _range_cases() -> list[Case]:
    """Every numeric config setting has a declared range (finite included), checked at load: for each one, NaN,
    infinity and a value just outside its range, as `train --set`."""
    import dataclasses

    from speakerforge.config import Config, Range

    cases = []

    def walk(cls: type, prefix: str) -> None:
        for f in dataclasses.fields(cls):
            key = prefix + f.name
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if dataclasses.is_dataclass(default):
                walk(type(default), key + ".")
                continue
            rng = f.metadata.get("range")
            if rng is None or isinstance(default, (dict, bool)) or key == "data.sources":
                continue
            wrap = (lambda v: f"[{v}]") if isinstance(default, list) else (lambda v: v)
            bad = ["nan", "inf" if rng.high is None or rng.high >= 1 else "-inf"]
            if rng.low is not None:
                bad.append(str(rng.low - 1 if not rng.low_open else rng.low))
            if rng.high is not None:
                bad.append(str(rng.high * 2 + 1 if not rng.high_open else rng.high))
            for v in bad:
                name = {"nan": "nan", "inf": "inf", "-inf": "neginf"}.get(
                    v, "low" if v == str(rng.low - 1) or (rng.low_open and v == str(rng.low)) else "high"
                )
                cases.append(
                    C(
                        f"train-range-{key}-{name}",
                        f"train --exp {{out}}/e --data {{corpus}} --set {key}={wrap(v)}",
                        key,
                        "must be",
                    )
                )

    walk(Config, "")
    assert all(isinstance(r, Range) for r in [Range()])
    return cases


HARD_TRAIN = "train --exp {out}/e --data {corpus} " + _sets()
CASES += _range_cases()
CASES += [
    # 1. a failed start leaves nothing, and torch / csv / optimizer errors are one line naming the key or file
    C("hard-train-negative-channels", HARD_TRAIN + " --set model.args.channels=-1", "model.args", "channels"),
    C("hard-train-zero-channels", HARD_TRAIN + " --set model.args.channels=0", "model.args"),
    C("hard-train-negative-momentum", HARD_TRAIN + " --set optim.momentum=-1", "optim.momentum"),
    C("hard-train-adamw-betas", HARD_TRAIN + " --set optim.optimizer=adamw --set optim.betas=[2,3]", "optim.betas"),
    C("hard-train-adamw-one-beta", HARD_TRAIN + " --set optim.optimizer=adamw --set optim.betas=[0.5]", "optim.betas"),
    C("hard-train-zero-speed", HARD_TRAIN + " --set data.speed_perturb=[0.0]", "data.speed_perturb[0]"),
    C("hard-train-huge-mel-bins", HARD_TRAIN + " --set features.num_mel_bins=5000", "features.num_mel_bins"),
    C("hard-train-csv-field-too-large", "train --exp {out}/e --data {m_bigfield} " + _sets(), "{m_bigfield}:3", "CSV"),
    C("hard-validate-csv-field-too-large", "validate {m_bigfield}", "{m_bigfield}:3", "field larger"),
    C("hard-train-csv-bom-header", "train --exp {out}/e --data {m_bom_csv} " + _sets(), "{m_bom_csv}:1", "spk"),
    # 2. values that must be refused
    C("hard-train-lr-inf", HARD_TRAIN + " --set optim.lr=inf", "optim.lr", "finite", subprocess=True),
    C("hard-train-margin-nan", HARD_TRAIN + " --set margin.initial=nan", "margin.initial"),
    C("hard-train-scale-inf", HARD_TRAIN + " --set head.scale=inf", "head.scale"),
    C("hard-train-negative-lr-mult", HARD_TRAIN + " --set optim.lr_mult.backbone=-0.5", "optim.lr_mult.backbone"),
    C("hard-train-lr-mult-nan", HARD_TRAIN + " --set optim.lr_mult.backbone=nan", "optim.lr_mult.backbone"),
    C("hard-train-unknown-optimizer", HARD_TRAIN + " --set optim.optimizer=adam", "optim.optimizer", "'adamw'"),
    C("hard-train-unknown-head", HARD_TRAIN + " --set head.kind=arcface", "head.kind"),
    C("hard-train-unknown-margin-kind", HARD_TRAIN + " --set margin.kind=cosine", "margin.kind"),
    C("hard-train-unknown-amp", HARD_TRAIN + " --set train.amp=fp8", "train.amp"),
    C("hard-verify-threshold-nan", "verify " + MODEL + " {good_a} {good_b} --threshold nan", "--threshold", "finite"),
    C("hard-verify-threshold-inf", "verify " + MODEL + " {good_a} {good_b} --threshold inf", "--threshold"),
    C("hard-verify-threshold-text", "verify " + MODEL + " {good_a} {good_b} --threshold high", "--threshold"),
    C("hard-extract-chunk-inf", "extract " + MODEL + " --data {m_rates} --out {out}/e.npz --chunk inf", "--chunk"),
    C("hard-extract-chunk-nan", "extract " + MODEL + " --data {m_rates} --out {out}/e.npz --chunk nan", "--chunk"),
    C("hard-extract-chunk-zero", "extract " + MODEL + " --data {m_rates} --out {out}/e.npz --chunk 0", "--chunk"),
    C("hard-prepare-seconds-nan", "prepare synthetic --out {out}/s --seconds nan", "--seconds", "finite"),
    C("hard-prepare-seconds-inf", "prepare synthetic --out {out}/s --seconds inf", "--seconds"),
    C("hard-prepare-noise-seconds-nan", "prepare noise --out {out}/n --seconds nan", "--seconds"),
    C(
        "hard-score-asnorm-text",
        "score --embeddings {emb} --trials {trials} --out {out}/s.txt --asnorm-top many",
        "--asnorm-top",
    ),
    # 3. resource exhaustion: declared sizes checked before allocation
    C("hard-verify-1hz-header", "verify " + MODEL + " {good_a} {wav_1hz}", "{wav_1hz}", "1 Hz"),
    C("hard-embed-1hz-header", "embed " + MODEL + " {wav_1hz} --out {out}/e.npz", "{wav_1hz}", "1 Hz"),
    C("hard-extract-1hz-header", "extract " + MODEL + " --data {m_1hz} --out {out}/e.npz", "{wav_1hz}", "1 Hz"),
    C("hard-validate-1hz-header", "validate {m_1hz}", "{m_1hz}:1", "1 Hz"),
    C("hard-train-1hz-header", "train --exp {out}/e --data {m_1hz} " + _sets(), "{m_1hz}:1", "1 Hz"),
    C(
        "hard-score-npz-bomb",
        "score --embeddings {npz_bomb} --trials {trials} --out {out}/s.txt",
        "{npz_bomb}",
        "declares",
    ),
    C(
        "hard-score-cohort-npz-bomb",
        "score --embeddings {emb} --trials {trials} --cohort {npz_bomb} --out {out}/s.txt",
        "{npz_bomb}",
    ),
    C("hard-score-npz-matrix", "score --embeddings {npz_matrix} --trials {trials} --out {out}/s.txt", "{npz_matrix}"),
    C(
        "hard-verify-model-claims-huge-channels",
        "verify --model {model_meta_channels_huge} {good_a} {good_b}",
        "{model_meta_channels_huge}",
        "does not describe",
    ),
    C(
        "hard-extract-model-claims-huge-channels",
        "extract --model {model_meta_channels_huge} --data {m_rates} --out {out}/e.npz",
        "{model_meta_channels_huge}",
        "does not describe",
    ),
    C(
        "hard-export-model-claims-huge-channels",
        "export --model {model_meta_channels_huge} --onnx {out}/m.onnx",
        "{model_meta_channels_huge}",
    ),
    C(
        "hard-verify-model-negative-channels",
        "verify --model {model_meta_channels_negative} {good_a} {good_b}",
        "{model_meta_channels_negative}",
    ),
    # 4. model and ONNX metadata validated with the config's schema
    C("hard-verify-meta-null", "verify --model {model_meta_null} {good_a} {good_b}", "{model_meta_null}", "metadata"),
    C("hard-verify-meta-list", "verify --model {model_meta_list} {good_a} {good_b}", "{model_meta_list}", "metadata"),
    C(
        "hard-extract-meta-list",
        "extract --model {model_meta_list} --data {m_rates} --out {out}/e.npz",
        "{model_meta_list}",
    ),
    C(
        "hard-verify-meta-model-list",
        "verify --model {model_meta_model_list} {good_a} {good_b}",
        "{model_meta_model_list}",
        "model",
    ),
    C(
        "hard-verify-meta-args-list",
        "verify --model {model_meta_args_list} {good_a} {good_b}",
        "{model_meta_args_list}",
        "model.args",
    ),
    C(
        "hard-verify-meta-name-int",
        "verify --model {model_meta_name_int} {good_a} {good_b}",
        "{model_meta_name_int}",
        "unknown model",
    ),
    C(
        "hard-verify-meta-features-str",
        "verify --model {model_meta_features_str} {good_a} {good_b}",
        "{model_meta_features_str}",
        "features",
    ),
    C(
        "hard-verify-meta-mel-text",
        "verify --model {model_meta_mel_text} {good_a} {good_b}",
        "{model_meta_mel_text}",
        "features.num_mel_bins",
    ),
    C(
        "hard-verify-meta-mel-huge",
        "verify --model {model_meta_mel_huge} {good_a} {good_b}",
        "{model_meta_mel_huge}",
        "features.num_mel_bins",
    ),
    C(
        "hard-verify-meta-shift-nan",
        "verify --model {model_meta_shift_nan} {good_a} {good_b}",
        "{model_meta_shift_nan}",
        "features.frame_shift",
    ),
    C(
        "hard-extract-meta-mel-text",
        "extract --model {model_meta_mel_text} --data {m_rates} --out {out}/e.npz",
        "{model_meta_mel_text}",
    ),
    C(
        "hard-verify-meta-dim-text",
        "verify --model {model_meta_dim_text} {good_a} {good_b}",
        "{model_meta_dim_text}",
        "embedding_dim",
    ),
    C(
        "hard-verify-meta-threshold-list",
        "verify --model {model_meta_threshold_list} {good_a} {good_b}",
        "{model_meta_threshold_list}",
        "threshold",
    ),
    C(
        "hard-embed-meta-speakers-dict",
        "embed --model {model_meta_speakers_dict} {good_a}",
        "{model_meta_speakers_dict}",
        "speakers",
    ),
    C("hard-verify-meta-unknown-arg", "verify --model {model_meta_unknown_arg} {good_a} {good_b}", "chanels"),
    C("hard-export-meta-list", "export --model {model_meta_list} --onnx {out}/m.onnx", "{model_meta_list}"),
    C(
        "hard-finetune-init-meta-list",
        "finetune --init {model_meta_list} --exp {out}/e --data {corpus} " + _sets(),
        "{model_meta_list}",
    ),
    C("hard-verify-onnx-meta-list", "verify --model {onnx_list} {good_a} {good_b}", "{onnx_list}", "metadata"),
    C(
        "hard-verify-onnx-meta-features",
        "verify --model {onnx_features} {good_a} {good_b}",
        "{onnx_features}",
        "features.num_mel_bins",
    ),
    C(
        "hard-extract-onnx-meta-dim",
        "extract --model {onnx_dim} --data {m_rates} --out {out}/e.npz",
        "{onnx_dim}",
        "embedding_dim",
    ),
    C("hard-verify-onnx-meta-fbank", "verify --model {onnx_fbank} {good_a} {good_b}", "{onnx_fbank}", "with_fbank"),
    C(
        "hard-verify-onnx-meta-dim-huge",
        "verify --model {onnx_dim_huge} {good_a} {good_b}",
        "{onnx_dim_huge}",
        "embedding_dim",
    ),
    # 5. configs that would hang or overflow the stack
    C(
        "hard-train-yaml-alias-bomb",
        "train --config {cfg_bomb} --exp {out}/e --data {corpus}",
        "{cfg_bomb}",
        "aliases",
        subprocess=True,
    ),
    C("hard-train-yaml-deep-list", "train --config {cfg_deep} --exp {out}/e --data {corpus}", "{cfg_deep}:", "deeper"),
    C(
        "hard-train-yaml-deep-mapping",
        "train --config {cfg_deep_map} --exp {out}/e --data {corpus}",
        "{cfg_deep_map}:",
        "deeper",
    ),
    C(
        "hard-train-yaml-top-level-list",
        "train --config {cfg_ssl_list} --exp {out}/e --data {corpus}",
        "{cfg_ssl_list}",
        "mapping",
    ),
    C(
        "hard-pretrain-yaml-alias-bomb",
        "pretrain --config {cfg_bomb} --exp {out}/e --data {corpus}",
        "{cfg_bomb}",
        "aliases",
    ),
    C(
        "hard-finetune-yaml-deep",
        "finetune --init {exp} --config {cfg_deep} --exp {out}/e --data {corpus}",
        "{cfg_deep}:",
    ),
    C(
        "hard-train-set-deep-key",
        "train --exp {out}/e --data {corpus} --set model.args." + ".".join(["k"] * 700) + "=1",
        "at most",
    ),
    C("hard-train-set-deep-value", "train --exp {out}/e --data {corpus} --set model.args.x=" + "[" * 700, "deeper"),
    C(
        "hard-convert-set-deep-key",
        "convert --from 3dspeaker --arch ecapa_tdnn --set model.args."
        + ".".join(["k"] * 700)
        + "=1 {planted_pt} {out}/m.safetensors",
        "at most",
    ),
    # 8. bad rows found late, devices
    C(
        "hard-train-segment-past-end",
        "train --exp {out}/e --data {m_late_segment} " + _sets(),
        "{m_late_segment}:5",
        "past the end",
    ),
    C("hard-train-device-foo", HARD_TRAIN + " --set train.device=foo", "train.device", "foo"),
    C("hard-train-device-cuda-index-text", HARD_TRAIN + " --set train.device=cuda:x", "train.device"),
    C("hard-verify-device-foo", "verify " + MODEL + " {good_a} {good_b} --device foo", "--device", "foo"),
    C("hard-embed-device-foo", "embed " + MODEL + " {good_a} --device tpu", "--device"),
    C("hard-extract-device-foo", "extract " + MODEL + " --data {m_rates} --out {out}/e.npz --device foo", "--device"),
    C(
        "hard-score-bom-trials-unknown",
        "score --embeddings {emb} --trials {trials_bom_unknown} --out {out}/s.txt",
        "nobody",
    ),
    # 9. argument errors are the same one line
    C("hard-verify-missing-model", "verify {good_a} {good_b}", "--model", subprocess=True),
    C("hard-train-missing-exp", "train --data {corpus}", "--exp"),
    C(
        "hard-extract-unknown-option",
        "extract " + MODEL + " --data {m_rates} --out {out}/e.npz --frobnicate",
        "--frobnicate",
    ),
    C("hard-prepare-unknown-corpus", "prepare timit {root} --out {out}/m", "timit"),
    C(
        "hard-score-precision-text",
        "score --embeddings {emb} --trials {trials} --out {out}/s.txt --precision six",
        "--precision",
    ),
]
if torch.cuda.is_available():
    CASES.append(C("hard-train-device-cuda-index", HARD_TRAIN + " --set train.device=cuda:99", "cuda"))
else:
    CASES += [
        C("hard-train-device-cuda", HARD_TRAIN + " --set train.device=cuda", "train.device", "cuda"),
        C("hard-verify-device-cuda", "verify " + MODEL + " {good_a} {good_b} --device cuda", "--device", "GPU"),
    ]

CASES += [
    C(
        "pretrain-data-missing",
        "pretrain --exp {out}/e --data {root}/nope.jsonl " + _ssl_sets("ssl.method=dino"),
        "{root}/nope.jsonl",
        "not found",
    ),
    C(
        "pretrain-unknown-method",
        "pretrain --exp {out}/e --data {corpus} " + _ssl_sets("ssl.method=byol"),
        "ssl.method",
        "byol",
    ),
    C("pretrain-set-missing-key", "pretrain --exp {out}/e --data {corpus} --set optim.lrr=1", "'optim.lrr'"),
    C(  # [architecture]: validated, then silently ignored before
        "pretrain-set-unread-key",
        "pretrain --exp {out}/e --data {corpus} " + _ssl_sets("ssl.method=dino", "head.scale=20"),
        "head is not read by `speakerforge pretrain`",
    ),
    C(
        "pretrain-data-kaldi-pipe",
        "pretrain --exp {out}/e --data {kaldi_pipe} " + _ssl_sets("ssl.method=dino"),
        "{kaldi_pipe}/wav.scp:2",
        "pipe",
    ),
]

# ---- what the [new-user] round met
CASES += [
    C("nu-train-set-stage-without-stages", HARD_TRAIN + " --set stages.0.epochs=3", "stages.0", "no stages"),
    C("nu-train-set-stage-list-without-item", HARD_TRAIN + " --set stages.epochs=3", "is a list", "stages.0.epochs"),
    C("nu-train-data-spec-bad-weight", "train --exp {out}/e --data {corpus}:c:heavy " + _sets(), "heavy", "number"),
    C("nu-train-data-spec-zero-weight", "train --exp {out}/e --data {corpus}:c:0 " + _sets(), "> 0"),
    C("nu-train-data-spec-missing-path", "train --exp {out}/e --data {root}/nope.jsonl:x " + _sets(), "nope.jsonl"),
    C(
        "nu-finetune-foreign-fits-no-layout",
        "finetune --init {foreign_pt} --exp {out}/e --data {corpus} " + _sets(),
        "{foreign_pt}",
        "fits neither the 3D-Speaker nor the WeSpeaker layout",
    ),
    C(
        "nu-finetune-model-file-as-3dspeaker",
        "finetune --init {model} --init-format 3dspeaker --exp {out}/e --data {corpus} " + _sets(),
        "speakerforge model file",
        "drop --init-format",
    ),
    C("nu-inspect-audio-as-model", "inspect {good_a}", "{good_a}", "an audio file (WAV)"),
    C("nu-verify-audio-as-model", "verify --model {good_b} {good_a} {good_b}", "an audio file (WAV)"),
    C(
        "nu-asr-decode-pickle-as-data",
        "asr decode --model {exp} --data {planted_pt}",
        "{planted_pt}",
        "not a JSONL list or an audio file",
    ),
    C("nu-asr-decode-missing-data", "asr decode --model {exp} --data {root}/none.wav", "none.wav", "not found"),
    C("nu-asr-prepare-negative-dev", "asr prepare --out {out}/c --dev -1", "--dev -1"),
]


# ----------------------------------------------------------------------------------------------------------------
# running one case
def _unwritable(world: dict[str, str], tmp: Path) -> str:
    """A folder that cannot be written: chmod 0o500, or (as root, where modes do not stop writes) a path under a
    regular file, which fails for everyone."""
    folder = tmp / "readonly"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        (folder / "probe").write_text("x")
    except OSError:
        return str(folder)
    (folder / "probe").unlink()
    folder.chmod(0o700)
    return world["a_file"]


def _paths(world: dict[str, str], tmp: Path) -> dict[str, str]:
    out = tmp / "out"
    out.mkdir()
    (out / "d.npz").mkdir()  # a directory where extract's output file should go
    paths = dict(world, out=str(out), unwritable=_unwritable(world, tmp))
    return paths


def _argv(case: Case, paths: dict[str, str]) -> list[str]:
    return case.argv.format(**paths).split()


def _files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """name -> (size, mtime) of every file: inputs must stay untouched."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()
    }


def _temp_files(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*") if ".tmp" in p.name or p.name.endswith("~"))


def check_error(case: Case, code: int, err: str, paths: dict[str, str]) -> str:
    """The contract of a failing command; returns the error line."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code not in (0, None), f"{case.id}: exit code {code} on bad input; stderr: {err!r}"
    assert "Traceback" not in err, f"{case.id}: traceback without --debug:\n{err}"
    errors = [line for line in lines if line.startswith("speakerforge ")]
    assert len(errors) == 1, f"{case.id}: expected exactly one error line, stderr was:\n{err}"
    line = errors[0]
    assert lines[-1] == line, f"{case.id}: the error line is not the last line on stderr:\n{err}"
    assert code == (1 if case.command == "validate" else 2), f"{case.id}: exit code {code}, stderr: {err!r}"
    assert line.startswith(f"speakerforge {case.command}: error: "), f"{case.id}: {line!r}"
    for needle in case.needles:
        needle = needle.format(**paths)
        assert needle in line, f"{case.id}: {needle!r} not in the error line {line!r}"
    return line


def check_nothing_left(case: Case, paths: dict[str, str], world_files_before: set[str]) -> None:
    out = Path(paths["out"])
    left = list(_files_under(out))
    assert left == [], f"{case.id}: left behind in the output folder: {left}"
    assert _temp_files(Path(paths["root"])) == [], f"{case.id}: temp files in the fixture tree"
    assert set(_files_under(Path(paths["root"]))) == world_files_before, (
        f"{case.id}: files appeared in the fixture tree: {set(_files_under(Path(paths['root']))) - world_files_before}"
    )
    assert not Path(paths["marker"]).exists(), f"{case.id}: the planted command ran"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_fails_in_one_line_and_leaves_nothing(
    case: Case, world: dict[str, str], tmp_path: Path, capsys
) -> None:
    paths = _paths(world, tmp_path)
    before = set(_files_under(Path(world["root"])))
    inputs = _snapshot(Path(world["root"]))
    code = main(_argv(case, paths))
    captured = capsys.readouterr()
    check_error(case, code, captured.err, paths)
    check_nothing_left(case, paths, before)
    assert _snapshot(Path(world["root"])) == inputs, f"{case.id}: an input file changed"


SUBPROCESS_CASES = [c for c in CASES if c.subprocess]


@pytest.mark.parametrize("case", SUBPROCESS_CASES, ids=[c.id for c in SUBPROCESS_CASES])
def test_bad_input_as_a_real_process(case: Case, world: dict[str, str], tmp_path: Path) -> None:
    paths = _paths(world, tmp_path)
    before = set(_files_under(Path(world["root"])))
    proc = subprocess.run(
        [sys.executable, "-m", "speakerforge", "--quiet", *_argv(case, paths)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
    )
    line = check_error(case, proc.returncode, proc.stderr, paths)
    assert proc.returncode == (1 if case.command == "validate" else 2)  # validate: 1 = problems found
    assert proc.stderr.strip() == line, f"{case.id}: more than the error line on stderr:\n{proc.stderr}"
    check_nothing_left(case, paths, before)


def test_the_catalogue_covers_every_command() -> None:
    from speakerforge.cli import _COMMANDS, build_parser

    build_parser()
    covered = {c.command for c in CASES}
    expected = {
        "validate",
        "prepare",
        "train",
        "finetune",
        "extract",
        "score",
        "eval",
        "verify",
        "embed",
        "export",
        "convert",
        "inspect",
    } | ({"pretrain"} if "pretrain" in _COMMANDS else set())
    assert expected <= covered, expected - covered
    corpora = {c.argv.split()[1] for c in CASES if c.command == "prepare"}
    assert {"librispeech", "commonvoice", "synthetic", "demo"} <= corpora
    assert len(CASES) >= 25


def test_debug_shows_the_traceback(world: dict[str, str], tmp_path: Path) -> None:
    case = next(c for c in CASES if c.id == "score-malformed-trials")
    paths = _paths(world, tmp_path)
    with pytest.raises(SpeakerforgeError, match="trials_malformed.txt:3"):
        main(["--debug", *_argv(case, paths)])
    proc = subprocess.run(
        [sys.executable, "-m", "speakerforge", "--debug", *_argv(case, paths)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode != 0
    assert "Traceback (most recent call last)" in proc.stderr and "trials_malformed.txt:3" in proc.stderr


# ----------------------------------------------------------------------------------------------------------------
# odd but valid inputs: they must work
def test_8khz_and_44khz_audio_are_resampled_by_every_command(world: dict[str, str], tmp_path: Path, capsys) -> None:
    from speakerforge.eval.embio import load_embeddings

    w = world
    assert main(["validate", "--deep", w["m_rates"]]) == 0
    assert main(["verify", "--model", w["model"], w["sr8k"], w["sr44k"], "--threshold", "0.5"]) == 0
    assert main(["embed", "--model", w["model"], w["sr8k"], w["sr44k"], "--out", str(tmp_path / "e.npz")]) == 0
    assert (
        main(
            [
                "extract",
                "--model",
                w["model"],
                "--data",
                w["m_rates"],
                "--out",
                str(tmp_path / "x.npz"),
                "--threads",
                "1",
            ]
        )
        == 0
    )
    emb = load_embeddings(tmp_path / "x.npz")
    assert sorted(emb) == ["r44", "r8"] and np.isfinite(emb.matrix).all()
    assert (
        main(
            [
                "prepare",
                "synthetic",
                "--out",
                str(tmp_path / "s8"),
                "--speakers",
                "2",
                "--utts-per-speaker",
                "1",
                "--seconds",
                "0.5",
                "--sample-rate",
                "8000",
            ]
        )
        == 0
    )
    assert main(["validate", str(tmp_path / "s8" / "manifest.jsonl")]) == 0
    assert "error" not in capsys.readouterr().err


def test_silent_audio_warns_and_gives_a_finite_embedding(world: dict[str, str], tmp_path: Path, capsys, caplog) -> None:
    from speakerforge.eval.embio import load_embeddings
    from speakerforge.inference import load_model

    w = world
    for source in (w["model"], w["onnx"]):
        model = load_model(source)
        caplog.clear()
        with caplog.at_level("WARNING"):
            e = model.embed(w["silent"])
        assert np.isfinite(e).all() and e.shape == (model.embedding_dim,)
        assert any("silent" in r.getMessage() and "silent.wav" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert (
            main(
                [
                    "extract",
                    "--model",
                    w["model"],
                    "--data",
                    w["m_silent"],
                    "--out",
                    str(tmp_path / "x.npz"),
                    "--threads",
                    "1",
                ]
            )
            == 0
        )
    assert any("silent" in r.getMessage() and f"{w['m_silent']}:2" in r.getMessage() for r in caplog.records)
    assert np.isfinite(load_embeddings(tmp_path / "x.npz").matrix).all()
    assert main(["verify", "--model", w["model"], w["silent"], w["good_a"], "--threshold", "0.5"]) == 0
    assert main(["embed", "--model", w["model"], w["silent"], "--out", str(tmp_path / "e.npz")]) == 0
    assert np.isfinite(load_embeddings(tmp_path / "e.npz").matrix).all()


def test_shortest_audio_the_network_accepts_gives_a_finite_embedding(world: dict[str, str]) -> None:
    from speakerforge.inference import load_model

    torch_model, onnx_model = load_model(world["model"]), load_model(world["onnx"])
    assert torch_model.min_frames == onnx_model.min_frames > 1  # ECAPA's reflect padding: 5 frames
    for model in (torch_model, onnx_model):
        n = model.min_samples  # the fewest samples: one fewer loses a frame
        wav = _noise(1.0, 9)
        assert np.isfinite(model.embed(wav[:n])).all()
        with pytest.raises(SpeakerforgeError, match="shorter"):
            model.embed(wav[: n - 1])


# ----------------------------------------------------------------------------------------------------------------
# part 4: security
UNSAFE_LOADS = (
    "torch.load(",
    "pickle.load(",
    "pickle.loads(",
    "pickle.Unpickler",
    "cPickle",
    "dill.load",
    "joblib.load",
    "torch.jit.load(",
    "allow_pickle=True",
    "yaml.load(",
    "yaml.unsafe_load",
    "shell=True",
    "os.system(",
    "os.popen(",
)


def test_all_checkpoint_loading_goes_through_checkpoint_io() -> None:
    """`torch.load` and unpickling appear only in `checkpoint_io.py`, where `weights_only=True` is enforced; nothing
    else in the package can run code from a file (unsafe YAML, pickled numpy, a shell)."""
    offenders = []
    for path in sorted((REPO / "speakerforge").rglob("*.py")):
        if path.name == "checkpoint_io.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if any(s in code for s in UNSAFE_LOADS):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert offenders == [], "load checkpoints through speakerforge.checkpoint_io:\n" + "\n".join(offenders)
    source = (REPO / "speakerforge" / "checkpoint_io.py").read_text()
    loads = [line for line in source.splitlines() if "torch.load(" in line]
    assert loads and all("weights_only=True" in line for line in loads)


def test_kaldi_pipes_are_refused_by_validate_and_train_and_never_run(
    world: dict[str, str], tmp_path: Path, capsys
) -> None:
    w = world
    assert main(["validate", w["kaldi_pipe"]]) != 0
    assert "Kaldi pipe commands are not supported" in capsys.readouterr().out
    assert main(["train", "--exp", str(tmp_path / "e"), "--data", w["kaldi_pipe"], *_sets().split()]) != 0
    assert "Kaldi pipe commands are not supported" in capsys.readouterr().err
    assert not Path(w["marker"]).exists()


def test_a_failed_start_does_not_block_the_corrected_rerun(world: dict[str, str], tmp_path: Path, capsys) -> None:
    """A run that stopped on bad data before its first step leaves no run behind that would refuse the fix."""
    exp = tmp_path / "e"
    assert main(["--quiet", "train", "--exp", str(exp), "--data", world["m_text"], *_sets().split()]) != 0
    started = time.perf_counter()
    assert main(["--quiet", "train", "--exp", str(exp), "--data", world["corpus"], *_sets().split()]) == 0, (
        capsys.readouterr().err
    )
    assert (exp / "model.safetensors").is_file()
    assert time.perf_counter() - started < 120


# ----------------------------------------------------------------------------------------------------------------
# [hardening]: behaviours that are not one bad command line
NOT_QUIET = ["hard-train-lr-inf", "hard-train-yaml-alias-bomb", "train-data-corrupt-audio", "verify-nan-audio"]


@pytest.mark.parametrize("case_id", NOT_QUIET)
def test_without_quiet_the_error_is_still_one_line_and_the_last(case_id: str, world: dict[str, str], tmp_path: Path):
    """The contract without --quiet: logs (INFO) go to stderr too, and the error line comes last, alone."""
    case = next(c for c in CASES if c.id == case_id)
    paths = _paths(world, tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "speakerforge", *_argv(case, paths)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
    )
    check_error(case, proc.returncode, proc.stderr, paths)


def _train_argv(exp: Path, data: str, *extra: str) -> list[str]:
    return ["--quiet", "train", "--exp", str(exp), "--data", data, *_sets(*extra).split()]


def test_a_failed_start_from_a_torch_error_leaves_nothing_and_the_fix_runs(world, tmp_path, capsys) -> None:
    exp = tmp_path / "e"
    assert main(_train_argv(exp, world["corpus"], "model.args.channels=0")) == 2
    assert not exp.exists()
    assert main(_train_argv(exp, world["corpus"])) == 0, capsys.readouterr().err


def test_a_torn_metrics_row_does_not_block_resume(world, tmp_path, capsys) -> None:
    exp = tmp_path / "e"
    assert main(_train_argv(exp, world["corpus"], "train.save_every_steps=1")) == 0
    with open(exp / "metrics.jsonl", "a") as f:
        f.write('{"step": 9, "st')
    assert main(_train_argv(exp, world["corpus"], "train.save_every_steps=1", "train.epochs=2")) != 0  # config change
    assert (
        main(
            [*_train_argv(exp, world["corpus"], "train.save_every_steps=1", "train.epochs=2"), "--allow-config-change"]
        )
        == 0
    ), capsys.readouterr().err
    rows = [json.loads(line) for line in (exp / "metrics.jsonl").read_text().splitlines()]
    assert rows and all("loss" in r for r in rows)


def test_a_second_run_in_the_same_folder_is_refused_naming_the_holder(world, tmp_path, capsys) -> None:
    from speakerforge.train.experiment import ExperimentLock

    exp = tmp_path / "e"
    lock = ExperimentLock(exp).acquire()
    try:
        assert main(_train_argv(exp, world["corpus"])) == 2
        err = capsys.readouterr().err.strip()
        assert f"pid {os.getpid()}" in err and "another run" in err and err.count("\n") == 0
        assert sorted(p.name for p in exp.iterdir()) == [".lock"]
    finally:
        lock.release()
    # a lock file left by a dead process does not block: the kernel dropped its lock
    (exp / ".lock").write_text("pid 999999 on elsewhere\n")
    assert main(_train_argv(exp, world["corpus"])) == 0, capsys.readouterr().err


def test_stale_temporary_files_of_dead_processes_are_swept(world, tmp_path, capsys) -> None:
    exp = tmp_path / "e"
    (exp / "checkpoints").mkdir(parents=True)
    dead = 2**22 + 12345  # above pid_max's default: never a live process
    stale = [exp / f".config.yaml.{dead}.0badc0de.tmp", exp / "checkpoints" / f".ckpt-000000002.pt.{dead}.0badc0de.tmp"]
    for p in stale:
        p.write_bytes(b"half")
    assert main(_train_argv(exp, world["corpus"])) == 0, capsys.readouterr().err
    assert not any(p.exists() for p in stale)


def test_sigterm_is_treated_as_ctrl_c(world, tmp_path) -> None:
    import signal

    exp = tmp_path / "e"
    proc = subprocess.Popen(
        [sys.executable, "-m", "speakerforge", *_train_argv(exp, world["corpus"], "train.epochs=200")],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
    )
    deadline = time.time() + 120
    while not (exp / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "speakerforge train: terminated (SIGTERM)"
    assert _temp_files(exp) == []


def test_bad_segments_are_skipped_with_skip_bad_audio(world, tmp_path, capsys) -> None:
    exp = tmp_path / "e"
    argv = [*_train_argv(exp, world["m_late_segment"], "data.batch_size=4"), "--skip-bad-audio"]
    assert main(argv) == 0, capsys.readouterr().err
    assert "past the end" in (exp / "skipped.tsv").read_text()


def test_a_run_whose_every_step_was_skipped_does_not_exit_0(world, tmp_path, monkeypatch, capsys) -> None:
    from speakerforge.train.trainer import Trainer

    monkeypatch.setattr(
        Trainer, "compute_loss", lambda self, m, b, s, k: (torch.tensor(float("nan"), requires_grad=True), {"count": 1})
    )
    exp = tmp_path / "e"
    assert main(_train_argv(exp, world["corpus"], "train.max_nonfinite_steps=100")) == 2
    assert "did not train" in capsys.readouterr().err
    assert not (exp / "model.safetensors").exists()


def test_trials_with_a_bom_are_read(world, tmp_path) -> None:
    trials = tmp_path / "t.txt"
    trials.write_bytes(b"\xef\xbb\xbf" + Path(world["trials"]).read_bytes())
    assert (
        main(["--quiet", "score", "--embeddings", world["emb"], "--trials", str(trials), "--out", str(tmp_path / "s")])
        == 0
    )


def test_long_audio_is_embedded_in_bounded_chunks(world, monkeypatch) -> None:
    """Audio up to MAX_FORWARD_SECONDS is embedded whole (equal to the unchunked result); longer audio is the mean
    of the embeddings of its chunks, and no forward pass sees more than the bound."""
    import speakerforge.inference as inf

    model = inf.load_model(world["model"])
    wav = _noise(3.0, 21)
    whole = model.embed_waves(wav[None, : model.frame_span(model.num_frames(wav.shape[0]))])[0]
    assert np.array_equal(model.embed(wav), whole)  # under the bound: the unchunked result
    monkeypatch.setattr(inf, "MAX_FORWARD_SECONDS", 1.0)
    seen = []
    real = model.embed_waves
    monkeypatch.setattr(model, "embed_waves", lambda w, names=None: seen.append(w.size) or real(w, names))
    chunked = model.embed(wav)
    chunks = inf.chunk_waveform(wav, SR)
    expected = np.mean([real(c[None])[0] for c in chunks], axis=0, dtype=np.float64).astype(np.float32)
    np.testing.assert_allclose(chunked, expected, rtol=1e-5, atol=1e-6)
    assert max(seen) <= SR
    batch = model.embed_batch([wav[: SR // 2], wav[: SR // 2], wav])  # short ones batched within the bound too
    assert max(seen) <= SR and np.isfinite(batch).all()


# ----------------------------------------------------------------------------------------------------------------
# generated layer (hypothesis): manifests, configs, --set values and trial lists made up at random must all meet
# the contract: exit 0 (1 for validate's findings) or 2 with one error line, last; never a traceback or an
# internal error (70); no temporary files left; inputs untouched.
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

GEN = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
_NUMBERISH = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(10**12), 10**12),
    st.sampled_from(["nan", "inf", "-inf", "1e400", "0", "-1", "", "[1, 2]", "{a: 1}", "~", "*x", "&a 1", "[[[[[["]),
    _TEXT,
)


def _config_keys() -> list[str]:
    import dataclasses

    from speakerforge.config import Config

    keys: list[str] = []

    def walk(cls: type, prefix: str) -> None:
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if dataclasses.is_dataclass(default):
                walk(type(default), prefix + f.name + ".")
            else:
                keys.append(prefix + f.name)

    walk(Config, "")
    return keys + ["model.args.channels", "model.args.embedding_dim", "optim.lr_mult.backbone", "stages"]


def _run_contract(argv: list[str], command: str, folder: Path, inputs: list[Path], capsys) -> int:
    before = {p: p.read_bytes() for p in inputs}
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert code in (0, 1, 2), f"exit {code}: {err}"
    errors = [line for line in lines if line.startswith("speakerforge ")]
    if code != 0 and not (command == "validate" and code == 1 and errors == []):
        assert len(errors) == 1 and lines[-1] == errors[0] and errors[0].startswith(f"speakerforge {command}: "), err
    assert _temp_files(folder) == []
    assert {p: p.read_bytes() for p in inputs} == before
    return code


@GEN
@given(sets=st.lists(st.tuples(st.sampled_from(_config_keys()), _NUMBERISH), min_size=1, max_size=4))
def test_generated_set_values_meet_the_contract(sets, world: dict[str, str], capsys) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        argv = ["train", "--exp", f"{tmp}/e", "--data", f"{tmp}/absent.jsonl"]  # a valid config stops at the data
        for key, value in sets:
            argv += ["--set", f"{key}={value}"]
        assert _run_contract(argv, "train", Path(tmp), [], capsys) == 2
        assert not Path(tmp, "e").exists()


_YAML_VALUE = st.recursive(
    _NUMBERISH,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_TEXT, inner, max_size=3)),
    max_leaves=8,
)


@GEN
@given(
    doc=st.dictionaries(
        st.sampled_from(["model", "data", "optim", "train", "head", "margin", "features", "stages", "x"]),
        st.one_of(_YAML_VALUE, st.dictionaries(st.sampled_from(_config_keys()), _YAML_VALUE, max_size=3)),
        max_size=4,
    )
)
def test_generated_configs_meet_the_contract(doc, world: dict[str, str], capsys) -> None:
    import tempfile

    import yaml

    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp, "c.yaml")
        cfg.write_text(yaml.safe_dump(doc, allow_unicode=True))
        argv = ["train", "--config", str(cfg), "--exp", f"{tmp}/e", "--data", f"{tmp}/absent.jsonl"]
        assert _run_contract(argv, "train", Path(tmp), [cfg], capsys) == 2


_ROW = st.fixed_dictionaries(
    {
        "key": _TEXT,
        "wav": st.sampled_from(["good_a", "good_b", "short", "text", "empty", "nan", "missing", "a_dir"]),
        "spk": st.one_of(_TEXT, st.none(), st.integers()),
    },
    optional={"start": _NUMBERISH, "end": _NUMBERISH},
)


@GEN
@given(rows=st.lists(_ROW, max_size=5), torn=st.booleans())
def test_generated_manifests_meet_the_contract(rows, torn, world: dict[str, str], capsys) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp, "m.jsonl")
        text = "".join(json.dumps({**r, "wav": world.get(r["wav"], "nope.wav")}) + "\n" for r in rows)
        manifest.write_text(text[: len(text) // 2] if torn else text)
        _run_contract(["validate", str(manifest)], "validate", Path(tmp), [manifest], capsys)
        out = Path(tmp, "out")
        code = _run_contract(
            ["extract", "--model", world["model"], "--data", str(manifest), "--out", f"{out}/e.npz", "--threads", "1"],
            "extract",
            Path(tmp),
            [manifest],
            capsys,
        )
        assert code == 0 or not out.exists() or list(out.iterdir()) == []


@GEN
@given(
    lines=st.lists(
        st.lists(
            st.one_of(st.sampled_from(["0", "1", "u1", "u2", "u3", "u4", "target", "nontarget"]), _TEXT), max_size=4
        ),
        max_size=6,
    ),
    bom=st.booleans(),
)
def test_generated_trial_lists_meet_the_contract(lines, bom, world: dict[str, str], capsys) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        trials = Path(tmp, "t.txt")
        trials.write_bytes(
            (b"\xef\xbb\xbf" if bom else b"")
            + "".join(" ".join(x) + "\n" for x in lines).encode("utf-8", "surrogatepass")
        )
        _run_contract(
            ["score", "--embeddings", world["emb"], "--trials", str(trials), "--out", f"{tmp}/o/s.txt"],
            "score",
            Path(tmp),
            [trials],
            capsys,
        )


def test_dataloader_workers_terminated_with_the_group_read_as_a_termination_not_a_bug(monkeypatch, capsys) -> None:
    """`timeout` / a scheduler terminating the process group: the DataLoader reports its killed workers before our
    SIGTERM handler runs; that ended as "internal error ... this is a bug" (exit 70)."""
    import speakerforge.cli as cli

    def run(args):
        raise RuntimeError("DataLoader worker (pid(s) 4242) exited unexpectedly: killed by signal: Terminated.")

    monkeypatch.setitem(cli._COMMANDS, "validate", ("validate", cli._COMMANDS["validate"][1], run))
    assert cli.main(["validate", "x.jsonl"]) == 143
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "speakerforge validate: terminated (SIGTERM)" and "bug" not in err[-1]
