"""Optimizers and the LR schedule, a pure function of the global step so that resume is exact by design.

The margin schedule lives with the heads (`speakerforge.models.heads.margin_at_step`)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from speakerforge.errors import ConfigError


def warmup_cosine(step: int, total_steps: int, base_lr: float, min_lr: float, warmup_steps: int) -> float:
    """Linear warm-up from 0 to `base_lr`, then cosine decay to `min_lr` at `total_steps`."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, max(0.0, (step - warmup_steps) / span))
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * t))


def build_optimizer(
    groups: Iterable[dict[str, Any]],
    name: str,
    lr: float,
    momentum: float = 0.9,
    nesterov: bool = True,
    betas: tuple[float, float] = (0.9, 0.999),
) -> torch.optim.Optimizer:
    """SGD (3D-Speaker's recipe) or AdamW over pre-built parameter groups (only trainable parameters)."""
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ConfigError("nothing to train: every parameter is frozen (check train.freeze / --freeze)")
    if name == "adamw" and len(betas) != 2:
        raise ConfigError(f"optim.betas: AdamW takes two numbers, got {list(betas)}")
    try:  # torch checks its arguments too; what it refuses is a config error, named as one
        if name == "sgd":
            return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0)
        if name == "adamw":
            return torch.optim.AdamW(groups, lr=lr, betas=(betas[0], betas[1]))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"optim ({name}): {exc}") from None
    raise ConfigError(f"optim.optimizer: unknown optimizer {name!r}; use sgd or adamw")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Apply a scheduled LR, honouring each group's `lr_mult`."""
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_mult", 1.0)
