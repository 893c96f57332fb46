"""Freeze parameters by name, build optimizer groups of trainable parameters only, and check that training trains.

Why this module exists: FunASR silently ignores a freeze prefix that matches nothing and still hands every parameter
to the optimizer; 3D-Speaker's SDPN prototypes were a plain tensor that the loss used but no optimizer held, so they
never trained and nobody was told. Here a pattern that matches nothing is an error, frozen tensors never reach the
optimizer, and `UpdateIntegrityCheck` verifies after the first real step that every trainable tensor received a
gradient and moved, and that every frozen one (and the running statistics of frozen BatchNorm) stayed bit-identical.

Pattern semantics (used for freeze lists, `lr_mult` keys, `param_overrides` keys and `ignore` lists):
- A pattern without glob characters is a FunASR prefix: it selects parameter `name` when
  `name == p or name.startswith(p + ".")`, so `encoder` selects `encoder.x` but not `encoder2.x`.
- A pattern containing `*`, `?` or `[` is a glob (`fnmatch.fnmatchcase`, case-sensitive, `*` also crosses dots). It
  selects a parameter when it matches the parameter's full name OR the name of any module that contains it. So
  `backbone.layer?` freezes everything inside `backbone.layer1`, `*.bn1` freezes every module called `bn1` at any
  depth, and `backbone.*.bias` freezes those biases only: a glob that names a module freezes the whole module, just
  as a prefix does.

Trainer usage (order matters: convert to SyncBatchNorm first, then freeze, then wrap in DDP, then build the optimizer):

    report = apply_freeze(model, cfg.freeze)                 # each stage calls it again with its own list
    log.info("parameters:\\n%s", report.table())
    groups = trainable_parameter_groups(model, lr, wd, lr_mult=cfg.lr_mult,
                                        extra_modules={"objective": objective},
                                        param_overrides={"objective.prototypes": {"weight_decay": 0.0}})
    optimizer = build_optimizer(groups, ...)
    check = UpdateIntegrityCheck({"model": model, "objective": objective}, optimizer)
    for batch in loader:                                     # every step; both calls are no-ops once checked
        model.train()                                        # frozen BatchNorm stays in eval mode regardless
        loss.backward()
        check.before_step()
        optimizer.step()
        check.after_step()                                   # raises IntegrityError, naming the tensors
"""

from __future__ import annotations

import difflib
import fnmatch
import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from speakerforge.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = [
    "FreezeReport",
    "IntegrityError",
    "UpdateIntegrityCheck",
    "Violation",
    "apply_freeze",
    "find_free_tensors",
    "frozen_batchnorms",
    "is_frozen_batchnorm",
    "match_parameters",
    "matches",
    "parse_freeze_patterns",
    "trainable_parameter_groups",
]

_GLOB_CHARS = frozenset("*?[")
PatternSpec = str | Sequence[str] | None


class IntegrityError(ConfigError):
    """Training does not update what it should (a dead or unregistered tensor), or updates what it should not."""


# ----------------------------------------------------------------------------------------------------------------
# Patterns


def parse_freeze_patterns(spec: PatternSpec) -> list[str]:
    """Split FunASR's comma-separated `freeze_param` string (or a list of such strings) into clean patterns."""
    if spec is None:
        return []
    if isinstance(spec, str):
        items: Iterable[Any] = [spec]
    elif isinstance(spec, Sequence):
        items = spec
    else:
        raise ConfigError(f"freeze: expected a comma-separated string or a list of names, got {type(spec).__name__}")
    patterns: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(f"freeze: every entry must be a string, got {item!r}")
        for part in item.split(","):
            part = part.strip()
            if part and part not in patterns:
                patterns.append(part)
    return patterns


def _is_glob(pattern: str) -> bool:
    return any(c in _GLOB_CHARS for c in pattern)


def matches(pattern: str, name: str) -> bool:
    """Whether `pattern` selects the dotted `name` (a parameter or module name); see the module docstring."""
    if not _is_glob(pattern):
        return name == pattern or name.startswith(pattern + ".")
    if fnmatch.fnmatchcase(name, pattern):
        return True
    parts = name.split(".")
    return any(fnmatch.fnmatchcase(".".join(parts[:i]), pattern) for i in range(1, len(parts)))


