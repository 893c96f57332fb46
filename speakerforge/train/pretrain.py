"""Self-supervised pretraining (`speakerforge pretrain`): DINO/RDINO or SDPN through the shared training loop.

`PretrainTrainer` is a task of the engine (`speakerforge.train.task`); stages, AMP, DDP, checkpoints and exact resume
are the engine's.
What is specific here:
- data: unlabelled manifests (speaker labels ignored), multi-crop views (`speakerforge.data.ssl_views`);
- the module: `SSLModule` with `student` and `teacher` (each `backbone` + `head`) and `objective` (the DINO centre
  buffer, or the SDPN prototypes as a parameter), all in `state_dict()`, so in every checkpoint;
- the teacher is kept out of the freeze logic (`apply_freeze` works on the student and the objective only): its
  parameters never require grad, so they are never in the optimizer, and its BatchNorm is never pinned in eval mode
  (it runs in training mode, as in the references). It is updated under no_grad after each optimizer step with the
  momentum `ema_momentum(stage step, stage steps)`, a pure function of the step;
- schedules (teacher momentum, DINO teacher temperature and VICReg weight) are pure functions of the stage step;
- DINO's last layer gets no update during the first `ssl.freeze_last_layer_epochs` epochs (its gradient is dropped
  before the step, as 3D-Speaker's `cancel_gradients_last_layer`), and the update-integrity check skips it then;
- SDPN prototypes get their own optimizer options (`ssl.prototypes_weight_decay`, default 0; `ssl.prototypes_lr_mult`);
- the model file written at the end holds the TEACHER backbone, so `extract` works on an SSL run directly;
  `finetune --init EXP --init-part teacher|student` reads either backbone from the checkpoints.
Logged per step besides the loss: `acc` is the fraction of (student view, teacher view) rows whose argmax agree, the
schedules (`momentum`, `teacher_temp`, `vicreg_weight`) and the loss terms (`dino`, `vicreg` or `ploss`, `memax`,
`koleo`) of the step.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from speakerforge.config import Config, from_dict, to_dict
from speakerforge.data.sampling import load_sources
from speakerforge.data.ssl_views import CropSpec, MultiCropDataset, collate_views
from speakerforge.errors import ConfigError
from speakerforge.models.modelfile import save_embedding_model
from speakerforge.models.registry import build_model
from speakerforge.models.ssl import DINOHead, SDPNHead, SSLBranch, ema_momentum, ema_update
from speakerforge.train import freezing
from speakerforge.train.checkpoint import seed_everything
from speakerforge.train.engine import RunOptions, TrainingRun
from speakerforge.train.integrity import IntegrityError, find_free_tensors
from speakerforge.train.ssl_objectives import (
    DINOObjective,
    SDPNObjective,
    SSLModule,
    teacher_temperature,
    vicreg_weight,
)
from speakerforge.train.stages import Stage
from speakerforge.train.task import CropTask, LossResult

log = logging.getLogger(__name__)

METHODS = ("dino", "sdpn")


@dataclass
class SSLConfig:
    """The `ssl:` section. Defaults are the 3D-Speaker recipes' (RDINO for dino, SDPN for sdpn)."""

    method: str = ""  # dino | sdpn
    # views
    global_crops: int | None = None  # teacher (and, for dino, student) crops; default dino 2, sdpn 1
    global_seconds: float = 4.0
    local_crops: int = 4  # student-only crops
    local_seconds: float = 2.0
    spec_augment_global: bool = False  # SpecAugment (data.augment.spec_augment) on global crops too, not only local
    # teacher
    teacher_momentum: float = 0.996
    teacher_momentum_end: float = 1.0
    # projection head
    head_layers: int = 3
    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 256
    head_bn: bool = True
    # dino / rdino
    out_dim: int = 65536
    add_dim: int = 8192  # RDINO's extra MLP layer (input of the regulariser); 0 = plain DINO head
    norm_last_layer: bool = True
    freeze_last_layer_epochs: int = 1
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: int = 0
    center_momentum: float = 0.9
    vicreg_weight: float = 0.2  # 0 disables the regulariser
    vicreg_weight_start: float = 0.05
    vicreg_warmup_epochs: int = 10
    vicreg_std_coeff: float = 10.0
    vicreg_cov_coeff: float = 1.0
    # sdpn
    num_prototypes: int = 1024
    prototype_tau: float = 0.1
    sharpen_temp: float = 0.25
    sinkhorn_iters: int = 3
    memax_weight: float = 1.0
    koleo_weight: float = 0.1
    prototypes_weight_decay: float = 0.0
    prototypes_lr_mult: float = 1.0


