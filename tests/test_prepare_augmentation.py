"""`speakerforge prepare musan|rirs|noise`: augmentation material from the CLI, usable as the configs name it."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import soundfile as sf

from speakerforge.cli import main
from speakerforge.data.augment import NoiseBank, RirBank
from tests.trainutil import tiny_corpus

ROOT = Path(__file__).resolve().parents[1]


def _wav(path: Path, n: int = 800) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.random.default_rng(n).standard_normal(n).astype(np.float32) * 0.1, 16000)


def test_prepare_musan_and_rirs_write_lists_the_banks_read(tmp_path, capsys):
    for rel in ("noise/free-sound/n1.wav", "music/fma/m1.wav", "speech/librivox/s1.wav"):
        _wav(tmp_path / "src" / "musan" / rel)
    for rel in ("simulated_rirs/smallroom/Room001/Room001-00001.wav", "simulated_rirs/largeroom/Room002/R-2.wav"):
        _wav(tmp_path / "src" / "RIRS_NOISES" / rel)
    assert main(["prepare", "musan", str(tmp_path / "src"), "--out", str(tmp_path / "lists")]) == 0
    assert main(["prepare", "rirs", str(tmp_path / "src"), "--out", str(tmp_path / "lists")]) == 0
    out = capsys.readouterr().out
    assert "musan: 3 files" in out and "rirs: 2 files" in out and "data.augment.noise_dir=" in out
    rows = list(csv.DictReader((tmp_path / "lists" / "musan.csv").open()))
    assert sorted(r["category"] for r in rows) == ["music", "noise", "speech"]
    assert NoiseBank.from_path(tmp_path / "lists" / "musan.csv").categories == ("noise", "music", "speech")
    assert len(RirBank.from_path(tmp_path / "lists" / "rirs.csv")) == 2


def test_prepare_musan_on_a_folder_without_musan_is_one_clear_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["--quiet", "prepare", "musan", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no audio under noise/, music/ or speech/" in err[0]
    assert not (tmp_path / "o" / "musan.csv").exists()


def test_prepare_noise_makes_the_folders_the_shipped_configs_name_and_training_uses_them(tmp_path, capsys):
    corpus = tiny_corpus(tmp_path / "c", n_speakers=3, seed=2, prefix="s")
    out = tmp_path / "data"
    args = ["prepare", "noise", "--out", str(out), "--noises", "5", "--rirs", "3", "--seconds", "1", "--seed", "4"]
    assert main([*args, "--speech", str(corpus)]) == 0
    assert "noise: 10 noise/music/speech files" in capsys.readouterr().out  # 5 noises + 5 babble clips
    kinds = sorted(p.parent.name for p in (out / "musan").rglob("*.wav"))
    assert kinds.count("noise") + kinds.count("music") == 5 and kinds.count("speech") == 5
    assert len(list((out / "rirs").glob("rir_*.wav"))) == 3
    first = {p.name: p.read_bytes() for p in (out / "rirs").glob("*.wav")}
    assert main(args) == 0  # deterministic per seed
    assert first == {p.name: p.read_bytes() for p in (out / "rirs").glob("*.wav")}
    # the shipped configs say noise_dir: data/musan, rir_dir: data/rirs
    for config in ("campplus.yaml", "resnet34.yaml"):
        text = (ROOT / "configs" / config).read_text()
        assert "noise_dir: data/musan" in text and "rir_dir: data/rirs" in text
    sets = [
        "model.name=ecapa_tdnn",
        "model.args={channels: 8, embedding_dim: 8}",
        "data.batch_size=4",
        "data.crop_seconds=0.5",
        "train.epochs=1",
        "train.threads=1",
        f"data.augment.noise_dir={out / 'musan'}",
        f"data.augment.rir_dir={out / 'rirs'}",
        "data.augment.noise_prob=0.4",
        "data.augment.reverb_prob=0.3",
        "data.augment.both_prob=0.3",
    ]
    cmd = ["--quiet", "train", "--exp", str(tmp_path / "exp"), "--data", str(corpus)]
    assert main(cmd + [x for s in sets for x in ("--set", s)]) == 0
    assert (tmp_path / "exp" / "model.safetensors").is_file()


def test_prepare_noise_refuses_to_make_nothing(tmp_path, capsys):
    assert main(["--quiet", "prepare", "noise", "--out", str(tmp_path), "--noises", "0", "--rirs", "0"]) == 2
    assert "nothing to make" in capsys.readouterr().err
