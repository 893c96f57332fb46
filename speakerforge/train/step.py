"""One optimizer step: `grad_accum` micro-batches under AMP autocast (DDP syncing gradients on the last only), the
all-rank finite check, the task's pre-step hook, clipping, the scaled step, and the update-integrity check around it.
"""

from __future__ import annotations

import contextlib
from typing import Any, cast

import torch
import torch.nn as nn

from speakerforge.config import Config
from speakerforge.errors import ConfigError, SpeakerforgeError
from speakerforge.train.distributed import DistEnv, all_reduce_sum
from speakerforge.train.integrity import UpdateIntegrityCheck
from speakerforge.train.task import Task


class Stepper:
    """The step's AMP settings (autocast dtype, loss scaler) and its sums over micro-batches and ranks."""

    def __init__(self, cfg: Config, env: DistEnv, device: torch.device):
        self.cfg = cfg
        self.env = env
        self.device = device
        self._check_amp()

    def _check_amp(self) -> None:
        amp = self.cfg.train.amp
        if amp not in ("none", "bf16", "fp16"):
            raise ConfigError(f"train.amp: unknown value {amp!r}; use none, bf16 or fp16")
        if amp == "fp16" and self.device.type != "cuda":
            raise ConfigError("train.amp: fp16 needs a GPU; on CPU use bf16")
        self.amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
        self.scaler = torch.amp.GradScaler("cuda", enabled=(amp == "fp16"))

    def step(
        self,
        task: Task,
        train_module: nn.Module,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        it: Any,
        stage_step: int,
        checker: UpdateIntegrityCheck | None,
    ) -> tuple[float, int, int, dict[str, float]]:
        """One optimizer step over `grad_accum` micro-batches; a non-finite loss skips the update on every rank.
        Returns (mean loss, correct, examples) over the ranks, and this rank's loss terms (mean over micro-batches)."""
        optimizer.zero_grad(set_to_none=True)
        total_loss, correct, count, terms = self._accumulate(task, train_module, it, stage_step)
        finite = all_reduce_sum(self.env, torch.tensor([1.0 if torch.isfinite(total_loss) else 0.0]))
        if finite.item() < self.env.world_size:
            optimizer.zero_grad(set_to_none=True)
            return float("nan"), correct, count, terms
        self._update(task, module, optimizer, stage_step, checker)
        reduced = all_reduce_sum(self.env, torch.tensor([float(total_loss), float(correct), float(count)]))
        return reduced[0].item() / self.env.world_size, int(reduced[1].item()), int(reduced[2].item()), terms

    def _accumulate(
        self, task: Task, train_module: nn.Module, it: Any, stage_step: int
    ) -> tuple[torch.Tensor, int, int, dict[str, float]]:
        """Forward and backward of `grad_accum` micro-batches (DDP syncs gradients on the last one only)."""
        accum = self.cfg.train.grad_accum
        total_loss = torch.zeros((), dtype=torch.float64)
        correct = 0
        count = 0
        terms: dict[str, float] = {}
        for k in range(accum):
            batch = _next_batch(it)
            sync = k == accum - 1 or not self.env.enabled
            ddp = cast(nn.parallel.DistributedDataParallel, train_module)  # wrapped whenever DDP is on
            ctx = ddp.no_sync() if (not sync and self.env.enabled) else contextlib.nullcontext()
            with ctx:
                with torch.autocast(
                    self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
                ):
                    loss, logged = task.compute_loss(train_module, batch, stage_step, k)
                self.scaler.scale(loss / accum).backward()
            total_loss += loss.detach().double().cpu() / accum
            correct += int(logged.pop("correct", 0))
            count += int(logged.pop("count", 0))
            for key, v in logged.items():  # running mean over the micro-batches
                terms[key] = (terms.get(key, 0.0) * k + v) / (k + 1) if k else v
        return total_loss, correct, count, terms

    def _update(
        self,
        task: Task,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        stage_step: int,
        checker: UpdateIntegrityCheck | None,
    ) -> None:
        """The task's pre-step hook, clipping, the (scaled) step, and the update-integrity check around it."""
        task.before_optimizer_step(module, stage_step)
        if self.cfg.train.grad_clip > 0:
            self.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(
                [p for g in optimizer.param_groups for p in g["params"]], self.cfg.train.grad_clip
            )
        if checker is not None:
            checker.before_step()
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else 1.0
        self.scaler.step(optimizer)
        self.scaler.update()
        if checker is not None:
            skipped = self.scaler.is_enabled() and self.scaler.get_scale() < scale
            checker.after_step(step_skipped=skipped)


def _next_batch(it: Any) -> Any:
    """`next(it)`; a user error raised in a DataLoader worker comes back as its own message, without the worker's
    traceback that torch pastes into it (`Caught DataError in DataLoader worker process 0. Original Traceback...`)."""
    try:
        return next(it)
    except SpeakerforgeError as exc:
        text = str(exc)
        if "Original Traceback" not in text:
            raise
        prefix = f"{type(exc).__module__}.{type(exc).__qualname__}: "
        original = text[text.rfind(prefix) + len(prefix) :].strip() if prefix in text else text.strip().splitlines()[-1]
        raise type(exc)(original) from None