_DINO_ONLY = (
    "out_dim",
    "add_dim",
    "norm_last_layer",
    "freeze_last_layer_epochs",
    "student_temp",
    "teacher_temp",
    "warmup_teacher_temp",
    "warmup_teacher_temp_epochs",
    "center_momentum",
    "vicreg_weight",
    "vicreg_weight_start",
    "vicreg_warmup_epochs",
    "vicreg_std_coeff",
    "vicreg_cov_coeff",
)
_SDPN_ONLY = (
    "num_prototypes",
    "prototype_tau",
    "sharpen_temp",
    "sinkhorn_iters",
    "memax_weight",
    "koleo_weight",
    "prototypes_weight_decay",
    "prototypes_lr_mult",
)


def parse_ssl_config(raw: dict[str, Any] | None, where: str = "config") -> SSLConfig:
    """Validate the free-form `ssl:` section: unknown keys, wrong types, keys of the other method, bad ranges."""
    raw = dict(raw or {})
    ssl = from_dict(SSLConfig, raw, where, "ssl.")
    if ssl.method not in METHODS:
        got = f"got {ssl.method!r}" if ssl.method else "it is not set"
        raise ConfigError(
            f"{where}: ssl.method must be one of {', '.join(METHODS)} ({got}); e.g. --set ssl.method=sdpn"
        )
    other = _SDPN_ONLY if ssl.method == "dino" else _DINO_ONLY
    wrong = [k for k in raw if k in other]
    if wrong:
        keys = ", ".join(f"ssl.{k}" for k in wrong)
        raise ConfigError(
            f"{where}: {keys} belong{'s' if len(wrong) == 1 else ''} to method "
            f"{'sdpn' if ssl.method == 'dino' else 'dino'}, not {ssl.method}; remove or change ssl.method"
        )
    if ssl.global_crops is None:
        ssl.global_crops = 2 if ssl.method == "dino" else 1
    _check_ranges(ssl, where)
    return ssl


def _check_ranges(ssl: SSLConfig, where: str) -> None:
    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise ConfigError(f"{where}: ssl.{key}={getattr(ssl, key)!r}: {what}")

    need(ssl.global_crops >= 1, "global_crops", "at least 1")
    need(ssl.local_crops >= 0, "local_crops", "must be >= 0")
    need(ssl.global_seconds > 0, "global_seconds", "must be > 0")
    need(ssl.local_seconds > 0, "local_seconds", "must be > 0")
    need(0.0 <= ssl.teacher_momentum <= 1.0, "teacher_momentum", "a momentum lies in [0, 1]")
    need(0.0 <= ssl.teacher_momentum_end <= 1.0, "teacher_momentum_end", "a momentum lies in [0, 1]")
    need(ssl.head_layers >= 1, "head_layers", "at least 1")
    for key in ("head_hidden_dim", "head_bottleneck_dim"):
        need(getattr(ssl, key) >= 1, key, "at least 1")
    if ssl.method == "dino":
        need(
            ssl.global_crops + ssl.local_crops >= 2,
            "local_crops",
            "DINO needs at least 2 views in all (ssl.global_crops + ssl.local_crops)",
        )
        need(ssl.out_dim >= 2, "out_dim", "at least 2")
        need(ssl.add_dim >= 0, "add_dim", "must be >= 0 (0: no extra layer)")
        for key in ("student_temp", "teacher_temp", "warmup_teacher_temp"):
            need(getattr(ssl, key) > 0, key, "a temperature must be > 0")
        need(0.0 <= ssl.center_momentum <= 1.0, "center_momentum", "a momentum lies in [0, 1]")
        need(ssl.vicreg_weight >= 0, "vicreg_weight", "must be >= 0 (0 disables the regulariser)")
        need(ssl.freeze_last_layer_epochs >= 0, "freeze_last_layer_epochs", "must be >= 0")
    else:
        need(ssl.local_crops >= 1, "local_crops", "SDPN's student sees only local crops: at least 1")
        need(ssl.num_prototypes >= 2, "num_prototypes", "at least 2")
        need(ssl.prototype_tau > 0, "prototype_tau", "a temperature must be > 0")
        need(ssl.sharpen_temp > 0, "sharpen_temp", "a temperature must be > 0")
        need(ssl.sinkhorn_iters >= 0, "sinkhorn_iters", "must be >= 0 (0: no balancing)")
        need(ssl.prototypes_lr_mult >= 0, "prototypes_lr_mult", "must be >= 0")


class _TrainablePart(nn.Module):
    """A view of an `SSLModule` without its teacher, for the freeze logic (same parameter names)."""

    def __init__(self, module: SSLModule):
        super().__init__()
        for name, child in module.named_children():
            if name != "teacher":
                self.add_module(name, child)


