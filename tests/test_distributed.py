"""The same trainer under torchrun with 2 CPU processes (gloo): same trajectory as 1 process, exact resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.trainutil import TINY_MODEL, assert_same_weights, model_weights, tiny_corpus

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def _sets() -> list[str]:
    sets = [
        *TINY_MODEL,
        "data.batch_size=8",
        "data.crop_seconds=0.8",
        "train.epochs=2",
        "train.threads=1",
        "train.save_every_steps=2",
        "optim.lr=0.05",
        "train.seed=5",
        "train.log_every=1",
    ]
    return [x for s in sets for x in ("--set", s)]


def _torchrun(corpus: Path, exp: Path, nproc: int = 2, **env: str) -> subprocess.CompletedProcess:
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [
        str(torchrun),
        "--standalone",
        f"--nproc_per_node={nproc}",
        str(ROOT / "tests" / "killable.py"),
        "--quiet",
        "train",
        "--exp",
        str(exp),
        "--data",
        str(corpus),
        *_sets(),
    ]
    full = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(cmd, env=full, capture_output=True, text=True, timeout=600)


def _single(corpus: Path, exp: Path) -> subprocess.CompletedProcess:
    """One process, same global batch, as 2 accumulated micro-batches: each sees what one rank sees."""
    cmd = [
        sys.executable,
        "-m",
        "speakerforge",
        "--quiet",
        "train",
        "--exp",
        str(exp),
        "--data",
        str(corpus),
        *_sets(),
        "--set",
        "train.grad_accum=2",
    ]
    return subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=600)


def _losses(exp: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (exp / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    corpus = tiny_corpus(root / "corpus", n_speakers=6, utts=6)
    ddp, single = root / "ddp", root / "single"
    res = _torchrun(corpus, ddp)
    assert res.returncode == 0, res.stderr[-3000:]
    res = _single(corpus, single)
    assert res.returncode == 0, res.stderr[-3000:]
    return corpus, ddp, single


def test_two_ranks_follow_the_single_process_loss_trajectory(runs):
    _corpus, ddp, single = runs
    a, b = _losses(ddp), _losses(single)
    assert len(a) == len(b) == 8  # 36 samples / batch 8 = 4 steps x 2 epochs, logged once (rank 0)
    # Same global batch, same per-rank micro-batches (so the same BatchNorm batch statistics), gradients averaged
    # by DDP's all-reduce instead of accumulated: equal up to float summation order.
    assert max(abs(x - y) / y for x, y in zip(a, b)) < 1e-3, (a, b)
    assert (ddp / "model.safetensors").is_file() and len(list((ddp / "checkpoints").glob("ckpt-*.pt"))) >= 1


def test_killed_torchrun_job_resumes_to_the_same_weights(runs, tmp_path):
    corpus, ddp, _single_exp = runs
    killed = _torchrun(corpus, tmp_path, KILL_AFTER_STEP="5")
    assert killed.returncode != 0 and not (tmp_path / "model.safetensors").exists()
    res = _torchrun(corpus, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert_same_weights(model_weights(ddp), model_weights(tmp_path))
