"""Tar shards: writing, reading (ours and WeSpeaker's layout), the streaming order, and training from them."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from speakerforge.data.audio import load_audio
from speakerforge.data.manifest import Utterance, read_manifest, write_manifest
from speakerforge.data.sampling import MixedSampler, SpeakerIndex, load_sources
from speakerforge.data.shards import (
    ReaderLayout,
    TarReader,
    is_shard_list,
    load_utterance,
    read_shard_list,
    shard_pass,
    shard_sizes,
    shard_tables,
    write_shards,
)
from speakerforge.data.validate import check_training_rows, validate_manifests
from speakerforge.errors import DataError
from speakerforge.train.trainer import RunOptions, StopForTest, Trainer
from tests.trainutil import assert_same_weights, model_weights, tiny_config, tiny_corpus

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return tiny_corpus(tmp_path_factory.mktemp("corpus"), n_speakers=6, utts=6, seconds=0.6)


@pytest.fixture(scope="module")
def shards(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    write_shards([corpus], out, utts_per_shard=5)
    return out


def test_shards_hold_every_utterance_byte_for_byte_with_speakers(corpus, shards):
    rows = {u.key: u for u in read_manifest(corpus)}
    utts = read_shard_list(shards)
    assert sorted(u.key for u in utts) == sorted(rows)
    assert shard_sizes(utts) == [5] * 7 + [1]
    assert (shards / "shards.list").read_text().splitlines()[0] == "shard-000000.tar"
    for u in utts:
        assert u.spk == rows[u.key].spk and u.frames > 0 and u.sample_rate == 16000
        assert np.array_equal(load_utterance(u), load_audio(rows[u.key].path))
    with tarfile.open(shards / "shard-000000.tar") as tf:
        names = tf.getnames()
        meta = json.loads(tf.extractfile(f"{utts[0].key}.json").read())  # type: ignore[union-attr]
    assert names[:3] == [f"{utts[0].key}.spk", f"{utts[0].key}.json", f"{utts[0].key}.wav"]
    assert meta["spk"] == utts[0].spk and meta["frames"] == utts[0].frames


def test_packing_is_shuffled_so_that_each_shard_mixes_speakers(shards):
    first = [u.spk for u in read_shard_list(shards)[:5]]
    assert len(set(first)) >= 3


def test_segments_are_cut_and_flac_is_lossless(tmp_path):
    tiny_corpus(tmp_path / "c", n_speakers=2, utts=2, seconds=1.0)
    rows = read_manifest(tmp_path / "c" / "train.jsonl")
    segs = [Utterance(f"{u.key}-seg", u.path, u.spk, 0.25, 0.75) for u in rows]
    write_manifest(segs, tmp_path / "segs.jsonl")
    for flac in (False, True):
        out = tmp_path / f"s{int(flac)}"
        write_shards([tmp_path / "segs.jsonl"], out, utts_per_shard=3, flac=flac)
        for u in read_shard_list(out):
            assert u.member.endswith(".flac" if flac else ".wav") and u.frames == 8000
            orig = next(s for s in segs if s.key == u.key)
            assert np.array_equal(load_utterance(u), load_audio(orig.path, orig.start, orig.end))


def _wespeaker_tar(path: Path, utts: list[Utterance]) -> None:
    """What WeSpeaker's `make_shard_list.py` writes: `KEY.spk` then `KEY.wav`, nothing else."""
    with tarfile.open(path, "w") as tf:
        for u in utts:
            for name, data in ((f"{u.key}.spk", (u.spk or "").encode()), (f"{u.key}.wav", Path(u.path).read_bytes())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))


def test_a_wespeaker_shard_list_is_a_source_with_its_speakers(corpus, tmp_path):
    rows = read_manifest(corpus)
    _wespeaker_tar(tmp_path / "a.tar", rows[:20])
    _wespeaker_tar(tmp_path / "b.tar", rows[20:])
    (tmp_path / "shard.list").write_text(f"{tmp_path / 'a.tar'}\n{tmp_path / 'b.tar'}\n")
    assert is_shard_list(tmp_path / "shard.list") and not is_shard_list(corpus)
    (src,) = load_sources([(str(tmp_path / "shard.list"), 1.0, "wesp")])
    assert [u.key for u in src.utts] == [u.key for u in rows] and shard_sizes(src.utts) == [20, len(rows) - 20]
    assert [u.spk for u in src.utts] == [u.spk for u in rows]
    assert np.array_equal(load_utterance(src.utts[21]), load_audio(rows[21].path))
    report = validate_manifests([tmp_path / "shard.list"])
    assert report.ok and report.rows == len(rows), report.problems


def test_a_changed_shard_is_refused_against_its_index(corpus, tmp_path):
    write_shards([corpus], tmp_path, utts_per_shard=10)
    with open(tmp_path / "shard-000001.tar", "ab") as f:
        f.write(b"\0" * 512)
    with pytest.raises(DataError, match="changed since it was written"):
        read_shard_list(tmp_path / "shards.list")


def _reader_runs(sizes, plan, layout, seed=3):
    """Per reader: the items it was given, in the order it builds them."""
    used = len(plan) // layout.batch_size * layout.batch_size
    readers = layout.reader_of(np.arange(used))
    out: dict[int, list[int]] = {}
    for d, r in zip(plan[:used], readers):
        out.setdefault(int(r), []).append(d.item)
    return out


