"""Freeze parameters by name (FunASR prefixes or globs), pin frozen BatchNorm, and report what froze as a tree.

Optimizer groups of trainable parameters are built by `speakerforge.train.optim.trainable_parameter_groups`, and
`speakerforge.train.integrity.UpdateIntegrityCheck` verifies that training trains; all three speak these names.

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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from speakerforge.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = [
    "FreezeReport",
    "apply_freeze",
    "frozen_batchnorms",
    "is_frozen_batchnorm",
    "match_parameters",
    "matches",
    "named_parameters_of",
    "parse_freeze_patterns",
]

_GLOB_CHARS = frozenset("*?[")
PatternSpec = str | Sequence[str] | None


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


def match_names(
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
    return match_names(what, parse_freeze_patterns(patterns), names, modules)


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
    hits = match_names("freeze pattern", patterns, param_names, module_names, also_ok=stats_only)
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


def named_parameters_of(
    modules: Mapping[str, nn.Module],
) -> tuple[list[tuple[str, nn.Parameter]], list[str], list[str]]:
    """Unique (name, param) pairs across named root modules (first name wins), plus every alias and module name:
    the names freeze patterns, optimizer groups and the integrity check all speak."""
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
