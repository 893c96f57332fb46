"""What a training run trains, as the engine sees it: the `Task` interface.

The engine (`speakerforge.train.engine`) owns the loop; a task supplies the data (sources, dataset, collate; the
engine builds the sampler from the sources), the module, the loss of one micro-batch as `(loss, terms)`, the
per-step schedules other than the LR, the freeze rules, and the model file written at the end. The speaker task
(`Trainer`), SSL pretraining (`PretrainTrainer`) and ASR training (`AsrTrainer`) implement it; each implements only
what it has (the speaker task's labels or fbank features are not the ASR task's to switch off).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from speakerforge.atomic import atomic_write_text
from speakerforge.config import Config
from speakerforge.data.features import FeatureSpec
from speakerforge.errors import ConfigError, SpeakerforgeError
from speakerforge.train import freezing
from speakerforge.train.distributed import DistEnv, broadcast_object
from speakerforge.train.stages import Stage

log = logging.getLogger(__name__)

# (loss tensor, terms): `terms` are floats for the log (loss terms, schedules the loss used...), averaged over the
# micro-batches of a step; the two reserved keys `correct` and `count` are summed over micro-batches and ranks into
# the step's `acc`.
LossResult = tuple[torch.Tensor, dict[str, float]]


class Task:
    """A kind of training (see the module docstring). The run context below is set by the engine that runs it
    (`Engine.__init__`) before any hook is called."""

    reads_ssl_section = False  # the `ssl:` section belongs to `pretrain`; elsewhere it would be ignored silently
    # config keys (dotted; `stages.KEY`: any stage's) this task never reads: set to anything but their default, they
    # are an error naming the task, not a setting silently ignored
    unread_keys: tuple[str, ...] = ("asr",)
    cfg: Config
    opts: Any  # the engine's RunOptions
    device: torch.device
    env: DistEnv
    stages: list[Stage]
    exp: Path
    # data, from `load_stage_sources` and `check_batch_size`
    sources: list
    stage_sources: list[list[int]]
    micro_batch: int
    collate: Callable[[list], Any]

    # ------------------------------------------------------------------------------------------------ data
    def check_reads(self, cfg: Config, command: str) -> None:
        """ConfigError for a section or key this task would silently ignore (`ssl:` outside pretrain,
        `unread_keys`)."""
        from speakerforge.config.parse import check_unread_keys

        if cfg.ssl and not self.reads_ssl_section:
            raise ConfigError(
                f"the config has an ssl: section ({', '.join(sorted(cfg.ssl))}), which only "
                f"`speakerforge pretrain` reads; `{command}` would ignore it. Run pretrain, or remove "
                "the ssl: section"
            )
        check_unread_keys(cfg, self.unread_keys, command)

    def build_data(self) -> None:
        """Read the sources of every stage (`load_stage_sources`), check the batch size, build labels/vocabulary."""
        raise NotImplementedError

    def make_dataset(self, stage: Stage, augment: Callable | None) -> torch.utils.data.Dataset:
        """The dataset of a stage, read through `(epoch, draw)` keys from the engine's sampler."""
        raise NotImplementedError

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

    # ------------------------------------------------------------------------------------------------ module, loss
    def build_module(self) -> nn.Module:
        """The module to train, on `self.device` (seeded: the same weights on every rank and every resume)."""
        raise NotImplementedError

    def compute_loss(self, train_module: nn.Module, batch: dict[str, Any], stage_step: int, micro: int) -> LossResult:
        """`(loss, terms)` of one micro-batch (see `LossResult`)."""
        raise NotImplementedError

    def recoverables(self) -> dict[str, Any]:
        """State of the task outside the module (objects with `state_dict`/`load_state_dict`) that checkpoints must
        hold, by checkpoint key; restored right after the module's weights."""
        return {}

    # ------------------------------------------------------------------------------------------------ schedules
    def schedule(self, module: nn.Module, stage: Stage, stage_step: int, steps_per_epoch: int) -> dict[str, float]:
        """Apply per-step schedules other than the LR (a pure function of the stage step); returns them for the log."""
        return {}

    def before_optimizer_step(self, module: nn.Module, stage_step: int) -> None:
        """Called after backward, before clipping and the step (DINO drops its last layer's gradient here)."""

    def after_optimizer_step(self, module: nn.Module, stage: Stage, stage_step: int, total_steps: int) -> None:
        """Called after every optimizer step (an EMA teacher updates here)."""

    # ------------------------------------------------------------------------------------------------ freezing
    def apply_freeze(self, module: nn.Module, stage: Stage) -> freezing.FreezeReport:
        """Freeze this stage's patterns; the report is the frozen/trainable table the engine logs."""
        return freezing.apply_freeze(
            module, freezing.parse_freeze_patterns(stage.freeze), freeze_bn=self.cfg.train.freeze_bn
        )

    def param_overrides(self, stage: Stage) -> dict[str, dict[str, Any]]:
        """Optimizer options per parameter pattern (SDPN: the prototypes' own weight decay)."""
        return {}

    def integrity_ignore(self, stage: Stage) -> list[str]:
        """Parameters the update-integrity check may skip at this stage."""
        return []

    # ------------------------------------------------------------------------------------------------ output
    def finish(self, module: nn.Module) -> Path:
        """Write the finished model file (main process) and return its path."""
        raise NotImplementedError


class CropTask(Task):
    """A task that reads fixed-length crops as batched fbank (the speaker and SSL tasks)."""

    @cached_property
    def feature_spec(self) -> FeatureSpec:
        """What the model reads, and its model file says (built once per run)."""
        return FeatureSpec.from_config(self.cfg.features)

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


def step_seed(seed: int, step: int, micro: int, rank: int, what: int) -> int:
    """The seed of one draw (dither, SpecAugment) of (step, micro-batch, rank): never the global RNG's state."""
    return (seed * 1_000_003 + step * 101 + micro * 7 + rank * 100_003 + what) % (2**63 - 1)
