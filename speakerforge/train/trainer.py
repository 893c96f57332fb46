"""The training loop shared by `train`, `finetune` (and `pretrain` through its objective).

One loop for one process or K processes under torchrun (DDP, gloo on CPU, NCCL on GPU). Everything that decides
what happens at a step (data order, crops, augmentation, LR, margin) is a pure function of (seed, stage, epoch,
step), and the rest (weights, optimizer, scaler, RNG) is in the checkpoint: a killed run resumes to the same weights.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from speakerforge.atomic import atomic_write_text, sweep_stale_temps
from speakerforge.config import Config, to_dict
from speakerforge.data.datasets import CropDataset, collate_crops
from speakerforge.data.features import FeatureSpec
from speakerforge.data.sampling import MixedSampler, SpeakerIndex, load_sources
from speakerforge.data.shards import ReaderLayout, shard_sizes
from speakerforge.errors import ConfigError, SpeakerforgeError, TrainingError
from speakerforge.models.heads import margin_at_step
from speakerforge.models.modelfile import build_checked_model, save_embedding_model
from speakerforge.progress import progress_bar
from speakerforge.train import freezing
from speakerforge.train.checkpoint import CheckpointManager, capture_rng, restore_rng
from speakerforge.train.distributed import (
    DistEnv,
    all_reduce_sum,
    barrier,
    broadcast_object,
    init_distributed,
    shutdown_distributed,
)
from speakerforge.train.experiment import ExperimentLock, choose_run_dir, prepare_run, write_config
from speakerforge.train.integrity import UpdateIntegrityCheck
from speakerforge.train.objectives import SupervisedModule
from speakerforge.train.optim import build_optimizer, set_lr, trainable_parameter_groups, warmup_cosine
from speakerforge.train.stages import Stage, resolve_stages

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """Where the next step starts. Saved in every checkpoint."""

    stage: int = 0
    epoch: int = 0  # within the stage
    batch: int = 0  # within the epoch
    global_step: int = 0
    skipped_nonfinite: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


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


def _device(cfg: Config) -> torch.device:
    if cfg.train.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.train.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: cuda requested but no GPU is visible; use train.device=cpu")
    return torch.device(cfg.train.device)


class Trainer:
    """Supervised speaker training with stages, freezing, AMP, DDP and exact resume."""

    reads_ssl_section = False  # the `ssl:` section belongs to `pretrain`; elsewhere it would be ignored silently

    def __init__(self, cfg: Config, exp_dir: str | Path, options: RunOptions | None = None):
        if cfg.ssl and not self.reads_ssl_section:
            command = (options or RunOptions()).command
            raise ConfigError(
                f"the config has an ssl: section ({', '.join(sorted(cfg.ssl))}), which only "
                f"`speakerforge pretrain` reads; `{command}` would ignore it. Run pretrain, or remove "
                "the ssl: section"
            )
        self.cfg = cfg
        self.opts = options or RunOptions()
        self.device = _device(cfg)
        self.env: DistEnv = init_distributed(self.device.type)
        if self.device.type == "cuda":
            self.device = torch.device("cuda", self.env.local_rank)
            torch.cuda.set_device(self.device)
        if cfg.train.threads > 0:
            torch.set_num_threads(cfg.train.threads)
        self._check_amp()
        self.stages: list[Stage] = resolve_stages(cfg)
        self.feature_spec = FeatureSpec.from_config(cfg.features)  # what the model reads, and its model file says
        # What existed before this run, so that a run failing before its first checkpoint can be taken back.
        missing = [p for p in (Path(exp_dir), *Path(exp_dir).parents) if not p.exists()]
        self.exp = Path(exp_dir)
        self._new_folders = missing
        self._new_run = True
        # One run per experiment folder (the main process holds the lock; torchrun's other ranks follow it).
        self._lock = ExperimentLock(Path(exp_dir)).acquire() if self.env.is_main else None
        try:
            chosen = (
                str(choose_run_dir(Path(exp_dir), self.opts.resume, cfg, self.opts.command))
                if self.env.is_main
                else None
            )
            self.exp = Path(broadcast_object(self.env, chosen))
            self._new_folders = [p for p in (self.exp, *self.exp.parents) if not p.exists() or p in missing]
            self._new_run = not (self.exp / "run.json").is_file()
            if self.env.is_main:  # temporary files of a killed run (SIGKILL, power cut) never become outputs
                for folder in (self.exp, self.exp / "checkpoints"):
                    for stale in sweep_stale_temps(folder):
                        log.info("removed %s, left by an interrupted run", stale)
            run_id = (
                prepare_run(self.exp, cfg, self.opts.command, self.opts.allow_config_change, self.opts.init_description)
                if self.env.is_main
                else None
            )
            self.run_id = broadcast_object(self.env, run_id)
            self._setup_logging()
            self.ckpt = CheckpointManager(self.exp, self.run_id, cfg.train.keep_last)
        except BaseException:
            self._discard_if_never_started()
            raise

    # ------------------------------------------------------------------------------------------------ setup
    def _check_amp(self) -> None:
        amp = self.cfg.train.amp
        if amp not in ("none", "bf16", "fp16"):
            raise ConfigError(f"train.amp: unknown value {amp!r}; use none, bf16 or fp16")
        if amp == "fp16" and self.device.type != "cuda":
            raise ConfigError("train.amp: fp16 needs a GPU; on CPU use bf16")
        self.amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
        self.scaler = torch.amp.GradScaler("cuda", enabled=(amp == "fp16"))

    def _setup_logging(self) -> None:
        if not self.env.is_main:
            return
        handler = logging.FileHandler(self.exp / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger("speakerforge")
        if not any(
            isinstance(h, logging.FileHandler) and h.baseFilename == handler.baseFilename for h in root.handlers
        ):
            root.addHandler(handler)
            self._log_handler = handler  # removed when the run ends: later commands in this process log elsewhere
        if root.level == logging.NOTSET or root.level > logging.INFO:
            root.setLevel(logging.INFO)

    def build_data(self) -> None:
        cfg = self.cfg
        self.load_stage_sources(load_sources)
        # The label space covers every speed of the config and its stages, so a stage without speed perturbation
        # (3D-Speaker's large-margin stage) keeps the classifier of the run it continues.
        speeds = sorted(
            {float(s) for s in cfg.data.speed_perturb} | {float(s) for st in self.stages for s in st.speed_perturb},
            key=lambda s: (s != 1.0, s),
        )
        self.speakers = SpeakerIndex(self.sources, cfg.data.shared_speakers, speeds)
        self.check_batch_size()
        log.info(
            "data: %d sources, %d utterances, %d speakers, %d classes (speeds %s)",
            len(self.sources),
            sum(len(s.utts) for s in self.sources),
            self.speakers.num_base,
            self.speakers.num_classes,
            speeds,
        )

    def load_stage_sources(self, read: Callable[[list[tuple[str, float, str]]], list]) -> None:
        """Read the sources of every stage once (`read` turns (path, weight, name) specs into sources), check their
        audio, and record which sources each stage draws from."""
        specs_by_stage = [[(s.path, s.weight, s.name) for s in st.sources] for st in self.stages]
        if not any(specs_by_stage):
            raise ConfigError("no training data: give --data MANIFEST... or data.sources in the config")
        all_specs = list(dict.fromkeys(spec for specs in specs_by_stage for spec in specs))
        self.sources = read(all_specs)
        self._check_audio()
        self.stage_sources = [[all_specs.index(spec) for spec in specs] for specs in specs_by_stage]

    def check_batch_size(self) -> int:
        """The per-rank micro-batch: data.batch_size is the global batch of one optimizer step."""
        cfg = self.cfg
        per_rank = cfg.data.batch_size // (self.env.world_size * cfg.train.grad_accum)
        if per_rank * self.env.world_size * cfg.train.grad_accum != cfg.data.batch_size or per_rank < 1:
            raise ConfigError(
                f"data.batch_size ({cfg.data.batch_size}) must be a multiple of world size "
                f"({self.env.world_size}) x train.grad_accum ({cfg.train.grad_accum})"
            )
        self.micro_batch = per_rank
        return per_rank

    def _check_audio(self) -> None:
        """Every row readable before the first step: stop with the full list, or skip and record them.

        The main process reads each audio file's header once (shard members: their index) and records the verdict
        in EXP/audio-checks.json; a later start with unchanged manifests (a resume) opens only the rows found bad.
        """
        from speakerforge.data.validate import check_training_rows

        found = None
        if self.env.is_main:
            found = check_training_rows([(s.path, s.utts) for s in self.sources], self.exp / "audio-checks.json")
        found = broadcast_object(self.env, found)
        bad: list[tuple[str, str]] = []
        for src, rows in zip(self.sources, found):
            if rows:
                drop = {i for i, _, _ in rows}
                src.utts = [u for i, u in enumerate(src.utts) if i not in drop]
                bad += [(where, what) for _, where, what in rows]
        if not bad:
            return
        if not self.cfg.data.skip_bad_audio:
            for where, what in bad[1:50]:
                log.error("unreadable training row %s: %s", where, what)
            rows = f"{len(bad)} unreadable training row{'s' if len(bad) > 1 else ''}"
            others = "; the others are logged above, and `speakerforge validate` lists all" if len(bad) > 1 else ""
            raise SpeakerforgeError(
                f"{rows} (first: {bad[0][0]}: {bad[0][1]}){others}; fix them, or pass "
                "--skip-bad-audio (data.skip_bad_audio=true) to skip them"
            )
        if self.env.is_main:
            atomic_write_text(self.exp / "skipped.tsv", "".join(f"{where}\t{what}\n" for where, what in bad))
        log.warning("skipping %d unreadable rows (listed in %s)", len(bad), self.exp / "skipped.tsv")
        empty = [s.name for s in self.sources if not s.utts]
        if empty:
            raise SpeakerforgeError(f"data source(s) {', '.join(empty)}: every file is unreadable")

    def build_module(self) -> nn.Module:
        cfg = self.cfg
        _seed_everything(cfg.train.seed)
        backbone = build_checked_model(cfg.model.name, cfg.model.args, probe_bins=cfg.features.num_mel_bins)
        module = SupervisedModule(
            backbone,
            self.speakers.num_classes,
            kind=cfg.head.kind,
            scale=cfg.head.scale,
            margin=self.stages[0].margin.initial,
            sub_centers=cfg.head.subcenters,
            easy_margin=cfg.head.easy_margin,
        )
        if self.opts.init is not None:
            self.opts.init(module, self.speakers.names)
        return module.to(self.device)

    def _sampler(self, stage: Stage) -> MixedSampler:
        idx = self.stage_sources[stage.index]
        return MixedSampler(
            [len(self.sources[i].utts) for i in idx],
            [self.sources[i].weight for i in idx],
            seed=self.cfg.train.seed,
            samples_per_epoch=self.cfg.data.samples_per_epoch,
            shards={k: sizes for k, i in enumerate(idx) if (sizes := shard_sizes(self.sources[i].utts)) is not None},
            layout=ReaderLayout(
                self.cfg.data.batch_size, self.env.world_size, self.micro_batch, self.cfg.data.num_workers
            ),
        )

    def _augmenter(self) -> Callable | None:
        aug = self.cfg.data.augment
        if not (aug.noise_dir or aug.rir_dir):
            return None
        from speakerforge.data.augment import Augmenter

        return Augmenter(aug, prefix="data.augment")

    # ------------------------------------------------------------------------------------------------ loop
    def run(self) -> Path:
        """Train every stage to the end (resuming if a checkpoint exists); returns the model file path."""
        try:
            return self._run()
        except BaseException:  # a user error, a torch error, Ctrl-C / SIGTERM: a run that never started goes
            self._discard_if_never_started()
            raise
        finally:
            handler = getattr(self, "_log_handler", None)
            if handler is not None:
                logging.getLogger("speakerforge").removeHandler(handler)
                handler.close()
            if self._lock is not None:
                self._lock.release()
                self._lock = None
            shutdown_distributed()

    def _discard_if_never_started(self) -> None:
        """A new run that stopped on a user error before its first checkpoint leaves nothing behind: its run.json
        would otherwise make the corrected command "resume" it and refuse the corrected config."""
        if not (self.env.is_main and self._new_run) or any((self.exp / "checkpoints").glob("ckpt-*.pt")):
            if self._lock is not None:
                self._lock.release()
                self._lock = None
            return
        root = logging.getLogger("speakerforge")
        for handler in [
            h
            for h in root.handlers
            if isinstance(h, logging.FileHandler) and Path(h.baseFilename) == (self.exp / "train.log").absolute()
        ]:
            root.removeHandler(handler)
            handler.close()
        for name in (
            "config.yaml",
            "run.json",
            "train.log",
            "skipped.tsv",
            "audio-checks.json",
            "metrics.jsonl",
            "training_curves.png",
            "checkpoints/index.json",
        ):
            (self.exp / name).unlink(missing_ok=True)
        if self._lock is not None:
            self._lock.release(remove=True)
            self._lock = None
        for folder in [self.exp / "checkpoints", *self._new_folders]:
            try:
                folder.rmdir()  # only if empty
            except OSError:
                pass

    def _run(self) -> Path:
        self.build_data()
        module = self.build_module()
        progress = Progress()
        state = self.ckpt.load_latest()
        if state is not None:
            module.load_state_dict(state["model"])
            progress = self._reconcile_epochs(Progress(**state["progress"]), state.get("stage_epochs"))
        if self.env.is_main and not self._new_run:
            write_config(self.exp, self.cfg)  # a resumed run's accepted config (unchanged, or --allow-config-change)
            if progress.stage >= len(self.stages):
                log.info(
                    "this run already finished all %d stage(s) (global step %d): nothing to train; writing the "
                    "model file again",
                    len(self.stages),
                    progress.global_step,
                )
            else:
                log.info(
                    "resumed in stage %d/%d %r at epoch %d/%d, batch %d (global step %d)",
                    progress.stage + 1,
                    len(self.stages),
                    self.stages[progress.stage].name,
                    progress.epoch + 1,
                    self.stages[progress.stage].epochs,
                    progress.batch,
                    progress.global_step,
                )
        self.metrics_path = self.exp / "metrics.jsonl"
        if self.env.is_main:
            _truncate_metrics(self.metrics_path, progress.global_step)
        augment = self._augmenter()
        self.steps_done_here = 0
        self._last_plot = time.time()
        for stage in self.stages[progress.stage :]:
            progress = self._run_stage(module, stage, progress, state, augment)
            state = None
        barrier(self.env)
        _check_trained(module, progress)
        return self.finish(module)

    def _reconcile_epochs(self, progress: Progress, saved: list[int] | None) -> Progress:
        """Apply a changed epoch count (`--allow-config-change`) to a resumed run, or refuse it: never report a
        change that cannot take effect. A finished stage may be extended when nothing after it has started."""
        if not saved:  # checkpoints written before epoch counts were recorded
            return progress
        now = [st.epochs for st in self.stages]
        for i, (was, new) in enumerate(zip(saved, now)):
            if was == new:
                continue
            name = self.stages[i].name
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

    def _run_stage(
        self, module: nn.Module, stage: Stage, progress: Progress, state: dict | None, augment: Callable | None
    ) -> Progress:
        cfg = self.cfg
        report = self.apply_freeze(module, stage)
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
        groups = trainable_parameter_groups(
            module,
            base_lr=stage.lr,
            weight_decay=cfg.optim.weight_decay,
            lr_mult=stage.lr_mult,
            param_overrides=self.param_overrides(stage),
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
        if state is not None and state.get("optimizer_stage") == stage.index:
            optimizer.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])
        train_module: nn.Module = module
        if self.env.enabled:
            train_module = nn.parallel.DistributedDataParallel(
                module, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        sampler = self._sampler(stage)
        steps_per_epoch = sampler.batches_per_epoch(cfg.data.batch_size)
        if steps_per_epoch < 1:
            raise ConfigError(
                f"data.batch_size ({cfg.data.batch_size}) is larger than an epoch ({sampler.epoch_size} samples)"
            )
        total = steps_per_epoch * stage.epochs
        first_global = progress.global_step - (progress.epoch * steps_per_epoch + progress.batch)
        dataset = self.make_dataset(stage, augment)
        integrity = cfg.train.integrity_check
        self.integrity = UpdateIntegrityCheck(
            {"model": module}, optimizer, allow_dead=cfg.train.allow_dead_params, ignore=self.integrity_ignore(stage)
        )
        # A stage draws its data, crops and RNG from (seed, stage-local epoch/step) only, so a stage run inside a
        # staged config is exactly a separate run initialised from the previous stage's weights.
        _seed_everything(cfg.train.seed)
        # last, once every object that draws at construction exists; a checkpoint written at the previous stage's
        # end holds that stage's RNG, which an uninterrupted run does not carry into this one
        if state is not None and state.get("optimizer_stage") == stage.index:
            restore_rng(state["rng"])
        nonfinite_run = 0
        for epoch in range(progress.epoch, stage.epochs):
            epoch_id = epoch
            batches = sampler.batches(epoch_id, cfg.data.batch_size, progress.batch, self.env.rank, self.env.world_size)
            if self.env.is_main:
                counts = [0] * len(dataset.sources)
                for d in sampler.epoch_plan(epoch_id):
                    counts[d.source] += 1
                log.info(
                    "epoch %d/%d of %r: samples per source: %s",
                    epoch + 1,
                    stage.epochs,
                    stage.name,
                    ", ".join(f"{s.name}={c}" for s, c in zip(dataset.sources, counts)),
                )
            micro = [
                [(epoch_id, d) for d in b[i : i + self.micro_batch]]
                for b in batches
                for i in range(0, len(b), self.micro_batch)
            ]
            loader = torch.utils.data.DataLoader(
                dataset,
                batch_sampler=micro,
                num_workers=cfg.data.num_workers,
                collate_fn=self.collate,
                generator=torch.Generator(),  # keeps DataLoader from drawing on the global RNG (exact resume)
                persistent_workers=False,
            )
            it = iter(loader)
            bar = progress_bar(
                total=steps_per_epoch,
                initial=progress.batch,
                disable=not self.env.is_main,
                desc=f"{stage.name} {epoch + 1}/{stage.epochs}",
                mininterval=1.0,
                dynamic_ncols=True,
            )
            loss_sum = 0.0
            n_logged = 0
            t0 = time.time()
            module.train()  # BatchNorm pinned by apply_freeze stays in eval mode (a pre-hook)
            for b in range(progress.batch, steps_per_epoch):
                stage_step = progress.global_step - first_global
                lr = warmup_cosine(
                    stage_step, total, stage.lr * lr_scale, stage.min_lr, int(stage.warmup_epochs * steps_per_epoch)
                )
                set_lr(optimizer, lr)
                scheduled = self.schedule(module, stage, stage_step, steps_per_epoch)
                loss, correct, count = self._step(train_module, module, optimizer, it, stage_step, check=integrity)
                self.after_optimizer_step(module, stage, stage_step, total)
                integrity = integrity and not self.integrity.done
                progress.batch = b + 1
                progress.global_step += 1
                self.steps_done_here += 1
                if math.isfinite(loss):
                    nonfinite_run = 0
                    loss_sum += loss
                    n_logged += 1
                else:
                    nonfinite_run += 1
                    progress.skipped_nonfinite += 1
                    log.warning(
                        "non-finite loss at step %d: step skipped (%d in a row, %d in all)",
                        progress.global_step,
                        nonfinite_run,
                        progress.skipped_nonfinite,
                    )
                    if nonfinite_run >= cfg.train.max_nonfinite_steps:
                        raise TrainingError(
                            f"loss was NaN/inf for {nonfinite_run} steps in a row (step {progress.global_step}); "
                            f"stopped. The last good checkpoint is kept in {self.ckpt.dir}; lower optim.lr, "
                            "check the data, or raise train.max_nonfinite_steps"
                        )
                elapsed = max(1e-9, time.time() - t0)
                bar.update(1)
                bar.set_postfix(
                    loss=f"{loss:.3f}",
                    acc=f"{correct / max(1, count):.2f}",
                    lr=f"{lr:.2e}",
                    **{k: f"{v:.3g}" for k, v in scheduled.items()},
                    sps=f"{n_logged * cfg.data.batch_size / elapsed:.0f}",
                    refresh=False,
                )
                if self.env.is_main and (progress.global_step % cfg.train.log_every == 0 or b + 1 == steps_per_epoch):
                    self._log_metrics(
                        {
                            "step": progress.global_step,
                            "stage": stage.index,
                            "epoch": epoch + 1,
                            "loss": loss,
                            "acc": correct / max(1, count),
                            "lr": lr,
                            **scheduled,
                            "samples_per_s": n_logged * cfg.data.batch_size / elapsed,
                        }
                    )
                end_of_epoch = b + 1 == steps_per_epoch
                if end_of_epoch:
                    progress.epoch, progress.batch = epoch + 1, 0
                    if progress.epoch == stage.epochs:
                        progress.stage, progress.epoch = stage.index + 1, 0
                due = end_of_epoch or (
                    cfg.train.save_every_steps and progress.global_step % cfg.train.save_every_steps == 0
                )
                if due and nonfinite_run == 0:  # never let a skipped step's checkpoint displace the last good one
                    metric = loss_sum / n_logged if end_of_epoch and n_logged else None
                    self._save(module, optimizer, progress, stage.index, metric)
                if self.opts.stop_after_steps and self.steps_done_here >= self.opts.stop_after_steps:
                    bar.close()
                    raise StopForTest(f"stopped after {self.steps_done_here} steps (stop_after_steps)")
            bar.close()
            del it, loader
            # Curves are redrawn at most every two minutes (matplotlib is slow to start) and at each stage's end.
            if self.env.is_main and (epoch + 1 == stage.epochs or time.time() - self._last_plot > 120):
                self._plot_curves()
                self._last_plot = time.time()
        return progress

    def _step(
        self,
        train_module: nn.Module,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        it,
        stage_step: int,
        check: bool,
    ) -> tuple[float, int, int]:
        """One optimizer step over `grad_accum` micro-batches; a non-finite loss skips the update on every rank."""
        cfg = self.cfg
        accum = cfg.train.grad_accum
        optimizer.zero_grad(set_to_none=True)
        total_loss = torch.zeros((), dtype=torch.float64)
        correct = 0
        count = 0
        for k in range(accum):
            batch = _next_batch(it)
            sync = k == accum - 1 or not self.env.enabled
            ctx = train_module.no_sync() if (not sync and self.env.enabled) else contextlib.nullcontext()
            with ctx:
                with torch.autocast(
                    self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
                ):
                    loss, corr, n = self.compute_loss(train_module, batch, stage_step, k)
                self.scaler.scale(loss / accum).backward()
            total_loss += loss.detach().double().cpu() / accum
            correct += int(corr)
            count += int(n)
        finite = torch.tensor([1.0 if torch.isfinite(total_loss) else 0.0])
        finite = all_reduce_sum(self.env, finite)
        if finite.item() < self.env.world_size:
            optimizer.zero_grad(set_to_none=True)
            return float("nan"), correct, count
        self.before_optimizer_step(module, stage_step)
        if cfg.train.grad_clip > 0:
            self.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(
                [p for g in optimizer.param_groups for p in g["params"]], cfg.train.grad_clip
            )
        checker = self.integrity if check else None
        if checker is not None:
            checker.before_step()
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else 1.0
        self.scaler.step(optimizer)
        self.scaler.update()
        if checker is not None:
            skipped = self.scaler.is_enabled() and self.scaler.get_scale() < scale
            checker.after_step(step_skipped=skipped)
        reduced = all_reduce_sum(self.env, torch.tensor([float(total_loss), float(correct), float(count)]))
        return reduced[0].item() / self.env.world_size, int(reduced[1].item()), int(reduced[2].item())

    # ------------------------------------------------------------------------------------------------ hooks
    # What differs between supervised training and other objectives (SSL pretraining) is confined to these.
    def make_dataset(self, stage: Stage, augment: Callable | None) -> torch.utils.data.Dataset:
        return CropDataset(
            [self.sources[i] for i in self.stage_sources[stage.index]],
            self.speakers,
            stage.crop_seconds,
            seed=self.cfg.train.seed,
            augment=augment,
            speeds=stage.speed_perturb,
        )

    collate = staticmethod(collate_crops)

    def compute_loss(
        self, train_module: nn.Module, batch: dict[str, Any], stage_step: int, micro: int
    ) -> tuple[torch.Tensor, torch.Tensor | int, int]:
        """(loss, correct predictions, examples) of one micro-batch."""
        wav = batch["wav"].to(self.device, non_blocking=True)
        labels = batch["label"].to(self.device, non_blocking=True)
        feats = self.features(wav, stage_step, micro)
        loss, correct = train_module(feats, labels)
        return loss, correct, len(labels)

    def schedule(self, module: nn.Module, stage: Stage, stage_step: int, steps_per_epoch: int) -> dict[str, float]:
        """Apply per-step schedules other than the LR; returns them for the log."""
        m = stage.margin
        margin = margin_at_step(
            stage_step,
            start_step=int(m.start_epoch * steps_per_epoch),
            end_step=int(max(m.end_epoch, m.start_epoch) * steps_per_epoch),
            initial=m.initial,
            final=m.final,
            kind=m.kind,
        )
        module.set_margin(margin)
        return {"margin": margin}

    def apply_freeze(self, module: nn.Module, stage: Stage) -> freezing.FreezeReport:
        """Freeze this stage's patterns (SSL keeps its EMA teacher out of the freeze logic here)."""
        return freezing.apply_freeze(
            module, freezing.parse_freeze_patterns(stage.freeze), freeze_bn=self.cfg.train.freeze_bn
        )

    def param_overrides(self, stage: Stage) -> dict[str, dict[str, Any]]:
        """Optimizer options per parameter pattern (SDPN: the prototypes' own weight decay)."""
        return {}

    def before_optimizer_step(self, module: nn.Module, stage_step: int) -> None:
        """Called after backward, before clipping and the step (DINO drops its last layer's gradient here)."""

    def after_optimizer_step(self, module: nn.Module, stage: Stage, stage_step: int, total_steps: int) -> None:
        """Called after every optimizer step (an EMA teacher updates here)."""

    def integrity_ignore(self, stage: Stage) -> list[str]:
        """Parameters the update-integrity check may skip at this stage."""
        return []

    def features(
        self, wav: torch.Tensor, step: int, micro: int, *, spec: bool = True, dither_tag: int = 1, spec_tag: int = 2
    ) -> torch.Tensor:
        """Batched fbank (+ mean norm, + SpecAugment on a random `prob` share of the batch) of `[B, samples]`.

        Dither and masks draw from generators seeded by (seed, step, micro-batch, rank, tag), never from global
        state; callers that featurise several views of a step pass distinct tags.
        """
        fc = self.cfg.features
        gen = None
        if fc.dither > 0:
            gen = torch.Generator(device=wav.device)
            gen.manual_seed(_step_seed(self.cfg.train.seed, step, micro, self.env.rank, dither_tag))
        feats = self.feature_spec(wav, dither=fc.dither, generator=gen)
        sa = self.cfg.data.augment.spec_augment
        if spec and sa.prob > 0:
            from speakerforge.data.augment import spec_augment

            gen = torch.Generator(device=feats.device)
            gen.manual_seed(_step_seed(self.cfg.train.seed, step, micro, self.env.rank, spec_tag))
            pick = torch.rand(feats.shape[0], generator=gen, device=feats.device) < sa.prob
            if pick.any():
                feats = feats.clone()
                feats[pick] = spec_augment(
                    feats[pick], gen, sa.num_freq_masks, sa.max_freq_width, sa.num_time_masks, sa.max_time_width
                )
        return feats

    # ------------------------------------------------------------------------------------------------ outputs
    def _save(
        self,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        progress: Progress,
        stage_index: int,
        metric: float | None,
    ) -> None:
        if self.env.is_main:
            state = {
                "model": module.state_dict(),
                "optimizer": optimizer.state_dict(),
                "optimizer_stage": stage_index,
                "scaler": self.scaler.state_dict(),
                "progress": progress.as_dict(),
                "stage_epochs": [st.epochs for st in self.stages],
                "rng": capture_rng(),
            }
            self.ckpt.save(state, progress.global_step, metric)
        barrier(self.env)

    def _log_metrics(self, row: dict[str, Any]) -> None:
        # One write per row; a row torn by a kill or a full disk is dropped by the next run (`_truncate_metrics`).
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def _plot_curves(self) -> None:
        from speakerforge.train.curves import plot_training_curves

        try:
            plot_training_curves(self.metrics_path, self.exp / "training_curves.png")
        except Exception as exc:  # a plot must never stop a training run
            log.warning("could not draw training curves: %s", exc)

    def finish(self, module: nn.Module) -> Path:
        out = self.exp / "model.safetensors"
        if self.env.is_main:
            save_embedding_model(
                out,
                module.backbone,
                self.cfg.model.name,
                dict(self.cfg.model.args),
                features=self.feature_spec.to_meta(),
                extra_tensors={"classifier.weight": module.classifier.weight.detach()},
                extra_meta={
                    "speakers": self.speakers.names,
                    "speeds": self.speakers.speeds,
                    "sub_centers": self.cfg.head.subcenters,
                    "config": to_dict(self.cfg),
                },
            )
            log.info("model written to %s", out)
        return out


class StopForTest(Exception):
    """Raised by `stop_after_steps` to emulate a killed run in tests (the checkpoints on disk are what counts)."""


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


def _check_trained(module: nn.Module, progress: Progress) -> None:
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


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _step_seed(seed: int, step: int, micro: int, rank: int, what: int) -> int:
    return (seed * 1_000_003 + step * 101 + micro * 7 + rank * 100_003 + what) % (2**63 - 1)


def _truncate_metrics(path: Path, global_step: int) -> None:
    """After a resume, drop rows logged after the checkpoint so curves show each step once."""
    if not path.is_file():
        return
    text = path.read_text(encoding="utf-8", errors="replace")
    rows = [line for line in text.splitlines() if line.strip()]
    keep = []
    for r in rows:
        try:
            row = json.loads(r)
        except json.JSONDecodeError:  # a row torn by a kill or a full disk mid-append
            log.warning("%s: dropping an unreadable row (torn by an interrupted write): %.60s", path, r)
            continue
        if isinstance(row, dict) and row.get("step", 0) <= global_step:
            keep.append(r)
    if len(keep) != len(rows) or (text and not text.endswith("\n")):
        atomic_write_text(path, "".join(r + "\n" for r in keep))
