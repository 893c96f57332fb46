"""Fault injection with real processes: SIGKILL mid-epoch, inside a checkpoint write, and at random moments,
then the same command again; the final weights must equal an uninterrupted run's (`torch.equal`)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.trainutil import TINY_MODEL, assert_same_weights, model_weights, tiny_corpus

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _cmd(corpus: Path, exp: Path) -> list[str]:
    sets = [
        *TINY_MODEL,
        "data.batch_size=8",
        "data.crop_seconds=0.8",
        "train.epochs=3",
        "train.threads=1",
        "train.save_every_steps=2",
        "optim.lr=0.05",
        "train.seed=11",
        "margin.final=0.2",
        "margin.end_epoch=1",
    ]
    args = [
        sys.executable,
        str(ROOT / "tests" / "killable.py"),
        "--quiet",
        "train",
        "--exp",
        str(exp),
        "--data",
        str(corpus),
    ]
    for s in sets:
        args += ["--set", s]
    return args


def _run(cmd: list[str], **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    return subprocess.run(cmd, env=full, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    corpus = tiny_corpus(root / "corpus")
    ref = root / "ref"
    res = _run(_cmd(corpus, ref))
    assert res.returncode == 0, res.stderr[-2000:]
    return corpus, model_weights(ref)


@pytest.mark.parametrize(
    "env",
    [{"KILL_AFTER_STEP": "3"}, {"KILL_AFTER_STEP": "8"}, {"KILL_IN_SAVE": "2"}, {"KILL_IN_SAVE": "4"}],
    ids=["mid-epoch-3", "mid-epoch-8", "in-save-2", "in-save-4"],
)
def test_sigkill_then_rerun_matches_uninterrupted_run(setup, tmp_path, env):
    corpus, ref = setup
    killed = _run(_cmd(corpus, tmp_path), **env)
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "model.safetensors").exists()
    leftovers = [p.name for p in (tmp_path / "checkpoints").glob("ckpt-*.pt")]
    assert all(p.startswith("ckpt-") for p in leftovers)
    res = _run(_cmd(corpus, tmp_path))
    assert res.returncode == 0, res.stderr[-2000:]
    assert_same_weights(ref, model_weights(tmp_path))


def test_sigkill_at_random_moments_then_rerun_matches(setup, tmp_path):
    """Kill from outside at random times (seeded, 3 times), then finish: still the same weights."""
    corpus, ref = setup
    rng = random.Random(1234)
    for _ in range(3):
        proc = subprocess.Popen(
            _cmd(corpus, tmp_path),
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(3.0, 9.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    res = _run(_cmd(corpus, tmp_path))
    assert res.returncode == 0, res.stderr[-2000:]
    assert_same_weights(ref, model_weights(tmp_path))
