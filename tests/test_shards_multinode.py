"""Two torchrun "nodes" on this machine (c10d rendezvous, gloo) train from shards; one node is SIGKILLed mid-run;
the same two commands again end with weights equal (`torch.equal`) to an uninterrupted two-node run."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from speakerforge.data.shards import write_shards
from tests.trainutil import TINY_MODEL, assert_same_weights, model_weights, tiny_corpus

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _two_nodes(shards: Path, exp: Path, kill_node_after_step: int = 0) -> list[subprocess.CompletedProcess]:
    """`torchrun --nnodes=2 --nproc_per_node=1 --rdzv-backend=c10d` twice, as two nodes would run it."""
    sets = [
        *TINY_MODEL,
        "data.batch_size=8",
        "data.crop_seconds=0.4",
        "data.num_workers=2",
        "train.epochs=2",
        "train.threads=1",
        "train.save_every_steps=2",
        "optim.lr=0.05",
        "train.seed=5",
    ]
    endpoint = f"127.0.0.1:{_free_port()}"
    run_id = uuid.uuid4().hex[:8]
    procs = []
    for node in range(2):
        cmd = [
            str(Path(sys.executable).with_name("torchrun")),
            "--nnodes=2",
            "--nproc_per_node=1",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={endpoint}",
            f"--rdzv-id={run_id}",
            "--max-restarts=0",
            str(ROOT / "tests" / "killable.py"),
            "--quiet",
            "train",
            "--exp",
            str(exp),
            "--data",
            str(shards),
            *[x for s in sets for x in ("--set", s)],
        ]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        if kill_node_after_step and node == 1:
            env["KILL_AFTER_STEP"] = str(kill_node_after_step)
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


def test_two_node_sharded_run_resumes_after_a_node_is_killed(tmp_path):
    corpus = tiny_corpus(tmp_path / "corpus", n_speakers=6, utts=6, seconds=0.6)
    shards = tmp_path / "shards"
    write_shards([corpus], shards, utts_per_shard=5)
    ref = tmp_path / "ref"
    for res in _two_nodes(shards, ref):
        assert res.returncode == 0, res.stderr[-3000:]

    killed = _two_nodes(shards, tmp_path / "exp", kill_node_after_step=3)
    assert all(r.returncode != 0 for r in killed) and not (tmp_path / "exp" / "model.safetensors").exists()
    assert list((tmp_path / "exp" / "checkpoints").glob("ckpt-*.pt"))  # step 2's checkpoint: it resumes from there
    for res in _two_nodes(shards, tmp_path / "exp"):
        assert res.returncode == 0, res.stderr[-3000:]
    assert_same_weights(model_weights(ref), model_weights(tmp_path / "exp"))
