"""Weighted multi-source sampling: exact per-epoch counts, determinism, resumable position, DDP slices."""

from __future__ import annotations

import json

import pytest

from speakerforge.data.manifest import Utterance
from speakerforge.data.sampling import MixedSampler, Source, SpeakerIndex, load_sources
from speakerforge.errors import DataError


def _src(name, spks, n_per):
    return Source(name, name, 1.0, [Utterance(f"{s}-{i}", f"/x/{s}{i}.wav", s) for s in spks for i in range(n_per)])


def test_counts_follow_weight_times_size():
    s = MixedSampler([100, 50], [1.0, 2.0], seed=1)
    assert s.counts == [75, 75]
    plan = s.epoch_plan(0)
    assert sum(d.source == 0 for d in plan) == 75


def test_equal_weights_visit_every_item_once_per_epoch():
    s = MixedSampler([7, 5], [1.0, 1.0], seed=3)
    plan = s.epoch_plan(2)
    assert sorted((d.source, d.item) for d in plan) == [(0, i) for i in range(7)] + [(1, i) for i in range(5)]


def test_plan_is_deterministic_and_differs_across_epochs():
    a, b = MixedSampler([30, 20], [1, 1], seed=5), MixedSampler([30, 20], [1, 1], seed=5)
    assert a.epoch_plan(1) == b.epoch_plan(1)
    assert a.epoch_plan(1) != a.epoch_plan(2)


def test_downweighted_source_continues_its_permutation_next_epoch():
    s = MixedSampler([10, 10], [1.0, 0.5], seed=0)  # source 1 gets a third of each epoch (7 of 20 draws)
    c1 = s.counts[1]
    assert c1 == 7
    seen = [d.item for e in range(2) for d in s.epoch_plan(e) if d.source == 1]
    assert len(seen) == 2 * c1 and len(set(seen)) == min(10, 2 * c1)


def test_resume_position_gives_the_remaining_batches():
    s = MixedSampler([40], [1], seed=9)
    full = s.batches(0, 8)
    assert s.batches(0, 8, start_batch=2) == full[2:]


def test_ranks_take_disjoint_slices_of_each_global_batch():
    s = MixedSampler([64], [1], seed=2)
    whole = s.batches(0, 8)
    r0, r1 = s.batches(0, 8, rank=0, world_size=2), s.batches(0, 8, rank=1, world_size=2)
    assert [a + b for a, b in zip(r0, r1)] == whole


def test_speaker_namespaces_and_speed_classes():
    a, b = _src("a", ["x", "y"], 2), _src("b", ["x"], 2)
    idx = SpeakerIndex([a, b], shared_speakers=False, speeds=[1.0, 0.9, 1.1])
    assert idx.num_base == 3 and idx.num_classes == 9
    assert idx.class_of("a", "x") != idx.class_of("b", "x")
    assert idx.class_of("a", "x", 2) == idx.class_of("a", "x") + 6
    shared = SpeakerIndex([a, b], shared_speakers=True)
    assert shared.num_base == 2 and shared.class_of("a", "x") == shared.class_of("b", "x")


def test_load_sources_errors_name_the_source(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_sources([(str(tmp_path / "nope.jsonl"), 1.0, "")])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="empty.jsonl"):
        load_sources([(str(empty), 1.0, "")])
    wav = tmp_path / "a.wav"
    import numpy as np
    import soundfile as sf

    sf.write(wav, np.zeros(1600, dtype="float32"), 16000)
    nospk = tmp_path / "nospk.jsonl"
    nospk.write_text(json.dumps({"key": "u1", "wav": "a.wav"}) + "\n")
    with pytest.raises(DataError, match="nospk.jsonl:1"):
        load_sources([(str(nospk), 1.0, "")])


def test_two_sources_with_same_stem_get_distinct_namespaces(tmp_path):
    import numpy as np
    import soundfile as sf

    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        sf.write(tmp_path / d / "x.wav", np.zeros(1600, dtype="float32"), 16000)
        for stem in ("vox", "train"):
            (tmp_path / d / f"{stem}.jsonl").write_text(json.dumps({"key": "u", "wav": "x.wav", "spk": "s"}) + "\n")
    srcs = load_sources([(str(tmp_path / "a/vox.jsonl"), 1.0, ""), (str(tmp_path / "b/vox.jsonl"), 1.0, "")])
    assert [s.name for s in srcs] == ["vox", "vox2"]
    # a generic file name (what `prepare` writes) names the source after its folder
    srcs = load_sources([(str(tmp_path / "a/train.jsonl"), 1.0, ""), (str(tmp_path / "b/train.jsonl"), 1.0, "")])
    assert [s.name for s in srcs] == ["a", "b"]
