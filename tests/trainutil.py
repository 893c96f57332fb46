"""Shared helpers for trainer tests: a tiny corpus and a tiny config that train in seconds on CPU."""

from __future__ import annotations

from pathlib import Path

import torch

from speakerforge.checkpoint_io import load_model_file
from speakerforge.config import Config, SourceConfig, load_config
from speakerforge.data.corpora.synthetic import make_synthetic_corpus

TINY_MODEL = ["model.name=ecapa_tdnn", "model.args={channels: 16, embedding_dim: 16}"]


def tiny_corpus(
    root: Path,
    n_speakers: int = 6,
    utts: int = 4,
    seconds: float = 1.2,
    seed: int = 0,
    prefix: str = "spk",
    name: str = "train.jsonl",
) -> Path:
    make_synthetic_corpus(
        root,
        n_speakers=n_speakers,
        utts_per_speaker=utts,
        seconds=seconds,
        seed=seed,
        prefix=prefix,
        manifest_name=name,
    )
    return root / name


def tiny_config(sources: list[Path], *overrides: str) -> Config:
    base = [
        *TINY_MODEL,
        "data.batch_size=8",
        "data.crop_seconds=0.8",
        "train.epochs=2",
        "train.threads=1",
        "train.log_every=1",
        "optim.lr=0.05",
        "optim.warmup_epochs=0.5",
        "margin.final=0.2",
        "margin.end_epoch=1",
        "train.seed=7",
    ]
    cfg = load_config(None, base + list(overrides))
    cfg.data.sources = [SourceConfig(path=str(p)) for p in sources]
    return cfg


def model_weights(exp: Path) -> dict[str, torch.Tensor]:
    state, _meta = load_model_file(exp / "model.safetensors")
    return state


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
