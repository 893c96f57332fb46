"""Optimizers and schedules. LR and margin are pure functions of the global step, so resume is exact by design."""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch

from speakerforge.errors import ConfigError


def warmup_cosine(step: int, total_steps: int, base_lr: float, min_lr: float, warmup_steps: int) -> float:
    """Linear warm-up from 0 to `base_lr`, then cosine decay to `min_lr` at `total_steps`."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, max(0.0, (step - warmup_steps) / span))
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * t))


def margin_schedule(step: int, steps_per_epoch: int, initial: float, final: float, start_epoch: float,
                    end_epoch: float, kind: str = "linear") -> float:
    """Margin held at `initial` until `start_epoch`, raised to `final` by `end_epoch` (3D-Speaker's MarginScheduler)."""
    start = start_epoch * steps_per_epoch
    end = end_epoch * steps_per_epoch
    if end <= start:
        return final if step >= start else initial
    if step <= start:
        return initial
    if step >= end:
        return final
    t = (step - start) / (end - start)
    if kind == "linear":
        return initial + (final - initial) * t
    if kind == "exponential":  # fast at first, slow near the end, as in WeSpeaker's increase_type="exp"
        return initial + (final - initial) * (1.0 - math.exp(-5.0 * t)) / (1.0 - math.exp(-5.0))
    raise ConfigError(f"margin.kind: unknown schedule {kind!r}; use linear or exponential")


def build_optimizer(groups: Iterable[dict[str, Any]], name: str, lr: float, momentum: float = 0.9,
                    nesterov: bool = True, betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.Optimizer:
    """SGD (3D-Speaker's recipe) or AdamW over pre-built parameter groups (only trainable parameters)."""
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ConfigError("nothing to train: every parameter is frozen (check train.freeze / --freeze)")
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas))
    raise ConfigError(f"optim.optimizer: unknown optimizer {name!r}; use sgd or adamw")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Apply a scheduled LR, honouring each group's `lr_mult`."""
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_mult", 1.0)
