"""bench/accuracy.py's scoring pieces (the resemblyzer side needs the bench environment; these do not)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

from speakerforge.eval.embio import Embeddings
from speakerforge.eval.trials import Trials

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_accuracy", ROOT / "bench" / "accuracy.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_accuracy"] = module
    spec.loader.exec_module(module)
    return module


def test_cohort_speaker_means_keep_the_embedding_scale():
    # Scoring subtracts the dev set's raw-scale mean from the cohort as well: a length-normalised cohort (the first
    # version) came out of that subtraction pointing the wrong way and made AS-norm look harmful.
    acc = _bench()
    emb = Embeddings(["a1", "a2", "b1"], np.array([[10.0, 0.0], [20.0, 0.0], [0.0, 4.0]], dtype=np.float32))
    cohort = acc.speaker_means(emb, ["A", "A", "B"])
    assert cohort.keys_list == ["A", "B"]
    np.testing.assert_allclose(cohort.matrix, [[15.0, 0.0], [0.0, 4.0]])


def test_cohort_keys_take_at_most_n_existing_clips_per_training_speaker(tmp_path):
    acc = _bench()
    for name in ("x1.wav", "x2.wav", "x3.wav", "y1.wav"):
        (tmp_path / name).write_bytes(b"")
    tsv = tmp_path / "train.tsv"
    rows = ["x1.wav\tX\tc", "x2.wav\tX\tc", "x3.wav\tX\tc", "gone.wav\tY\tc", "y1.wav@0.000-1.000\tY\tc"]
    tsv.write_text("key\tspeaker\tcorpus\n" + "\n".join(rows) + "\n")
    keys, speakers = acc.cohort_keys(tsv, tmp_path, per_speaker=2)
    assert keys == ["x1.wav", "x2.wav", "y1.wav@0.000-1.000"] and speakers == ["X", "X", "Y"]


def test_every_scoring_gives_a_row_for_both_systems():
    acc = _bench()
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, 16)) * 3 + 5  # a shared offset, as real embeddings have
    keys = [f"s{s}u{u}" for s in range(6) for u in range(4)]
    matrix = np.stack([centres[s] + rng.normal(size=16) for s in range(6) for _ in range(4)]).astype(np.float32)
    ours = theirs = Embeddings(keys, matrix)
    enroll = [f"s{s}u0" for s in range(6)] * 2
    test = [f"s{s}u1" for s in range(6)] + [f"s{(s + 1) % 6}u1" for s in range(6)]
    trials = Trials(enroll, test, np.array([1] * 6 + [0] * 6))
    cohort = acc.speaker_means(Embeddings([f"c{i}" for i in range(12)], matrix[:12]), [f"c{i // 2}" for i in range(12)])
    rows = [acc.evaluate("set", ours, theirs, trials, sc, cohort, top_n=3) for sc in acc.SCORINGS]
    assert [r["scoring"] for r in rows] == list(acc.SCORINGS)
    for r in rows:
        assert r["trials"] == 12 and r["target"] == 6
        assert 0.0 <= r["ours"][0] <= 100.0 and r["theirs"] == rows[0]["theirs"]  # resemblyzer is scored as published
    assert "| set | 12 (6) | as-norm |" in acc.table(rows)