def _all_named_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    # remove_duplicate=False: a tied weight can be named through either of its owners
    return list(model.named_parameters(remove_duplicate=False))


def _nearest_names(pattern: str, names: Iterable[str], n: int = 5) -> list[str]:
    candidates = sorted(set(names))
    probe = "".join(c for c in pattern if c not in _GLOB_CHARS)
    close = difflib.get_close_matches(probe, candidates, n=n, cutoff=0.5)
    if not close:
        close = difflib.get_close_matches(probe, candidates, n=n, cutoff=0.0)
    return close


def _no_match_error(what: str, pattern: str, param_names: Iterable[str], module_names: Iterable[str]) -> ConfigError:
    param_names = list(param_names)
    module_names = [m for m in module_names if m]
    near = _nearest_names(pattern, [*param_names, *module_names])
    tops = sorted({n.split(".")[0] for n in param_names})
    hint = f"; nearest names: {', '.join(near)}" if near else ""
    return ConfigError(
        f"{what} {pattern!r} matches no parameter{hint}; top-level modules: {', '.join(tops) or '(none)'} "
        "(a plain name is a prefix: 'a.b' selects 'a.b' and 'a.b.*'; use *, ? or [ ] for a glob)"
    )


def _match_names(
    what: str,
    patterns: Iterable[str],
    param_names: Sequence[str],
    module_names: Iterable[str],
    also_ok: Sequence[str] = (),
) -> dict[str, list[str]]:
    """Parameter names per pattern; a pattern selecting no parameter (nor any name in `also_ok`) is an error."""
    result: dict[str, list[str]] = {}
    for pattern in patterns:
        hits = [name for name in param_names if matches(pattern, name)]
        if not hits and not any(matches(pattern, name) for name in also_ok):
            raise _no_match_error(what, pattern, param_names, module_names)
        result[pattern] = hits
    return result


def match_parameters(model: nn.Module, patterns: PatternSpec, what: str = "freeze pattern") -> dict[str, list[str]]:
    """Map each pattern to the parameter names it selects; a pattern that selects nothing is a `ConfigError`."""
    names = [name for name, _ in _all_named_parameters(model)]
    modules = [name for name, _ in model.named_modules()]
    return _match_names(what, parse_freeze_patterns(patterns), names, modules)


# ----------------------------------------------------------------------------------------------------------------
# Freezing


def _keep_bn_eval(module: nn.Module, args: Any) -> None:
    """Forward pre-hook: a frozen BatchNorm normalises with its stored statistics and never updates them."""
    module.training = False


def _remove_bn_hook(module: nn.Module) -> bool:
    keys = [k for k, hook in module._forward_pre_hooks.items() if hook is _keep_bn_eval]
    for k in keys:
        del module._forward_pre_hooks[k]
        for extra in ("_forward_pre_hooks_with_kwargs", "_forward_pre_hooks_always_called"):
            getattr(module, extra, {}).pop(k, None)
    return bool(keys)


def is_frozen_batchnorm(module: nn.Module) -> bool:
    """Whether `apply_freeze` pinned this BatchNorm in eval mode."""
    return any(hook is _keep_bn_eval for hook in module._forward_pre_hooks.values())


def frozen_batchnorms(model: nn.Module) -> list[str]:
    """Names of the BatchNorm modules that `apply_freeze` pinned in eval mode."""
    return [name for name, m in model.named_modules() if isinstance(m, _BatchNorm) and is_frozen_batchnorm(m)]


def _subtree_frozen(module: nn.Module) -> bool | None:
    params = list(module.parameters())
    return None if not params else not any(p.requires_grad for p in params)


def _bn_should_freeze(name: str, bn: _BatchNorm, ancestors: list[nn.Module], patterns: Sequence[str]) -> bool:
    own = list(bn.parameters(recurse=False))
    if own:
        return not any(p.requires_grad for p in own)
    # No affine parameters: frozen when a pattern names this module, or the nearest enclosing module that owns
    # parameters has all of them frozen (the BN sits in a fully frozen subtree).
    if name and any(matches(p, name) for p in patterns):
        return True
    for ancestor in reversed(ancestors):
        state = _subtree_frozen(ancestor)
        if state is not None:
            return state
    return False


