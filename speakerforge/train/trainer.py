"""Supervised speaker training (`train`, `finetune`): the speaker task over the shared engine.

The engine (`speakerforge.train.engine`) owns the loop, stages, AMP, DDP, checkpoints and exact resume; `Trainer`
holds what supervised speaker training adds to it: labelled crops, the backbone + margin head, the margin schedule,
the freeze rules and the model file. `PretrainTrainer` and `AsrTrainer` override the same hooks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from speakerforge.atomic import atomic_write_text
from speakerforge.config import Config, to_dict
from speakerforge.data.datasets import CropDataset, collate_crops
from speakerforge.data.sampling import SpeakerIndex, load_sources
from speakerforge.errors import ConfigError, SpeakerforgeError, TrainingError
from speakerforge.models.heads import margin_at_step
from speakerforge.models.modelfile import build_checked_model, save_embedding_model
from speakerforge.train import freezing
from speakerforge.train.distributed import broadcast_object
from speakerforge.train.engine import Engine, RunOptions, StopForTest, seed_everything, step_seed
from speakerforge.train.objectives import SupervisedModule
from speakerforge.train.stages import Stage

__all__ = ["RunOptions", "StopForTest", "Trainer", "TrainingError"]

log = logging.getLogger(__name__)


class Trainer:
    """Supervised speaker training with stages, freezing, AMP, DDP and exact resume."""

    reads_ssl_section = False  # the `ssl:` section belongs to `pretrain`; elsewhere it would be ignored silently

    def __init__(self, cfg: Config, exp_dir: str | Path, options: RunOptions | None = None):
        self.cfg = cfg
        self.engine = Engine(cfg, exp_dir, options or RunOptions(), self)
        e = self.engine  # the run's context, read by the hooks
        self.opts, self.device, self.env, self.stages, self.exp = e.opts, e.device, e.env, e.stages, e.exp
        self.feature_spec = e.feature_spec

    def run(self) -> Path:
        """Train every stage to the end (resuming if a checkpoint exists); returns the model file path."""
        return self.engine.run()

    # ------------------------------------------------------------------------------------------------ setup
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
        seed_everything(cfg.train.seed)
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
            gen.manual_seed(step_seed(self.cfg.train.seed, step, micro, self.env.rank, dither_tag))
        feats = self.feature_spec(wav, dither=fc.dither, generator=gen)
        sa = self.cfg.data.augment.spec_augment
        if spec and sa.prob > 0:
            from speakerforge.data.augment import spec_augment

            gen = torch.Generator(device=feats.device)
            gen.manual_seed(step_seed(self.cfg.train.seed, step, micro, self.env.rank, spec_tag))
            pick = torch.rand(feats.shape[0], generator=gen, device=feats.device) < sa.prob
            if pick.any():
                feats = feats.clone()
                feats[pick] = spec_augment(
                    feats[pick], gen, sa.num_freq_masks, sa.max_freq_width, sa.num_time_masks, sa.max_time_width
                )
        return feats

    # ------------------------------------------------------------------------------------------------ outputs
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
