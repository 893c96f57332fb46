"""Checkpoint files: atomic, checksummed, safe to load; discovery skips broken or foreign files."""

from __future__ import annotations

import logging
import os
import pickle

import numpy as np
import pytest
import torch

from speakerforge.atomic import atomic_write_bytes
from speakerforge.checkpoint_io import load_model_file, load_state, safe_torch_load, save_model_file, save_state
from speakerforge.errors import CheckpointError
from speakerforge.train.checkpoint import CheckpointManager, capture_rng, restore_rng


def _state(v: float) -> dict:
    return {"model": {"w": torch.full((3,), v)}, "progress": {"global_step": 1}}


def test_save_load_round_trip(tmp_path):
    save_state(tmp_path / "a.pt", _state(2.0))
    assert torch.equal(load_state(tmp_path / "a.pt")["model"]["w"], torch.full((3,), 2.0))


@pytest.mark.parametrize("damage", ["truncate", "bitflip"])
def test_damaged_checkpoint_is_detected_by_checksum(tmp_path, damage):
    p = tmp_path / "a.pt"
    save_state(p, _state(1.0))
    data = bytearray(p.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[-20] ^= 0x10
    p.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum|header"):
        load_state(p)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/speakerforge_pwned",))


def test_planted_pickle_is_refused_and_runs_nothing(tmp_path):
    p = tmp_path / "evil.pt"
    with open(p, "wb") as f:
        pickle.dump({"model": _Evil()}, f)
    if os.path.exists("/tmp/speakerforge_pwned"):
        os.remove("/tmp/speakerforge_pwned")
    with pytest.raises(CheckpointError, match="refused|cannot read"):
        safe_torch_load(str(p))
    assert not os.path.exists("/tmp/speakerforge_pwned")


def test_torch_save_with_code_is_refused(tmp_path):
    p = tmp_path / "evil2.pt"
    torch.save({"x": _Evil()}, p)
    with pytest.raises(CheckpointError, match="refused"):
        safe_torch_load(str(p))
    assert not os.path.exists("/tmp/speakerforge_pwned")


def test_failed_write_keeps_previous_file(tmp_path, monkeypatch):
    p = tmp_path / "a.pt"
    save_state(p, _state(1.0))
    before = p.read_bytes()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError):
        save_state(p, _state(5.0))
    assert p.read_bytes() == before
    assert [f.name for f in tmp_path.iterdir()] == ["a.pt"]  # no temp file left behind


def test_manager_skips_corrupt_newest_and_foreign_checkpoints(tmp_path, caplog):
    m = CheckpointManager(tmp_path, run_id="run-a", keep_last=5)
    m.save(_state(1.0), 10)
    m.save(_state(2.0), 20)
    other = CheckpointManager(tmp_path, run_id="run-b", keep_last=5)
    other.save(_state(3.0), 30)  # another run's file in our folder
    p40 = m.save(_state(4.0), 40)
    p40.write_bytes(p40.read_bytes()[:100])  # truncated newest
    with caplog.at_level(logging.WARNING):
        st = m.load_latest()
    assert st["meta"]["global_step"] == 20
    text = caplog.text
    assert "ckpt-000000040.pt" in text and "ckpt-000000030.pt" in text and "another run" in text


def test_manager_keeps_last_n_plus_best(tmp_path):
    m = CheckpointManager(tmp_path, run_id="r", keep_last=2)
    for step, metric in [(1, 5.0), (2, 1.0), (3, 4.0), (4, 3.0), (5, 2.5)]:
        m.save(_state(float(step)), step, metric)
    assert sorted(s for s, _ in m.list()) == [2, 4, 5]


def test_disk_full_during_manager_save_is_a_clear_error(tmp_path, monkeypatch):
    m = CheckpointManager(tmp_path, run_id="r")
    m.save(_state(1.0), 1)
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(CheckpointError, match="previous checkpoints are intact"):
        m.save(_state(2.0), 2)
    monkeypatch.undo()
    assert m.load_latest()["meta"]["global_step"] == 1


def test_rng_capture_restores_every_generator():
    import random

    state = capture_rng()
    a = (random.random(), np.random.rand(), torch.rand(2))
    restore_rng(state)
    b = (random.random(), np.random.rand(), torch.rand(2))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


def test_rng_state_survives_weights_only_round_trip(tmp_path):
    import random

    save_state(tmp_path / "r.pt", {"rng": capture_rng()})
    x = random.random()
    restore_rng(load_state(tmp_path / "r.pt")["rng"])
    assert random.random() == x


def test_model_file_round_trip_and_metadata_required(tmp_path):
    save_model_file(tmp_path / "m.safetensors", {"a": torch.ones(2)}, {"format": "x", "n": 1})
    sd, meta = load_model_file(tmp_path / "m.safetensors")
    assert torch.equal(sd["a"], torch.ones(2)) and meta == {"format": "x", "n": 1}
    from safetensors.torch import save_file

    save_file({"a": torch.ones(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(CheckpointError, match="without speakerforge metadata"):
        load_model_file(tmp_path / "plain.safetensors")
    atomic_write_bytes(tmp_path / "junk.safetensors", b"not a file at all")
    with pytest.raises(CheckpointError, match="not a valid safetensors"):
        load_model_file(tmp_path / "junk.safetensors")
