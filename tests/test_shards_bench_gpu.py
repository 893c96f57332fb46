"""bench/gpu.py in its reduced CPU mode (tiny models): the GPU check script runs end to end and prints its figures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_script_runs_in_its_reduced_cpu_mode(tmp_path):
    cmd = [sys.executable, str(ROOT / "bench" / "gpu.py"), "--cpu", "--batch", "2", "--steps", "1", "--crop", "0.3"]
    res = subprocess.run([*cmd, "--data", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout
    for model in ("campplus", "eres2net"):
        assert f"{model} bf16: (a) on device" in out and "(b) from shards" in out
        assert f"{model} channels-last: max |diff|" in out and "DIFFERENT" not in out
    assert "lowest b/a" in out
