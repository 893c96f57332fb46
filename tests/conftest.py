"""Shared fixtures: real speech from ../shared/data (skipped when absent), tiny audio files, a synthetic corpus."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf


def shared_data_dir() -> Path:
    """`$SPEAKERFORGE_SHARED_DATA`, else `../shared/data` beside the repository."""
    env = os.environ.get("SPEAKERFORGE_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real-speech folder; the test is skipped (saying where it looked) when it is missing."""
    root = shared_data_dir()
    if not root.is_dir():
        pytest.skip(f"shared speech data not found at {root}; set SPEAKERFORGE_SHARED_DATA to run this test")
    return root


@pytest.fixture
def write_wav(tmp_path: Path) -> Callable[..., Path]:
    """Factory: `write_wav(name, seconds=1.0, sr=16000, channels=1, subtype="PCM_16", samples=None)` -> path.

    Relative names land in the test's tmp_path. The default signal is a quiet deterministic sine plus noise.
    """

    def make(
        name: str | Path,
        seconds: float = 1.0,
        sr: int = 16000,
        channels: int = 1,
        subtype: str = "PCM_16",
        samples: np.ndarray | None = None,
    ) -> Path:
        path = Path(name) if Path(name).is_absolute() else tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if samples is None:
            n = int(round(seconds * sr))
            t = np.arange(n) / sr
            rng = np.random.default_rng(n + channels)
            mono = 0.1 * np.sin(2 * np.pi * 220.0 * t) + 0.01 * rng.standard_normal(n)
            samples = np.repeat(mono[:, None], channels, axis=1) if channels > 1 else mono
        sf.write(str(path), np.asarray(samples, dtype=np.float32), sr, subtype=subtype)
        return path

    return make


@pytest.fixture(scope="session")
def synthetic_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 speakers x 3 utterances x 1 s from `make_synthetic_corpus`; returns its `manifest.jsonl`. Read-only."""
    from speakerforge.data.corpora.synthetic import make_synthetic_corpus

    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic_corpus(root, n_speakers=4, utts_per_speaker=3, seconds=1.0, seed=0)
    return root / "manifest.jsonl"
