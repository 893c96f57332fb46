"""The training engine: the loop every training command shares, whatever it trains.

One loop for one process or K processes under torchrun (DDP, gloo on CPU, NCCL on GPU): the run folder, stages,
a fresh optimizer per stage, AMP, the DDP wrap, the optimizer step, the checkpoint cadence, metrics and progress, and
exact resume. What is trained (data, module, loss, schedules, freeze rules, the model file) is the task's, which the
engine calls. Everything that decides what happens at a step (data order, crops, augmentation, LR, schedules) is a
pure function of (seed, stage, epoch, step), and the rest (weights, optimizer, scaler, progress, RNG, and what the task
adds) is in the checkpoint, each registered once as a recoverable: a killed run resumes to the same weights.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from speakerforge.config import Config
from speakerforge.data.sampling import MixedSampler
from speakerforge.data.shards import ReaderLayout, shard_sizes
from speakerforge.errors import ConfigError, TrainingError
from speakerforge.progress import progress_bar
from speakerforge.train.callbacks import Callback, StopAfterSteps
from speakerforge.train.checkpoint import CheckpointManager, Recoverables, RngState, seed_everything
from speakerforge.train.curves import MetricsLog
from speakerforge.train.distributed import barrier, init_process, shutdown_distributed
from speakerforge.train.experiment import RunFolder, write_config
from speakerforge.train.integrity import UpdateIntegrityCheck
from speakerforge.train.optim import build_optimizer, set_lr, trainable_parameter_groups, warmup_cosine
from speakerforge.train.resume import Progress, check_trained, log_resume, reconcile_epochs
from speakerforge.train.stages import Stage, resolve_stages
from speakerforge.train.step import Stepper
from speakerforge.train.task import Task

log = logging.getLogger(__name__)


@dataclass
class RunOptions:
    """Command-line decisions that are not part of the config."""

    resume: bool = True
    allow_config_change: bool = False
    command: str = "train"
    init: Callable[[nn.Module, list[str]], None] | None = None  # (fresh module, class names) -> loads weights
    init_description: dict[str, Any] = field(default_factory=dict)
    keep_head_weights: torch.Tensor | None = None
    stop_after_steps: int = 0  # testing aid: exit (like a kill) after this many steps of this process


@dataclass
class StageRun:
    """What one stage builds before its first step (optimizer, wrapped module, sampler, dataset) and its counters."""

    stage: Stage
    optimizer: torch.optim.Optimizer
    train_module: nn.Module  # the module, or its DDP wrapper
    sampler: MixedSampler
    dataset: Any
    steps_per_epoch: int
    first_global: int  # global step of the stage's first step
    lr_scale: int
    check_integrity: bool
    nonfinite_run: int = 0  # non-finite steps in a row

    @property
    def total(self) -> int:
        return self.steps_per_epoch * self.stage.epochs


@dataclass
class EpochMeter:
    """Finite losses of this epoch, for the progress bar, the metrics rows and the epoch-end checkpoint metric."""

    t0: float
    loss_sum: float = 0.0
    n_logged: int = 0


class Engine:
    """Runs a task's stages with AMP, DDP, checkpoints and exact resume (see the module docstring)."""

    def __init__(
        self, cfg: Config, exp_dir: str | Path, options: RunOptions, task: Task, callbacks: Sequence[Callback] = ()
    ):
        task.check_reads(cfg, options.command)  # before the run folder is made
        self.cfg = cfg
        self.opts = options
        self.task = task
        self.callbacks = [*callbacks, *([StopAfterSteps(options.stop_after_steps)] if options.stop_after_steps else [])]
        self.device, self.env = init_process(cfg)
        self.stepper = Stepper(cfg, self.env, self.device)
        self.scaler = self.stepper.scaler
        self.stages: list[Stage] = resolve_stages(cfg)
        o = self.opts
        self.folder = RunFolder(
            Path(exp_dir), cfg, self.env, o.command, o.resume, o.allow_config_change, o.init_description
        )
        self.exp = self.folder.path
        self.run_id = self.folder.run_id
        task.cfg, task.opts, task.device, task.env, task.stages, task.exp = (
            cfg,
            options,
            self.device,
            self.env,
            self.stages,
            self.exp,
        )
        try:
            self.ckpt = CheckpointManager(self.exp, self.run_id, cfg.train.keep_last)
        except BaseException:
            self.folder.discard_if_never_started()
            raise

    # ------------------------------------------------------------------------------------------------ run
    def run(self) -> Path:
        """Train every stage to the end (resuming if a checkpoint exists); returns the model file path."""
        try:
            return self._run()
        except BaseException:  # a user error, a torch error, Ctrl-C / SIGTERM: a run that never started goes
            self.folder.discard_if_never_started()
            raise
        finally:
            self.folder.close()
            shutdown_distributed()

    def _run(self) -> Path:
        task = self.task
        task.build_data()
        module = task.build_module()
        progress = Progress()
        extra = task.recoverables()
        self.recoverables = Recoverables()
        self.recoverables.register(model=module, scaler=self.scaler, progress=progress, rng=RngState(), **extra)
        state = self.ckpt.load_latest()
        if state is not None:
            self.recoverables.load(state, "model", "progress", *extra)
            progress = reconcile_epochs(progress, state.get("stage_epochs"), self.stages)
        if self.env.is_main and not self.folder.is_new:
            write_config(self.exp, self.cfg)  # a resumed run's accepted config (unchanged, or --allow-config-change)
            log_resume(progress, self.stages)
        self.metrics = MetricsLog(self.exp)
        if self.env.is_main:
            self.metrics.truncate(progress.global_step)
        augment = self._augmenter()
        for stage in self.stages[progress.stage :]:
            progress = self._run_stage(module, stage, progress, state, augment)
            state = None
        barrier(self.env)
        check_trained(module, progress)
        return task.finish(module)

    # ------------------------------------------------------------------------------------------------ stages
    def _run_stage(
        self, module: nn.Module, stage: Stage, progress: Progress, state: dict | None, augment: Callable | None
    ) -> Progress:
        run = self._start_stage(module, stage, progress, state, augment)
        for epoch in range(progress.epoch, stage.epochs):
            self._run_epoch(module, run, progress, epoch)
            if self.env.is_main:  # and at each stage's end
                self.metrics.plot(force=epoch + 1 == stage.epochs)
        if run.check_integrity:
            self.integrity.finish()  # tensors still waiting for a non-zero gradient at the stage's end
        return progress

    def _start_stage(
        self, module: nn.Module, stage: Stage, progress: Progress, state: dict | None, augment: Callable | None
    ) -> StageRun:
        """Freeze, build the stage's optimizer (restored when the checkpoint is of this stage), wrap for DDP, and
        build its sampler, dataset and integrity check. The order is that of every earlier run (exact resume)."""
        self._apply_freeze(module, stage)
        optimizer, lr_scale = self._stage_optimizer(module, stage)
        self.recoverables.register(optimizer=optimizer)
        resumed = state is not None and state.get("optimizer_stage") == stage.index
        if resumed:
            assert state is not None
            self.recoverables.load(state, "optimizer", "scaler")
        train_module: nn.Module = module
        if self.env.enabled:
            train_module = nn.parallel.DistributedDataParallel(
                module, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        sampler = self._sampler(stage)
        steps_per_epoch = sampler.batches_per_epoch(self.cfg.data.batch_size)
        if steps_per_epoch < 1:
            raise ConfigError(
                f"data.batch_size ({self.cfg.data.batch_size}) is larger than an epoch ({sampler.epoch_size} samples)"
            )
        first_global = progress.global_step - (progress.epoch * steps_per_epoch + progress.batch)
        dataset = self.task.make_dataset(stage, augment)
        self.integrity = UpdateIntegrityCheck(
            {"model": module},
            optimizer,
            allow_dead=self.cfg.train.allow_dead_params,
            ignore=self.task.integrity_ignore(stage),
        )
        # A stage draws its data, crops and RNG from (seed, stage-local epoch/step) only, so a stage run inside a
        # staged config is exactly a separate run initialised from the previous stage's weights.
        seed_everything(self.cfg.train.seed)
        # last, once every object that draws at construction exists; a checkpoint written at the previous stage's
        # end holds that stage's RNG, which an uninterrupted run does not carry into this one
        if resumed:
            assert state is not None
            self.recoverables.load(state, "rng")
        return StageRun(
            stage,
            optimizer,
            train_module,
            sampler,
            dataset,
            steps_per_epoch,
            first_global,
            lr_scale,
            check_integrity=self.cfg.train.integrity_check,
        )

    def _apply_freeze(self, module: nn.Module, stage: Stage) -> None:
        report = self.task.apply_freeze(module, stage)
        if self.env.is_main:
            log.info(
                "stage %d/%d %r: %d epochs, lr %g, freeze %s\n%s",
                stage.index + 1,
                len(self.stages),
                stage.name,
                stage.epochs,
                stage.lr,
                stage.freeze or "nothing",
                report.table(),
            )

    def _stage_optimizer(self, module: nn.Module, stage: Stage) -> tuple[torch.optim.Optimizer, int]:
        """A fresh optimizer over the stage's trainable parameters, and the LR's world-size scale."""
        cfg = self.cfg
        groups = trainable_parameter_groups(
            module,
            base_lr=stage.lr,
            weight_decay=cfg.optim.weight_decay,
            lr_mult=stage.lr_mult,
            param_overrides=self.task.param_overrides(stage),
        )
        lr_scale = self.env.world_size if cfg.optim.scale_lr_with_world_size else 1
        optimizer = build_optimizer(
            groups,
            cfg.optim.optimizer,
            stage.lr * lr_scale,
            cfg.optim.momentum,
            cfg.optim.nesterov,
            tuple(cfg.optim.betas),
        )
        return optimizer, lr_scale

    def _sampler(self, stage: Stage) -> MixedSampler:
        task, cfg = self.task, self.cfg
        idx = task.stage_sources[stage.index]
        return MixedSampler(
            [len(task.sources[i].utts) for i in idx],
            [task.sources[i].weight for i in idx],
            seed=cfg.train.seed,
            samples_per_epoch=cfg.data.samples_per_epoch,
            shards={k: sizes for k, i in enumerate(idx) if (sizes := shard_sizes(task.sources[i].utts)) is not None},
            layout=ReaderLayout(cfg.data.batch_size, self.env.world_size, task.micro_batch, cfg.data.num_workers),
        )

    def _augmenter(self) -> Callable | None:
        aug = self.cfg.data.augment
        if not (aug.noise_dir or aug.rir_dir):
            return None
        from speakerforge.data.augment import Augmenter

        return Augmenter(aug, prefix="data.augment")

    # ------------------------------------------------------------------------------------------------ epochs
    def _run_epoch(self, module: nn.Module, run: StageRun, progress: Progress, epoch: int) -> None:
        stage, steps_per_epoch = run.stage, run.steps_per_epoch
        loader = self._epoch_loader(run, epoch, progress.batch)
        it = iter(loader)
        bar = progress_bar(
            total=steps_per_epoch,
            initial=progress.batch,
            disable=not self.env.is_main,
            desc=f"{stage.name} {epoch + 1}/{stage.epochs}",
            mininterval=1.0,
            dynamic_ncols=True,
        )
        meter = EpochMeter(t0=time.time())
        module.train()  # BatchNorm pinned by apply_freeze stays in eval mode (a pre-hook)
        with contextlib.closing(bar):  # also when a callback stops the run
            for b in range(progress.batch, steps_per_epoch):
                self._train_step(module, run, progress, epoch, it, bar, meter, last=b + 1 == steps_per_epoch)
                for callback in self.callbacks:
                    callback.on_step_end(self, progress)
        del it, loader

    def _train_step(
        self,
        module: nn.Module,
        run: StageRun,
        progress: Progress,
        epoch: int,
        it: Any,
        bar: Any,
        meter: EpochMeter,
        last: bool,
    ) -> None:
        """One step with its bookkeeping: LR and task schedules, the step, counters, report, checkpoint cadence."""
        stage, stage_step = run.stage, progress.global_step - run.first_global
        lr = warmup_cosine(
            stage_step,
            run.total,
            stage.lr * run.lr_scale,
            stage.min_lr,
            int(stage.warmup_epochs * run.steps_per_epoch),
        )
        set_lr(run.optimizer, lr)
        scheduled = self.task.schedule(module, stage, stage_step, run.steps_per_epoch)
        loss, correct, count, terms = self._step(
            run.train_module, module, run.optimizer, it, stage_step, check=run.check_integrity
        )
        self.task.after_optimizer_step(module, stage, stage_step, run.total)
        run.check_integrity = run.check_integrity and not self.integrity.done
        progress.batch += 1
        progress.global_step += 1
        self._count_loss(run, progress, meter, loss)
        row = {"loss": loss, "acc": correct / max(1, count), "lr": lr, **scheduled, **terms}
        self._report(bar, run, progress, epoch, row, meter, last=last)
        self._checkpoint_if_due(run, progress, epoch, meter, end_of_epoch=last)

    def _epoch_loader(self, run: StageRun, epoch: int, first_batch: int) -> torch.utils.data.DataLoader:
        """This rank's micro-batches of the epoch from `first_batch` on (logging the epoch's draws per source)."""
        cfg, stage = self.cfg, run.stage
        batches = run.sampler.batches(epoch, cfg.data.batch_size, first_batch, self.env.rank, self.env.world_size)
        if self.env.is_main:
            counts = [0] * len(run.dataset.sources)
            for d in run.sampler.epoch_plan(epoch):
                counts[d.source] += 1
            log.info(
                "epoch %d/%d of %r: samples per source: %s",
                epoch + 1,
                stage.epochs,
                stage.name,
                ", ".join(f"{s.name}={c}" for s, c in zip(run.dataset.sources, counts)),
            )
        mb = self.task.micro_batch
        micro = [[(epoch, d) for d in b[i : i + mb]] for b in batches for i in range(0, len(b), mb)]
        return torch.utils.data.DataLoader(
            run.dataset,
            batch_sampler=micro,
            num_workers=cfg.data.num_workers,
            collate_fn=self.task.collate,
            generator=torch.Generator(),  # keeps DataLoader from drawing on the global RNG (exact resume)
            persistent_workers=False,
        )

    def _count_loss(self, run: StageRun, progress: Progress, meter: EpochMeter, loss: float) -> None:
        """A finite loss joins the epoch's mean; a non-finite one was skipped, and too many in a row stop the run."""
        if math.isfinite(loss):
            run.nonfinite_run = 0
            meter.loss_sum += loss
            meter.n_logged += 1
            return
        run.nonfinite_run += 1
        progress.skipped_nonfinite += 1
        log.warning(
            "non-finite loss at step %d: step skipped (%d in a row, %d in all)",
            progress.global_step,
            run.nonfinite_run,
            progress.skipped_nonfinite,
        )
        if run.nonfinite_run >= self.cfg.train.max_nonfinite_steps:
            raise TrainingError(
                f"loss was NaN/inf for {run.nonfinite_run} steps in a row (step {progress.global_step}); "
                f"stopped. The last good checkpoint is kept in {self.ckpt.dir}; lower optim.lr, "
                "check the data, or raise train.max_nonfinite_steps"
            )

    def _report(
        self, bar: Any, run: StageRun, progress: Progress, epoch: int, row: dict, meter: EpochMeter, last: bool
    ) -> None:
        """The progress bar's line, and a metrics row every `log_every` steps and at the epoch's end."""
        sps = meter.n_logged * self.cfg.data.batch_size / max(1e-9, time.time() - meter.t0)
        bar.update(1)
        bar.set_postfix(
            loss=f"{row['loss']:.3f}",
            acc=f"{row['acc']:.2f}",
            lr=f"{row['lr']:.2e}",
            **{k: f"{v:.3g}" for k, v in row.items() if k not in ("loss", "acc", "lr")},
            sps=f"{sps:.0f}",
            refresh=False,
        )
        if self.env.is_main and (progress.global_step % self.cfg.train.log_every == 0 or last):
            head = {"step": progress.global_step, "stage": run.stage.index, "epoch": epoch + 1}
            self.metrics.append({**head, **row, "samples_per_s": sps})

    def _checkpoint_if_due(
        self, run: StageRun, progress: Progress, epoch: int, meter: EpochMeter, end_of_epoch: bool
    ) -> None:
        """Advance `progress` past an epoch's end, and save at an epoch's end and every `save_every_steps`."""
        stage, every = run.stage, self.cfg.train.save_every_steps
        if end_of_epoch:
            progress.epoch, progress.batch = epoch + 1, 0
            if progress.epoch == stage.epochs:
                progress.stage, progress.epoch = stage.index + 1, 0
        due = end_of_epoch or (every and progress.global_step % every == 0)
        if due and run.nonfinite_run == 0:  # never let a skipped step's checkpoint displace the last good one
            metric = meter.loss_sum / meter.n_logged if end_of_epoch and meter.n_logged else None
            self._save(progress, stage.index, metric)

    # ------------------------------------------------------------------------------------------------ steps
    def _step(
        self,
        train_module: nn.Module,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        it: Any,
        stage_step: int,
        check: bool,
    ) -> tuple[float, int, int, dict[str, float]]:
        checker = self.integrity if check else None
        return self.stepper.step(self.task, train_module, module, optimizer, it, stage_step, checker)

    # ------------------------------------------------------------------------------------------------ outputs
    def _save(self, progress: Progress, stage_index: int, metric: float | None) -> None:
        """Every registered recoverable, and which stage's optimizer it holds (a later stage starts a fresh one)."""
        if self.env.is_main:
            state = {
                **self.recoverables.state_dict(),
                "optimizer_stage": stage_index,
                "stage_epochs": [st.epochs for st in self.stages],
            }
            self.ckpt.save(state, progress.global_step, metric)
        barrier(self.env)


class TrainingRun(Task):
    """A task bound to the engine that runs it: `SomeTask(cfg, exp, options).run()` (the public trainers)."""

    def __init__(self, cfg: Config, exp_dir: str | Path, options: RunOptions | None = None):
        self.engine = Engine(cfg, exp_dir, options or RunOptions(), self)

    def run(self) -> Path:
        """Train every stage to the end (resuming if a checkpoint exists); returns the model file path."""
        return self.engine.run()