def _walk_with_ancestors(model: nn.Module) -> Iterator[tuple[str, nn.Module, list[nn.Module]]]:
    def rec(prefix: str, module: nn.Module, ancestors: list[nn.Module]) -> Iterator[tuple[str, nn.Module, list]]:
        yield prefix, module, ancestors
        for child_name, child in module.named_children():
            yield from rec(f"{prefix}.{child_name}" if prefix else child_name, child, [*ancestors, module])

    yield from rec("", model, [])


@dataclass
class FreezeReport:
    """What `apply_freeze` did: matches per pattern, frozen/trainable names, pinned BatchNorms, counts per module."""

    patterns: list[str]
    matches: dict[str, list[str]]
    frozen: list[str]
    trainable: list[str]
    frozen_bn: list[str]
    counts: dict[str, tuple[int, int]] = field(default_factory=dict)  # top-level module -> (trainable, frozen)
    sizes: list[tuple[str, int, bool]] = field(default_factory=list)  # (parameter, scalars, frozen)

    @property
    def num_trainable(self) -> int:
        """Number of trainable scalars."""
        return sum(t for t, _ in self.counts.values())

    @property
    def num_frozen(self) -> int:
        """Number of frozen scalars."""
        return sum(f for _, f in self.counts.values())

    def table(self) -> str:
        """Trainable and frozen scalars as an indented tree, opened down to where frozen and trainable parameters
        separate (a wholly frozen or wholly trainable subtree is one row; alike numbered siblings share one row)."""
        if self.sizes:
            tree: list[tuple[str, int, int]] = []
            _render_tree(_build_tree(self.sizes), 0, tree)
            rows = [(label, f"{t:,}", f"{f:,}") for label, t, f in tree]
        else:
            rows = [(name, f"{t:,}", f"{f:,}") for name, (t, f) in self.counts.items()]
        rows.append(("total", f"{self.num_trainable:,}", f"{self.num_frozen:,}"))
        header = ("module", "trainable", "frozen")
        w0 = max(len(r[0]) for r in [header, *rows])
        w1 = max(len(r[1]) for r in [header, *rows])
        w2 = max(len(r[2]) for r in [header, *rows])
        lines = [f"{header[0]:<{w0}}  {header[1]:>{w1}}  {header[2]:>{w2}}"]
        lines += [f"{a:<{w0}}  {b:>{w1}}  {c:>{w2}}" for a, b, c in rows]
        if self.frozen_bn:
            lines.append(f"BatchNorm kept in eval mode: {len(self.frozen_bn)}")
        return "\n".join(lines)


@dataclass
class _Node:
    name: str
    children: dict[str, _Node] = field(default_factory=dict)
    trainable: int = 0
    frozen: int = 0

    def mixed(self) -> bool:
        return bool(self.trainable and self.frozen)


def _build_tree(sizes: Sequence[tuple[str, int, bool]]) -> _Node:
    root = _Node("")
    for name, n, is_frozen in sizes:
        node = root
        for part in name.split("."):
            node.trainable += 0 if is_frozen else n
            node.frozen += n if is_frozen else 0
            node = node.children.setdefault(part, _Node(part))
        node.trainable += 0 if is_frozen else n
        node.frozen += n if is_frozen else 0
    return root


def _signature(node: _Node, prefix: str = "") -> tuple:
    """Which parameters below `node` are frozen, by relative name: alike siblings have the same signature."""
    if not node.children:
        return ((prefix, node.frozen > 0),)
    return tuple(x for k, c in node.children.items() for x in _signature(c, f"{prefix}.{k}"))


def _merged(nodes: list[_Node]) -> _Node:
    """Alike siblings (same signature) as one node whose counts are their sums."""
    out = _Node(nodes[0].name, trainable=sum(n.trainable for n in nodes), frozen=sum(n.frozen for n in nodes))
    for key in nodes[0].children:
        out.children[key] = _merged([n.children[key] for n in nodes])
    return out