@pytest.mark.parametrize("world,workers", [(1, 0), (2, 2), (2, 3)])
def test_an_epoch_reads_each_utterance_once_each_reader_a_contiguous_run_of_shards(world, workers):
    sizes = [10] * 9 + [4]  # 94 utterances
    layout = ReaderLayout(batch_size=8, world_size=world, micro_batch=2, workers=workers)
    sampler = MixedSampler([sum(sizes)], [1.0], seed=3, shards={0: sizes}, layout=layout)
    for epoch in (0, 1):
        plan = sampler.epoch_plan(epoch)
        used = [d.item for d in plan[: len(plan) // 8 * 8]]
        assert len(used) == len(set(used)) == 88  # none twice; only the last partial batch is not read
        stream = shard_pass(sizes, 3, 0, epoch)  # this epoch's shard order
        at = 0
        for _r, items in sorted(_reader_runs(sizes, plan, layout).items()):
            assert sorted(items) == sorted(stream[at : at + len(items)].tolist())  # a contiguous run ...
            assert items != stream[at : at + len(items)].tolist()  # ... through the shuffle buffer
            at += len(items)
    assert [d.item for d in sampler.epoch_plan(0)] != [d.item for d in sampler.epoch_plan(1)]  # shards reshuffled


def test_the_stream_is_a_pure_function_of_seed_epoch_and_step():
    sizes = [7, 7, 7, 3]
    layout = ReaderLayout(batch_size=4, world_size=2, micro_batch=1, workers=2)
    a = MixedSampler([24], [1.0], seed=9, shards={0: sizes}, layout=layout)
    b = MixedSampler([24], [1.0], seed=9, shards={0: sizes}, layout=layout)
    full = a.batches(2, 4, 0, rank=1, world_size=2)
    assert b.batches(2, 4, 3, rank=1, world_size=2) == full[3:]  # a resumed epoch is the rest of the same epoch


def test_a_reader_reads_its_run_front_to_back(shards):
    """What one DataLoader worker does: the members are asked for in buffer order, and every read is sequential."""
    utts = read_shard_list(shards)
    sizes = shard_sizes(utts)
    assert sizes is not None
    sampler = MixedSampler([len(utts)], [1.0], seed=1, shards={0: sizes}, layout=ReaderLayout(6))
    reader = TarReader()
    for tar, (offsets, lengths) in shard_tables([utts]).items():
        reader.add_table(tar, offsets, lengths)
    for d in sampler.epoch_plan(0)[:36]:
        u = utts[d.item]
        reader.read(u.path, u.offset, u.size)
    assert reader.seeks == 0 and reader.members_read == 36  # each tar read once, front to back


def test_shards_mix_with_manifests_by_weight_with_their_own_speaker_namespace(corpus, shards):
    sources = load_sources([(str(corpus), 1.0, ""), (str(shards), 2.0, "sh")])
    assert sources[1].name == "sh" and all(u.spk for u in sources[1].utts)
    speakers = SpeakerIndex(sources)
    assert speakers.num_base == 12  # the same six speakers, two namespaces
    sampler = MixedSampler([36, 36], [1.0, 2.0], seed=0, shards={1: shard_sizes(sources[1].utts)})  # type: ignore[dict-item]
    plan = sampler.epoch_plan(0)
    assert sum(d.source == 1 for d in plan) == 48 and sum(d.source == 0 for d in plan) == 24


def test_start_of_run_checks_are_recorded_and_not_repeated(corpus, shards, tmp_path, monkeypatch):
    record = tmp_path / "checks.json"
    rows, members = read_manifest(corpus), read_shard_list(shards)
    assert check_training_rows([(str(corpus), rows), (str(shards), members)], record) == [[], []]

    def no_open(path):
        raise AssertionError(f"opened {path}")

    monkeypatch.setattr("speakerforge.data.validate.audio_info", no_open)
    assert check_training_rows([(str(corpus), rows), (str(shards), members)], record) == [[], []]


def test_sharded_training_resumes_to_the_same_weights(shards, tmp_path):
    cfg = lambda: tiny_config([shards], "train.save_every_steps=2", "data.crop_seconds=0.4")  # noqa: E731
    Trainer(cfg(), tmp_path / "straight", RunOptions()).run()
    with pytest.raises(StopForTest):
        Trainer(cfg(), tmp_path / "stopped", RunOptions(stop_after_steps=3)).run()
    Trainer(cfg(), tmp_path / "stopped", RunOptions()).run()
    assert_same_weights(model_weights(tmp_path / "straight"), model_weights(tmp_path / "stopped"))
    checks = json.loads((tmp_path / "stopped" / "audio-checks.json").read_text())
    assert list(checks["sources"]) == [str(shards)]


def test_prepare_shards_command_and_validate_on_its_list(corpus, tmp_path):
    env_py = [sys.executable, "-m", "speakerforge"]
    res = subprocess.run(
        [*env_py, "prepare", "shards", str(corpus), "--out", str(tmp_path / "s"), "--utts-per-shard", "16", "--flac"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert res.returncode == 0, res.stderr
    assert "36 utterances, 6 speakers in 3 tar(s)" in res.stdout
    res = subprocess.run([*env_py, "validate", str(tmp_path / "s" / "shards.list")], capture_output=True, text=True)
    assert res.returncode == 0 and "36 rows, 6 speakers" in res.stdout, res.stdout + res.stderr
    assert all(u.member.endswith(".flac") for u in read_shard_list(tmp_path / "s"))
