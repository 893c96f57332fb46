"""Where a run stands: the progress counters every checkpoint holds, what a resumed run does when its stages' epoch
counts changed (`--allow-config-change`), and whether a finished run trained at all."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn as nn

from speakerforge.errors import ConfigError, TrainingError
from speakerforge.train.stages import Stage

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """Where the next step starts. Saved in every checkpoint."""

    stage: int = 0
    epoch: int = 0  # within the stage
    batch: int = 0  # within the epoch
    global_step: int = 0
    skipped_nonfinite: int = 0

    def state_dict(self) -> dict[str, int]:
        return dict(self.__dict__)

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.__dict__.update(Progress(**state).__dict__)


def reconcile_epochs(progress: Progress, saved: list[int] | None, stages: list[Stage]) -> Progress:
    """Apply a changed epoch count (`--allow-config-change`) to a resumed run, or refuse it: never report a
    change that cannot take effect. A finished stage may be extended when nothing after it has started."""
    if not saved:  # checkpoints written before epoch counts were recorded
        return progress
    now = [st.epochs for st in stages]
    for i, (was, new) in enumerate(zip(saved, now)):
        if was == new:
            continue
        name = stages[i].name
        started_next = progress.stage > i + 1 or (progress.stage == i + 1 and (progress.epoch or progress.batch))
        done = was if progress.stage > i else progress.epoch + (1 if progress.batch else 0)
        if new < done or started_next:
            why = f"it has trained {done} epoch(s)" if new < done else "a later stage has started"
            raise ConfigError(
                f"stage {i + 1} {name!r}: epochs changed from {was} to {new}, but {why}; this resumed run "
                "cannot apply it: keep the old value, or start afresh with --no-resume"
            )
        if progress.stage > i:  # finished, and the next stage has not started: extend it
            progress.stage, progress.epoch, progress.batch = i, was, 0
        elif progress.stage == i and new == progress.epoch and not progress.batch:  # shortened to where it is
            progress.stage, progress.epoch = i + 1, 0
            log.warning("stage %d %r: epochs %d -> %d (config change): it ends here", i + 1, name, was, new)
            continue
        log.warning(
            "stage %d %r: epochs %d -> %d (config change): it continues at epoch %d, and its learning-rate and "
            "margin schedules are recomputed over %d epochs from here on",
            i + 1,
            name,
            was,
            new,
            progress.epoch + 1,
            new,
        )
    return progress


def log_resume(progress: Progress, stages: list[Stage]) -> None:
    """Say where a resumed run continues (main process)."""
    if progress.stage >= len(stages):
        log.info(
            "this run already finished all %d stage(s) (global step %d): nothing to train; writing the "
            "model file again",
            len(stages),
            progress.global_step,
        )
        return
    log.info(
        "resumed in stage %d/%d %r at epoch %d/%d, batch %d (global step %d)",
        progress.stage + 1,
        len(stages),
        stages[progress.stage].name,
        progress.epoch + 1,
        stages[progress.stage].epochs,
        progress.batch,
        progress.global_step,
    )


def check_trained(module: nn.Module, progress: Progress) -> None:
    """Never write (and exit 0 with) a model that did not train: every step skipped, or non-finite weights."""
    if progress.global_step > 0 and progress.skipped_nonfinite >= progress.global_step:
        raise TrainingError(
            f"every one of the {progress.global_step} steps had a NaN/inf loss and was skipped: the model did not "
            "train; check optim.lr, head.scale, the margins and the data"
        )
    bad = [k for k, v in module.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise TrainingError(
            f"{len(bad)} of {len(module.state_dict())} tensors hold NaN/inf after training (first: {bad[0]}); the "
            "model is not written; lower optim.lr or raise the regularisation"
        )