def _render_tree(node: _Node, depth: int, rows: list[tuple[str, int, int]]) -> None:
    kids = list(node.children.values())
    i = 0
    while i < len(kids):
        stem, sig = kids[i].name.rstrip("0123456789"), _signature(kids[i])
        j = i + 1
        while j < len(kids) and kids[j].name.rstrip("0123456789") == stem and _signature(kids[j]) == sig:
            j += 1
        group = kids[i:j]
        label = group[0].name if len(group) == 1 else f"{group[0].name}..{group[-1].name} ({len(group)} alike)"
        merged = _merged(group) if len(group) > 1 else group[0]
        rows.append(("  " * depth + label, merged.trainable, merged.frozen))
        if merged.mixed():
            _render_tree(merged, depth + 1, rows)
        i = j


def apply_freeze(model: nn.Module, patterns: PatternSpec, freeze_bn: bool = True) -> FreezeReport:
    """Freeze exactly the parameters the patterns select, unfreeze all others, and pin frozen BatchNorm in eval mode.

    Calling it again (next stage) replaces the previous freezing entirely. With `freeze_bn`, a BatchNorm whose affine
    parameters are all frozen (or, without affine parameters, that a pattern names or that sits in a fully frozen
    subtree) gets a forward pre-hook forcing `training=False` at every call. We chose a hook over a
    `set_train_mode(model)` helper because a helper must be called after every `model.train()` (by the trainer, by
    evaluation code, by a user's script) and forgetting it once silently updates the statistics; the hook travels
    with the module (through `deepcopy`, DDP and pickling), and needs nothing from the caller. Its only gap: modules
    rebuilt after freezing (`convert_sync_batchnorm`) lose it, so convert first.
    """
    patterns = parse_freeze_patterns(patterns)
    param_names = [name for name, _ in _all_named_parameters(model)]
    module_names = [name for name, _ in model.named_modules()]
    # a pattern may name only a parameter-free BatchNorm (affine=False): freezing then means pinning its statistics
    stats_only = [n for n, m in model.named_modules() if freeze_bn and isinstance(m, _BatchNorm) and n]
    hits = _match_names("freeze pattern", patterns, param_names, module_names, also_ok=stats_only)
    selected = {name for names in hits.values() for name in names}
    frozen_ids = {id(p) for name, p in _all_named_parameters(model) if name in selected}
    frozen: list[str] = []
    trainable: list[str] = []
    counts: dict[str, list[int]] = {}
    sizes: list[tuple[str, int, bool]] = []
    for name, p in model.named_parameters():
        is_frozen = id(p) in frozen_ids
        p.requires_grad_(not is_frozen)
        if is_frozen and p.grad is not None:
            p.grad = None  # a stale gradient would let momentum or weight decay move a frozen tensor
        (frozen if is_frozen else trainable).append(name)
        row = counts.setdefault(name.split(".")[0], [0, 0])
        row[1 if is_frozen else 0] += p.numel()
        sizes.append((name, p.numel(), is_frozen))

    frozen_bn: list[str] = []
    for name, module, ancestors in _walk_with_ancestors(model):
        if not isinstance(module, _BatchNorm):
            continue
        was_pinned = _remove_bn_hook(module)
        if freeze_bn and _bn_should_freeze(name, module, ancestors, patterns):
            module.register_forward_pre_hook(_keep_bn_eval)
            module.training = False
            frozen_bn.append(name)
        elif was_pinned:
            module.training = model.training

    report = FreezeReport(
        patterns, hits, frozen, trainable, frozen_bn, {k: (v[0], v[1]) for k, v in counts.items()}, sizes
    )
    log.info(
        "freeze %s: %s tensors frozen (%s scalars), %s trainable (%s scalars), %d BatchNorm pinned",
        ",".join(patterns) or "(nothing)",
        len(frozen),
        f"{report.num_frozen:,}",
        len(trainable),
        f"{report.num_trainable:,}",
        len(frozen_bn),
    )
    return report


# ----------------------------------------------------------------------------------------------------------------
# Optimizer groups


