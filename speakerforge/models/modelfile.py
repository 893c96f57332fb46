"""Our model file: one safetensors file holding the embedding network's weights and, in its header, the JSON needed
to rebuild it (registry name, constructor arguments, feature settings). `extract`, `verify`, `export` and
`finetune --init` all read it; `train` writes it at the end, `convert` writes it from 3D-Speaker/WeSpeaker weights.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from speakerforge.checkpoint_io import load_model_file, save_model_file
from speakerforge.errors import CheckpointError
from speakerforge.models.registry import build_model

FORMAT = "speakerforge-model-1"
BACKBONE = "backbone."


def save_embedding_model(
    path: str | Path,
    backbone: nn.Module,
    name: str,
    args: dict[str, Any],
    features: dict[str, Any] | None = None,
    extra_tensors: dict[str, torch.Tensor] | None = None,
    extra_meta: dict[str, Any] | None = None,
) -> None:
    """Write `backbone` (keys prefixed `backbone.`) plus optional extra tensors (e.g. `classifier.weight`)."""
    state = {BACKBONE + k: v for k, v in backbone.state_dict().items()}
    state.update(extra_tensors or {})
    meta = {
        "format": FORMAT,
        "model": {"name": name, "args": args},
        "features": features or {},
        "embedding_dim": int(getattr(backbone, "embedding_dim", 0) or 0),
    }
    meta.update(extra_meta or {})
    save_model_file(path, state, meta)


def load_embedding_model(path: str | Path) -> tuple[nn.Module, dict[str, Any], dict[str, torch.Tensor]]:
    """Rebuild the backbone from a model file and load its weights strictly: (model in eval mode, meta, extras)."""
    state, meta = load_model_file(path)
    if meta.get("format") != FORMAT or "model" not in meta:
        raise CheckpointError(f"{path}: unknown model file format {meta.get('format')!r}")
    model = build_model(meta["model"]["name"], **meta["model"].get("args", {}))
    weights = {k[len(BACKBONE) :]: v for k, v in state.items() if k.startswith(BACKBONE)}
    extras = {k: v for k, v in state.items() if not k.startswith(BACKBONE)}
    load_strict(model, weights, str(path))
    model.eval()
    return model, meta, extras


def load_strict(model: nn.Module, weights: dict[str, torch.Tensor], origin: str) -> None:
    """`load_state_dict(strict=True)` with an error that lists every missing, unexpected and mis-shaped key."""
    problems = fit_problems(model.state_dict(), weights)
    if problems:
        raise CheckpointError(f"{origin}: weights do not fit the model: " + "; ".join(problems))
    model.load_state_dict(weights, strict=True)


LIST_LIMIT = 20


def fit_problems(
    own: Mapping[str, torch.Tensor],
    weights: Mapping[str, torch.Tensor],
    source: str = "file",
    name: Callable[[str], str] = str,
) -> list[str]:
    """What keeps `weights` from loading strictly where `own` is: missing, unexpected and mis-shaped keys, one
    listing each (empty when they fit). `name` may say where a key came from (missing and mis-shaped keys)."""
    missing = sorted(own.keys() - weights.keys())
    unexpected = sorted(weights.keys() - own.keys())
    shapes = sorted(
        f"{name(k)}: {source} {tuple(weights[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own.keys() & weights.keys()
        if own[k].shape != weights[k].shape
    )
    return [
        listing(what, keys)
        for what, keys in (
            ("missing", [name(k) for k in missing]),
            ("unexpected", unexpected),
            ("shape mismatch", shapes),
        )
        if keys
    ]


def listing(what: str, items: list[str]) -> str:
    """`N what: a, b, ... and K more`."""
    more = f" ... and {len(items) - LIST_LIMIT} more" if len(items) > LIST_LIMIT else ""
    return f"{len(items)} {what}: {', '.join(items[:LIST_LIMIT])}{more}"
