"""Optimizers, their parameter groups (trainable parameters only, per-pattern LR multipliers, no weight decay on
norms and biases), and the LR schedule, a pure function of the global step so that resume is exact by design.

The margin schedule lives with the heads (`speakerforge.models.heads.margin_at_step`)."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from speakerforge.errors import ConfigError
from speakerforge.train.freezing import match_names, matches, named_parameters_of
from speakerforge.train.integrity import find_free_tensors

log = logging.getLogger(__name__)


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
    betas: tuple[float, ...] = (0.9, 0.999),
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


def _is_no_decay(name: str, p: torch.Tensor, tokens: Sequence[str]) -> bool:
    if not tokens or p.ndim > 1:
        return False
    parts = name.lower().split(".")
    return any(part.startswith(t) or part.endswith(t) for part in parts for t in tokens)


def _most_specific(name: str, patterns: Iterable[str]) -> list[str]:
    """Patterns selecting `name`, least specific first (a longer pattern is more specific)."""
    return sorted((p for p in patterns if matches(p, name)), key=len)


def trainable_parameter_groups(
    model: nn.Module,
    base_lr: float,
    weight_decay: float,
    lr_mult: Mapping[str, float] | None = None,
    no_decay: Sequence[str] = ("bias", "bn", "norm"),
    *,
    extra_modules: Mapping[str, nn.Module] | None = None,
    param_overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Optimizer parameter groups holding only trainable tensors, split by LR multiplier and weight decay.

    - `lr_mult`: pattern -> multiplier; the longest matching pattern wins. Each group has `lr = base_lr * lr_mult`
      and keeps `lr_mult` so a schedule can set `group["lr"] = lr(step) * group["lr_mult"]`.
    - `no_decay`: a one-dimensional tensor (bias, BatchNorm/LayerNorm weight) whose dotted name has a component that
      starts or ends with one of these tokens gets no weight decay (`bn1.weight`, `batchnorm.bias`, `norm.weight`).
      `no_decay=()` decays everything, as 3D-Speaker's recipes do.
    - `extra_modules`: name -> module whose parameters are grouped too, named `name.param` (an objective owning SDPN
      prototypes: `extra_modules={"objective": objective}`).
    - `param_overrides`: pattern -> optimizer options for the tensors it selects (`{"objective.prototypes":
      {"weight_decay": 0.0}}`); `lr_mult` may be overridden here too; longer patterns win.
    A pattern in `lr_mult` or `param_overrides` that selects nothing is a `ConfigError`, and so is a tensor that
    requires grad but is not a registered parameter (it would never be optimized nor saved).
    Every group carries `name`, `param_names`, `lr`, `lr_mult` and `weight_decay`.
    """
    modules: dict[str, nn.Module] = {"": model, **dict(extra_modules or {})}
    named, aliases, module_names = named_parameters_of(modules)
    lr_mult = dict(lr_mult or {})
    overrides = {k: dict(v) for k, v in (param_overrides or {}).items()}
    match_names("lr_mult key", lr_mult, aliases, module_names)
    match_names("param_overrides key", overrides, aliases, module_names)
    free = find_free_tensors(modules)
    if free:
        raise ConfigError(
            f"tensors that require grad but are not registered parameters: {', '.join(free)}; they would be neither "
            "optimized nor saved: wrap them in nn.Parameter (or register_buffer if they are not meant to train)"
        )

    groups: dict[tuple, dict[str, Any]] = {}
    for name, p in named:
        if p.requires_grad:
            _add_to_group(groups, name, p, base_lr, weight_decay, lr_mult, no_decay, overrides)
    if not groups:
        raise ConfigError("nothing to train: every parameter is frozen (check the freeze list of this stage)")
    result = list(groups.values())
    _dedupe_group_names(result)
    for g in result:
        log.debug(
            "param group %s: %d tensors, lr %.3g (x%g), weight decay %g",
            g["name"],
            len(g["params"]),
            g["lr"],
            g["lr_mult"],
            g["weight_decay"],
        )
    return result


def _add_to_group(
    groups: dict[tuple, dict[str, Any]],
    name: str,
    p: nn.Parameter,
    base_lr: float,
    weight_decay: float,
    lr_mult: Mapping[str, float],
    no_decay: Sequence[str],
    overrides: Mapping[str, Mapping[str, Any]],
) -> None:
    """Put one trainable tensor into the group of its options (LR multiplier, decay, overrides), made when new."""
    lr_keys = _most_specific(name, lr_mult)
    mult = float(lr_mult[lr_keys[-1]]) if lr_keys else 1.0
    decay = not _is_no_decay(name, p, no_decay)
    options: dict[str, Any] = {"weight_decay": weight_decay if decay else 0.0}
    override_keys = _most_specific(name, overrides)
    for key in override_keys:
        options.update(overrides[key])
    mult = float(options.pop("lr_mult", mult))
    label = [lr_keys[-1] if lr_keys else "default", "decay" if decay else "no_decay", *override_keys]
    gkey = (mult, tuple(sorted((k, repr(v)) for k, v in options.items())), tuple(override_keys))
    group = groups.get(gkey)
    if group is None:
        group = groups[gkey] = {
            "name": "/".join(label),
            "params": [],
            "param_names": [],
            "lr": base_lr * mult,
            "lr_mult": mult,
            **options,
        }
    group["params"].append(p)
    group["param_names"].append(name)


def _dedupe_group_names(groups: list[dict[str, Any]]) -> None:
    seen: dict[str, int] = {}
    for g in groups:
        n = seen.get(g["name"], 0)
        seen[g["name"]] = n + 1
        if n:
            g["name"] = f"{g['name']}#{n}"