def _prefixed_parameters(
    modules: Mapping[str, nn.Module],
) -> tuple[list[tuple[str, nn.Parameter]], list[str], list[str]]:
    """Unique (name, param) pairs across modules (first name wins), plus every alias name and module name."""
    seen: set[int] = set()
    unique: list[tuple[str, nn.Parameter]] = []
    aliases: list[str] = []
    module_names: list[str] = []
    for key, module in modules.items():

        def full(n: str, key: str = key) -> str:
            return f"{key}.{n}" if key and n else (key or n)

        for name, p in module.named_parameters(remove_duplicate=False):
            aliases.append(full(name))
            if id(p) not in seen:
                seen.add(id(p))
                unique.append((full(name), p))
        module_names += [full(name) for name, _ in module.named_modules()]
    return unique, aliases, module_names


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
    named, aliases, module_names = _prefixed_parameters(modules)
    lr_mult = dict(lr_mult or {})
    overrides = {k: dict(v) for k, v in (param_overrides or {}).items()}
    _match_names("lr_mult key", lr_mult, aliases, module_names)
    _match_names("param_overrides key", overrides, aliases, module_names)
    free = find_free_tensors(modules)
    if free:
        raise ConfigError(
            f"tensors that require grad but are not registered parameters: {', '.join(free)}; they would be neither "
            "optimized nor saved: wrap them in nn.Parameter (or register_buffer if they are not meant to train)"
        )

    groups: dict[tuple, dict[str, Any]] = {}
    for name, p in named:
        if not p.requires_grad:
            continue
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


def _dedupe_group_names(groups: list[dict[str, Any]]) -> None:
    seen: dict[str, int] = {}
    for g in groups:
        n = seen.get(g["name"], 0)
        seen[g["name"]] = n + 1
        if n:
            g["name"] = f"{g['name']}#{n}"


# ----------------------------------------------------------------------------------------------------------------
# Free tensors

_MODULE_INTERNALS = frozenset(vars(nn.Module()))


def _tensors_in(value: Any, path: str, depth: int = 0) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(value, torch.Tensor):
        yield path, value
    elif depth < 2 and isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _tensors_in(v, f"{path}[{i}]", depth + 1)
    elif depth < 2 and isinstance(value, dict):
        for k, v in value.items():
            yield from _tensors_in(v, f"{path}[{k!r}]", depth + 1)


def find_free_tensors(modules: Mapping[str, nn.Module]) -> list[str]:
    """Names of nn.Parameters, and leaf tensors requiring grad, held as plain attributes instead of registered.

    Such a tensor (3D-Speaker's SDPN `self.prototypes = torch.randn(..., requires_grad=True)`) receives gradients
    but is missed by `module.parameters()`, hence by the optimizer and by `state_dict()`. Attributes and the items
    of list/tuple/dict attributes are inspected; computed (non-leaf) tensors such as weight_norm's `weight` are not
    free parameters and are skipped.
    """
    registered = {id(p) for m in modules.values() for _, p in m.named_parameters(remove_duplicate=False)}
    found: list[str] = []
    seen: set[int] = set()
    for key, root in modules.items():
        for mod_name, module in root.named_modules():
            prefix = ".".join(x for x in (key, mod_name) if x)
            for attr, value in vars(module).items():
                if attr in _MODULE_INTERNALS:
                    continue
                for path, t in _tensors_in(value, f"{prefix}.{attr}" if prefix else attr):
                    if id(t) in registered or id(t) in seen:
                        continue
                    if isinstance(t, nn.Parameter) or (t.requires_grad and t.is_leaf):
                        seen.add(id(t))
                        found.append(path)
    return found


# ----------------------------------------------------------------------------------------------------------------
# Update-integrity check


@dataclass(frozen=True)
class Violation:
    """One tensor that training treats wrongly, and what is wrong with it."""

    name: str
    problem: str
    dead: bool  # a trainable tensor that does not train (allow_dead downgrades these to warnings)

    def __str__(self) -> str:
        return f"{self.name}: {self.problem}"