class PretrainTrainer(TrainingRun, CropTask):
    """DINO/RDINO or SDPN pretraining (see the module docstring)."""

    reads_ssl_section = True
    # the heads, losses and crops are the SSL objective's (ssl.global_seconds, ssl.local_seconds)
    unread_keys = ("asr", "head", "margin", "data.crop_seconds", "stages.margin", "stages.crop_seconds")

    def __init__(self, cfg: Config, exp_dir: str | Path, options: RunOptions | None = None):
        self.ssl = parse_ssl_config(cfg.ssl, "config")  # before the run folder is created
        options = dataclasses.replace(options or RunOptions(), command="pretrain")
        if options.init is not None:
            raise ConfigError("pretrain starts from random weights; --init belongs to finetune")
        super().__init__(cfg, exp_dir, options)
        self._schedule: dict[str, float] = {}  # this step's, which the loss reads
        self._steps_per_epoch = 1

    # ------------------------------------------------------------------------------------------------ setup
    def build_data(self) -> None:
        self.load_stage_sources(lambda specs: load_sources(specs, need_speakers=False))
        per_rank = self.check_batch_size()
        if self.ssl.method == "sdpn" and per_rank < 2 and self.ssl.koleo_weight > 0:
            raise ConfigError(
                "ssl.koleo_weight > 0 needs at least 2 examples per micro-batch (KoLeo compares each "
                "embedding with its nearest neighbour in the batch)"
            )
        s = self.ssl
        log.info(
            "data: %d sources, %d utterances (labels unused); %s views: %d x %g s global, %d x %g s local",
            len(self.sources),
            sum(len(x.utts) for x in self.sources),
            s.method,
            s.global_crops,
            s.global_seconds,
            s.local_crops,
            s.local_seconds,
        )

    def build_module(self) -> nn.Module:
        cfg, s = self.cfg, self.ssl
        seed_everything(cfg.train.seed)

        def branch() -> SSLBranch:
            backbone = build_model(cfg.model.name, **cfg.model.args)
            dim = int(getattr(backbone, "embedding_dim", 0) or 0)
            if dim <= 0:
                raise ConfigError(f"model {cfg.model.name!r} has no embedding_dim; SSL heads need it")
            if s.method == "dino":
                head: nn.Module = DINOHead(
                    dim,
                    s.out_dim,
                    s.head_hidden_dim,
                    s.head_bottleneck_dim,
                    s.head_layers,
                    s.add_dim,
                    s.head_bn,
                    s.norm_last_layer,
                )
            else:
                head = SDPNHead(dim, s.head_hidden_dim, s.head_bottleneck_dim, s.head_layers, s.head_bn)
            return SSLBranch(backbone, head)

        student, teacher = branch(), branch()
        if s.method == "dino":
            objective: nn.Module = DINOObjective(s.out_dim, s.student_temp, s.center_momentum)
            module = SSLModule(
                "dino",
                student,
                teacher,
                objective,
                vicreg={"weight": s.vicreg_weight, "std_coeff": s.vicreg_std_coeff, "cov_coeff": s.vicreg_cov_coeff},
            )
        else:
            objective = SDPNObjective(
                s.num_prototypes, s.head_bottleneck_dim, s.prototype_tau, s.sharpen_temp, s.sinkhorn_iters
            )
            module = SSLModule(
                "sdpn", student, teacher, objective, weights={"memax": s.memax_weight, "koleo": s.koleo_weight}
            )
        return module.to(self.device)

    def make_dataset(self, stage: Stage, augment: Callable | None) -> torch.utils.data.Dataset:
        s = self.ssl
        return MultiCropDataset(
            [self.sources[i] for i in self.stage_sources[stage.index]],
            CropSpec(s.global_crops, s.global_seconds),
            CropSpec(s.local_crops, s.local_seconds),
            seed=self.cfg.train.seed,
            augment=augment,
            speeds=stage.speed_perturb,
        )

    collate = staticmethod(collate_views)

    # ------------------------------------------------------------------------------------------------ freezing
    def apply_freeze(self, module: nn.Module, stage: Stage) -> freezing.FreezeReport:
        """Freeze the stage's patterns and the never-trained tensors over student + objective; the teacher stays out."""
        free = find_free_tensors({"": module})
        if free:  # checked first: the prototypes' param_overrides key would otherwise report only "matches nothing"
            raise IntegrityError(
                f"tensors that require grad but are not registered parameters: {', '.join(free)}; they would be "
                "neither optimized nor saved (3D-Speaker #191): make them an nn.Parameter of their module"
            )
        patterns = freezing.parse_freeze_patterns(stage.freeze) + module.fixed_parameters()
        report = freezing.apply_freeze(_TrainablePart(module), patterns, freeze_bn=self.cfg.train.freeze_bn)
        module.teacher.requires_grad_(False)
        names = [f"teacher.{n}" for n, _ in module.teacher.named_parameters()]
        report.frozen.extend(names)
        report.counts["teacher"] = (0, sum(p.numel() for p in module.teacher.parameters()))
        return report

    def param_overrides(self, stage: Stage) -> dict[str, dict[str, Any]]:
        if self.ssl.method != "sdpn":
            return {}
        return {
            "objective.prototypes": {
                "weight_decay": self.ssl.prototypes_weight_decay,
                "lr_mult": self.ssl.prototypes_lr_mult,
            }
        }

    def integrity_ignore(self, stage: Stage) -> list[str]:
        if self.ssl.method == "dino" and self.ssl.freeze_last_layer_epochs > 0:
            return ["model.student.head.last_layer"]  # its gradient is dropped during the first epoch(s)
        return []

    # ------------------------------------------------------------------------------------------------ steps
    def schedule(self, module: nn.Module, stage: Stage, stage_step: int, steps_per_epoch: int) -> dict[str, float]:
        """Teacher momentum of this step (and DINO's teacher temperature and regulariser weight, which the loss
        reads)."""
        s = self.ssl
        self._steps_per_epoch = steps_per_epoch
        epoch = stage_step // steps_per_epoch
        values: dict[str, float] = {
            "momentum": ema_momentum(
                stage_step, steps_per_epoch * stage.epochs, s.teacher_momentum, s.teacher_momentum_end
            )
        }
        if s.method == "dino":
            values["teacher_temp"] = teacher_temperature(
                epoch, s.warmup_teacher_temp, s.teacher_temp, s.warmup_teacher_temp_epochs
            )
            if s.vicreg_weight > 0:
                values["vicreg_weight"] = vicreg_weight(
                    epoch, s.vicreg_weight_start, s.vicreg_weight, s.vicreg_warmup_epochs
                )
        self._schedule = values
        return values

    def compute_loss(self, train_module: nn.Module, batch: dict[str, Any], stage_step: int, micro: int) -> LossResult:
        """The SSL loss, the (student view, teacher view) rows whose argmax agree, and the loss terms."""
        s = self.ssl
        glob = self._view_features(batch["global"], stage_step, micro, view=0, spec=s.spec_augment_global)
        loc = self._view_features(batch["local"], stage_step, micro, view=1, spec=True) if s.local_crops else None
        loss, agree, count, terms = train_module(
            glob,
            loc,
            s.global_crops,
            s.local_crops,
            teacher_temp=self._schedule.get("teacher_temp", s.teacher_temp),
            reg_weight=self._schedule.get("vicreg_weight", 0.0),
        )
        return loss, {"correct": float(agree), "count": float(count), **{k: float(v) for k, v in terms.items()}}

    def _view_features(self, wav: torch.Tensor, step: int, micro: int, view: int, spec: bool) -> torch.Tensor:
        """`[B, n_crops, samples]` -> crop-major `[n_crops * B, frames, mel]` fbank (+ SpecAugment)."""
        b, n, samples = wav.shape
        wav = wav.to(self.device, non_blocking=True).transpose(0, 1).reshape(n * b, samples)
        return self.features(wav, step, micro, spec=spec, dither_tag=10 + 2 * view, spec_tag=11 + 2 * view)

    def before_optimizer_step(self, module: nn.Module, stage_step: int) -> None:
        """DINO: no update of the last layer during the first `freeze_last_layer_epochs` epochs of a stage."""
        s = self.ssl
        if s.method == "dino" and stage_step < s.freeze_last_layer_epochs * self._steps_per_epoch:
            for p in module.student.head.last_layer.parameters():
                p.grad = None

    def after_optimizer_step(self, module: nn.Module, stage: Stage, stage_step: int, total_steps: int) -> None:
        """EMA update of the teacher with this step's momentum."""
        s = self.ssl
        ema_update(
            module.teacher,
            module.student,
            ema_momentum(stage_step, total_steps, s.teacher_momentum, s.teacher_momentum_end),
        )

    # ------------------------------------------------------------------------------------------------ outputs
    def finish(self, module: nn.Module) -> Path:
        """Write the TEACHER backbone as the run's model file (what `extract` and `verify` use)."""
        out = self.exp / "model.safetensors"
        if self.env.is_main:
            save_embedding_model(
                out,
                module.teacher.backbone,
                self.cfg.model.name,
                dict(self.cfg.model.args),
                features=self.feature_spec.to_meta(),
                extra_meta={"ssl": {"method": self.ssl.method, "part": "teacher"}, "config": to_dict(self.cfg)},
            )
            log.info("teacher backbone written to %s", out)
        return out
