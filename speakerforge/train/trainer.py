"""Supervised speaker training (`train`, `finetune`): the speaker task over the shared engine.

The engine (`speakerforge.train.engine`) owns the loop, stages, AMP, DDP, checkpoints and exact resume; `Trainer`
holds what supervised speaker training adds to it: labelled crops, the backbone + margin head, the margin schedule,
and the model file. `PretrainTrainer` and `AsrTrainer` are the other tasks (`speakerforge.train.task`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from speakerforge.config import to_dict
from speakerforge.data.datasets import CropDataset, collate_crops
from speakerforge.data.sampling import SpeakerIndex, load_sources
from speakerforge.errors import TrainingError
from speakerforge.models.heads import margin_at_step
from speakerforge.models.modelfile import build_checked_model, save_embedding_model
from speakerforge.train.callbacks import StopForTest
from speakerforge.train.checkpoint import seed_everything
from speakerforge.train.engine import RunOptions, TrainingRun
from speakerforge.train.objectives import SupervisedModule
from speakerforge.train.stages import Stage
from speakerforge.train.task import CropTask, LossResult

__all__ = ["RunOptions", "StopForTest", "Trainer", "TrainingError"]

log = logging.getLogger(__name__)


class Trainer(TrainingRun, CropTask):
    """Supervised speaker training with stages, freezing, AMP, DDP and exact resume."""

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

    # ------------------------------------------------------------------------------------------------ task
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

    def compute_loss(self, train_module: nn.Module, batch: dict[str, Any], stage_step: int, micro: int) -> LossResult:
        """The margin loss of one micro-batch, with its correct predictions and examples."""
        wav = batch["wav"].to(self.device, non_blocking=True)
        labels = batch["label"].to(self.device, non_blocking=True)
        feats = self.features(wav, stage_step, micro)
        loss, correct = train_module(feats, labels)
        return loss, {"correct": float(correct), "count": float(len(labels))}

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