def _grad_problem(p: torch.Tensor) -> tuple[str, bool] | None:
    g = p.grad
    if g is None:
        return "no gradient (the loss does not reach it, or its gradient was discarded)", True
    if not bool(torch.isfinite(g).all()):
        return "non-finite gradient", False
    if not bool(g.any()):
        return "gradient is exactly zero (an unused branch, or one multiplied by zero)", True
    return None


class UpdateIntegrityCheck:
    """Verify once, around the first real optimizer step, that training updates exactly what it should.

    Build it before the first forward of the stage (it snapshots the statistics of pinned BatchNorm then, since
    forward passes are what would change them), then call `before_step()` right before `optimizer.step()` (after
    backward, clipping and unscaling) and `after_step()` right after it, on every step: both are no-ops once the check
    has run. Nothing is armed while a group holding trainable tensors has lr 0 (warm-up starting at zero), since
    nothing could move. With AMP, pass `after_step(step_skipped=True)` when the GradScaler skipped the step (its
    scale dropped); the check then re-arms at the next step. A new stage (new freeze list, new optimizer) builds a new
    check. `modules` are named roots, e.g. `{"model": model, "objective": objective}` (DDP-unwrapped).

    Reported, naming each tensor:
    - a trainable tensor (requires_grad) with no gradient, a gradient that is exactly zero, or a non-finite one. An
      exactly-zero gradient is precisely what we want to catch: a branch the forward never uses (or multiplies by
      zero) trains nothing while looking trainable;
    - a trainable tensor the optimizer does not hold, or that it holds with a usable gradient but did not change;
    - a frozen tensor that changed (weight decay or momentum reaching it through a stale optimizer);
    - a running statistic of a BatchNorm pinned by `apply_freeze` that changed;
    - a "free tensor not registered": an nn.Parameter or leaf tensor with requires_grad kept as a plain attribute.
    A tensor with a non-zero but negligible gradient (below 1e-6 of the largest) that the step left unchanged, such as
    a bias directly before a BatchNorm (which cancels it), is only logged as a warning (`warnings`).
    Tensors selected by `ignore` patterns are skipped (e.g. DINO's last layer, whose gradient is dropped during the
    first epoch). Violations raise `IntegrityError`; with `allow_dead=True` the "does not train" kinds are logged as
    a warning instead and returned, while a frozen tensor or statistic that changed, and a non-finite gradient,
    still raise.
    """

    def __init__(
        self,
        modules: Mapping[str, nn.Module],
        optimizer: torch.optim.Optimizer,
        *,
        allow_dead: bool = False,
        ignore: PatternSpec = None,
    ) -> None:
        self.modules = dict(modules)
        self.optimizer = optimizer
        self.allow_dead = allow_dead
        self.done = False
        self.violations: list[Violation] = []
        self.warnings: list[str] = []
        self._named, aliases, module_names = _prefixed_parameters(self.modules)
        self._ignore = parse_freeze_patterns(ignore)
        _match_names("ignore pattern", self._ignore, aliases, module_names)
        self._param_snap: dict[int, torch.Tensor] = {}
        self._requires_grad: dict[int, bool] = {}
        self._grad_problems: dict[int, tuple[str, bool]] = {}
        self._grad_max: dict[int, float] = {}
        self._state_snap: dict[int, dict[str, Any]] = {}
        self._armed = False
        with torch.no_grad():
            self._bn_snap = {name: buf.detach().clone() for name, buf in self._frozen_bn_buffers()}

    def _ignored(self, name: str) -> bool:
        return any(matches(p, name) for p in self._ignore)

    def _frozen_bn_buffers(self) -> Iterator[tuple[str, torch.Tensor]]:
        for key, root in self.modules.items():
            for mod_name, m in root.named_modules():
                if isinstance(m, _BatchNorm) and is_frozen_batchnorm(m):
                    prefix = ".".join(x for x in (key, mod_name) if x)
                    for buf_name, buf in m.named_buffers(recurse=False):
                        if buf is not None:
                            yield f"{prefix}.{buf_name}", buf

    def before_step(self) -> bool:
        """Snapshot parameters and the health of their gradients; returns whether the check is armed."""
        if self.done:
            return False
        trainable_ids = {id(p) for _, p in self._named if p.requires_grad}
        if any(g["lr"] == 0 and any(id(p) in trainable_ids for p in g["params"]) for g in self.optimizer.param_groups):
            log.debug("update-integrity check waits for a step with non-zero lr")
            return False
        with torch.no_grad():
            self._param_snap = {id(p): p.detach().clone() for _, p in self._named}
            self._state_snap = {
                id(p): {k: v.detach().clone() if torch.is_tensor(v) else v for k, v in st.items()}
                for p, st in self.optimizer.state.items()
            }
            self._grad_max = {
                id(p): float(p.grad.detach().abs().max())
                for _, p in self._named
                if p.requires_grad and p.grad is not None and p.grad.numel()
            }
        self._requires_grad = {id(p): p.requires_grad for _, p in self._named}
        self._grad_problems = {}
        for _, p in self._named:
            if p.requires_grad:
                problem = _grad_problem(p)
                if problem is not None:
                    self._grad_problems[id(p)] = problem
        self._armed = True
        return True

    def after_step(self, step_skipped: bool = False) -> list[Violation]:
        """Compare against the snapshots; raise `IntegrityError` on violations (or warn, see `allow_dead`)."""
        if not self._armed:
            return []
        self._armed = False
        if step_skipped:
            self._param_snap = {}
            return []
        self.done = True
        violations = self._collect()
        self._param_snap, self._grad_problems, self._grad_max, self._state_snap = {}, {}, {}, {}
        self.violations = violations
        if self.warnings:
            log.warning("update-integrity check: %s", "; ".join(self.warnings))
        if not violations:
            log.info(
                "update-integrity check passed: %d trainable tensors received gradients and changed; frozen "
                "tensors and %d frozen BatchNorm statistics unchanged",
                sum(self._requires_grad.values()),
                len(self._bn_snap),
            )
            return []
        hard = [v for v in violations if not v.dead]
        if hard or not self.allow_dead:
            raise IntegrityError(_format_violations(violations))
        log.warning("%s", _format_violations(violations))
        return violations

    def _step_in_ulps(self, p: torch.Tensor) -> float | None:
        """Largest step the optimizer computed for `p` (replayed in float64), in units of the spacing of `p`'s dtype
        at each value: below 0.5 the step rounds away, a tensor with a real gradient then legitimately stays put."""
        before = self._param_snap[id(p)]
        if not before.is_floating_point():
            return None
        step = _replay_step(self.optimizer, p, before, self._state_snap.get(id(p), {}))
        if step is None:
            return None
        spacing = (torch.nextafter(before, torch.full_like(before, math.inf)) - before).to(torch.float64)
        return float((step / spacing).max())

    def _collect(self) -> list[Violation]:
        held = {id(p) for g in self.optimizer.param_groups for p in g["params"]}
        out: list[Violation] = []
        for name in find_free_tensors(self.modules):
            if not self._ignored(name):
                out.append(
                    Violation(
                        name,
                        "free tensor not registered as a parameter of any module (not in "
                        "module.parameters(), so not optimized; not in state_dict, so not saved)",
                        True,
                    )
                )
        largest = max(self._grad_max.values(), default=0.0)
        negligible: list[str] = []
        below_resolution: list[str] = []
        by_design = _cancelled_by_design(self.modules)
        frozen_in_optimizer: list[str] = []
        for name, p in self._named:
            if self._ignored(name):
                continue
            changed = not torch.equal(self._param_snap[id(p)], p.detach())
            if not self._requires_grad[id(p)]:
                if changed:
                    out.append(Violation(name, "frozen but changed by the optimizer step", False))
                if id(p) in held:
                    frozen_in_optimizer.append(name)
                continue
            problem = self._grad_problems.get(id(p))
            if problem is not None:
                out.append(Violation(name, problem[0], problem[1]))
            if id(p) not in held:
                out.append(Violation(name, "trainable but not held by the optimizer", True))
            elif problem is None and not changed:
                if self._grad_max.get(id(p), 0.0) <= 1e-6 * largest:
                    if name in by_design:
                        log.debug("update-integrity check: %s is cancelled by its model's design", name)
                    else:
                        negligible.append(name)
                elif (ratio := self._step_in_ulps(p)) is not None and ratio < 0.5:
                    below_resolution.append(f"{name} ({ratio:.2g} ulp)")
                else:
                    out.append(Violation(name, "held by the optimizer with a gradient, but did not change", True))
        if negligible:
            self.warnings.append(
                "gradient negligible and tensor unchanged (its effect on the loss is cancelled, e.g. by a following "
                f"normalisation or softmax; such a tensor can go, e.g. bias=False): {_abbrev(negligible)}"
            )
        if below_resolution:
            self.warnings.append(
                "the first step was smaller than half the spacing of representable values, so rounding kept these "
                f"tensors unchanged (a small first learning rate, e.g. in warm-up; they move as it grows): "
                f"{_abbrev(below_resolution)}"
            )
        if frozen_in_optimizer:
            self.warnings.append(
                "frozen tensors held by the optimizer (they carry optimizer state; build groups "
                f"with trainable_parameter_groups): {_abbrev(frozen_in_optimizer)}"
            )
        current = dict(self._frozen_bn_buffers())
        for name, before in self._bn_snap.items():
            if self._ignored(name):
                continue
            now = current.get(name)
            if now is None or not torch.equal(before, now):
                out.append(
                    Violation(
                        name, "running statistic of a frozen BatchNorm changed (or it is no longer pinned)", False
                    )
                )
        return out


