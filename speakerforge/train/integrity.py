"""The update-integrity check: after the first real optimizer step, every trainable tensor received a gradient and
moved, and every frozen one (and the running statistics of frozen BatchNorm) stayed bit-identical.

Why: 3D-Speaker's SDPN prototypes were a plain tensor that the loss used but no optimizer held, so they never trained
and nobody was told. A tensor that did not move is judged against the step its optimizer computed for it (replayed in
float64), so a warm-up step too small for float32 is not mistaken for a dead parameter.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from speakerforge.errors import TrainingError
from speakerforge.train.freezing import (
    PatternSpec,
    is_frozen_batchnorm,
    match_names,
    matches,
    named_parameters_of,
    parse_freeze_patterns,
)

log = logging.getLogger(__name__)

__all__ = ["IntegrityError", "UpdateIntegrityCheck", "Violation", "find_free_tensors"]


class IntegrityError(TrainingError):
    """Training does not update what it should (a dead or unregistered tensor), or updates what it should not."""


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


class GradProblem(NamedTuple):
    """What is wrong with a trainable tensor's gradient; `zero` marks an exactly-zero one, which is re-judged over
    the next steps rather than reported at once (the first batch may not reach a branch)."""

    text: str
    dead: bool
    zero: bool = False


def _grad_problem(p: torch.Tensor) -> GradProblem | None:
    g = p.grad
    if g is None:
        return GradProblem("no gradient (the loss does not reach it, or its gradient was discarded)", True)
    if not bool(torch.isfinite(g).all()):
        return GradProblem("non-finite gradient", False)
    if not bool(g.any()):
        return GradProblem("gradient is exactly zero (an unused branch, or one multiplied by zero)", True, zero=True)
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
      zero) trains nothing while looking trainable. But it can also be the first batch's doing (an LSTM's recurrent
      weights meet h0 = 0 when every sequence of the batch is one step long), so such a tensor is re-judged over the
      next `recheck_steps` steps (and at most to the stage's end, `finish()`): it passes once it gets a non-zero
      gradient, and is reported only if it never does;
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
        recheck_steps: int = 50,
    ) -> None:
        self.modules = dict(modules)
        self.recheck_steps = recheck_steps
        self._pending: dict[int, str] = {}  # exactly-zero first-step gradients, re-judged on the next steps
        self._watched = 0
        self.optimizer = optimizer
        self.allow_dead = allow_dead
        self.done = False
        self.violations: list[Violation] = []
        self.warnings: list[str] = []
        self._named, aliases, module_names = named_parameters_of(self.modules)
        self._ignore = parse_freeze_patterns(ignore)
        match_names("ignore pattern", self._ignore, aliases, module_names)
        self._param_snap: dict[int, torch.Tensor] = {}
        self._requires_grad: dict[int, bool] = {}
        self._grad_problems: dict[int, GradProblem] = {}
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
        if self._pending:
            self._watch()
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
        violations = self._collect()
        self.done = not self._pending
        self._param_snap, self._grad_problems, self._grad_max, self._state_snap = {}, {}, {}, {}
        if self.warnings:
            log.warning("update-integrity check: %s", "; ".join(self.warnings))
        if self._pending and not violations:
            log.info(
                "update-integrity check: exactly zero first-step gradient, re-judged over the next %d steps: %s",
                self.recheck_steps,
                _abbrev(list(self._pending.values())),
            )
            return []
        if not violations:
            log.info(
                "update-integrity check passed: %d trainable tensors received gradients and changed; frozen "
                "tensors and %d frozen BatchNorm statistics unchanged",
                sum(self._requires_grad.values()),
                len(self._bn_snap),
            )
            return []
        return self._report(violations)

    def _watch(self) -> None:
        """One more step for the tensors whose first-step gradient was exactly zero: those with a non-zero one now
        pass; after `recheck_steps` steps the rest are reported."""
        by_id = {id(p): p for _, p in self._named}
        for key in list(self._pending):
            g = by_id[key].grad
            if g is not None and bool(g.any()) and bool(torch.isfinite(g).all()):
                del self._pending[key]
        self._watched += 1
        if not self._pending:
            self.done = True
            log.info("update-integrity check passed: every tensor received a gradient by step %d", self._watched + 1)
        elif self._watched >= self.recheck_steps:
            self.finish()

    def finish(self) -> list[Violation]:
        """The verdict on tensors still waiting for a non-zero gradient (call at the stage's end): dead tensors."""
        if self.done or not self._pending:
            return []
        self.done = True
        steps = self._watched + 1
        problem = f"gradient exactly zero on each of its first {steps} steps (an unused branch, or one multiplied by 0)"
        names, self._pending = list(self._pending.values()), {}
        return self._report([Violation(name, problem, True) for name in names], f"after {steps} steps")

    def _report(self, violations: list[Violation], when: str = "after the first optimizer step") -> list[Violation]:
        self.violations = violations
        hard = [v for v in violations if not v.dead]
        if hard or not self.allow_dead:
            raise IntegrityError(_format_violations(violations, when))
        log.warning("%s", _format_violations(violations, when))
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
        out = [
            Violation(
                name,
                "free tensor not registered as a parameter of any module (not in "
                "module.parameters(), so not optimized; not in state_dict, so not saved)",
                True,
            )
            for name in find_free_tensors(self.modules)
            if not self._ignored(name)
        ]
        out += self._parameter_violations()
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

    def _parameter_violations(self) -> list[Violation]:
        """Frozen tensors that changed; trainable ones that had a gradient problem, are not in the optimizer or did
        not move. Tensors that did not move for a known benign reason become warnings."""
        held = {id(p) for g in self.optimizer.param_groups for p in g["params"]}
        largest = max(self._grad_max.values(), default=0.0)
        by_design = _cancelled_by_design(self.modules)
        out: list[Violation] = []
        negligible: list[str] = []
        below_resolution: list[str] = []
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
            if problem is not None and problem.zero:
                self._pending[id(p)] = name  # perhaps the first batch's doing: re-judged on the next steps
            elif problem is not None:
                out.append(Violation(name, problem.text, problem.dead))
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
        self._warn_unmoved(negligible, below_resolution, frozen_in_optimizer)
        return out

    def _warn_unmoved(self, negligible: list[str], below_resolution: list[str], frozen_in_optimizer: list[str]) -> None:
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


def _format_violations(violations: Sequence[Violation], when: str) -> str:
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
    head = f"update-integrity check failed {when} ({len(violations)} problems): "
    return head + "; ".join(parts) + advice