def _cancelled_by_design(modules: Mapping[str, nn.Module]) -> set[str]:
    """Full names of the parameters that a module declares cancelled by its own design (`cancelled_parameters`,
    e.g. a bias before a softmax over time): they never train, and saying so every run would be noise."""
    out = set()
    for key, root in modules.items():
        for mod_name, m in root.named_modules():
            for rel in getattr(m, "cancelled_parameters", ()):
                out.add(".".join(x for x in (key, mod_name, rel) if x))
    return out


def _replay_step(
    optimizer: torch.optim.Optimizer, p: torch.Tensor, before: torch.Tensor, state: dict[str, Any]
) -> torch.Tensor | None:
    """The update `optimizer` computed for `p` from `before`, replayed in float64 (None when it cannot be)."""
    group = next((g for g in optimizer.param_groups if any(q is p for q in g["params"])), None)
    if group is None or p.grad is None:
        return None
    options = {k: v for k, v in group.items() if k != "params"}
    for flag in ("foreach", "fused", "capturable", "differentiable"):
        if flag in options:
            options[flag] = False if flag != "foreach" else None
    shadow = before.detach().to(torch.float64).clone().requires_grad_(True)
    shadow.grad = p.grad.detach().to(torch.float64).clone()
    try:
        replay = type(optimizer)([{"params": [shadow], **options}])  # type: ignore[call-arg]
        replay.state[shadow] = {
            k: (v.to(torch.float64) if torch.is_tensor(v) and v.is_floating_point() and v.dim() else v)
            for k, v in state.items()
        }
        replay.step()
    except Exception as exc:  # an optimizer that cannot be rebuilt from its groups: keep the strict verdict
        log.debug("update-integrity check: cannot replay %s: %s", type(optimizer).__name__, exc)
        return None
    return (shadow.detach() - before.to(torch.float64)).abs()


def _abbrev(names: Sequence[str], limit: int = 20) -> str:
    head = ", ".join(names[:limit])
    return head + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def _format_violations(violations: Sequence[Violation]) -> str:
    by_problem: dict[str, list[str]] = {}
    for v in violations:
        by_problem.setdefault(v.problem, []).append(v.name)
    parts = [f"{problem}: {_abbrev(names)}" for problem, names in by_problem.items()]
    advice = ""
    if any(v.dead for v in violations):
        advice = (
            "; freeze the tensors that should not train, or pass --allow-dead-params (train.allow_dead_params) to "
            "continue with a warning"
        )
    head = f"update-integrity check failed after the first optimizer step ({len(violations)} problems): "
    return head + "; ".join(parts) + advice
