"""The configuration schema: one dataclass per section, each number with its declared range and each choice with
its options, so that the schema is the one place a setting and its valid values are written down."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from speakerforge.errors import ConfigError


# --------------------------------------------------------------------------------------------------------------
# Declared ranges: every number of the schema is finite, and a field may declare its range (or its choices) next to
# itself; `check_values` checks them all at load. Outside its range a value fails deep inside (a negative LR in the
# optimizer, a zero speed in the resampler) or silently ruins the run (inf LR writes a NaN model).
@dataclass(frozen=True)
class Range:
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # True: low itself is excluded
    high_open: bool = False

    def holds(self, value: float) -> bool:
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return not (self.high is not None and (value > self.high or (self.high_open and value == self.high)))

    def describe(self) -> str:
        lo = None if self.low is None else f"{'>' if self.low_open else '>='} {self.low:g}"
        hi = None if self.high is None else f"{'<' if self.high_open else '<='} {self.high:g}"
        return " and ".join(x for x in (lo, hi) if x) or "finite"


def num(
    default: Any = None,
    low: float | None = None,
    high: float | None = None,
    *,
    above: bool = False,
    below: bool = False,
    factory: Any = None,
) -> Any:
    """A numeric field (or list / mapping of numbers) with its declared range; `above`/`below` exclude the bounds."""
    meta = {"range": Range(low, high, above, below)}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def choice(default: str | None, *options: str, pattern: str | None = None) -> Any:
    """A string field that must be one of `options` (or match `pattern`)."""
    return field(default=default, metadata={"choices": options, "pattern": pattern})


# --------------------------------------------------------------------------------------------------------------
# Schema
@dataclass
class ModelConfig:
    name: str = "ecapa_tdnn"
    args: dict[str, Any] = field(default_factory=dict)  # passed to models.build_model(name, **args)


@dataclass
class FeatureConfig:
    num_mel_bins: int = num(80, 1, 512)
    frame_length: float = num(25.0, 0, 1000, above=True)  # ms
    frame_shift: float = num(10.0, 0, 1000, above=True)  # ms
    dither: float = num(0.0, 0)  # training-time dither; extraction always uses 0
    mean_norm: bool = True
    kind: str = choice("kaldi", "kaldi", "tfmel")  # Kaldi fbank, or WeSpeaker's TF-style log mel (ReDimNet2)
    var_norm: bool = False  # also divide by each bin's std over the utterance (W2V-BERT 2.0's features)


@dataclass
class SourceConfig:
    path: str = ""
    weight: float = num(1.0, 0, above=True)
    name: str = ""  # speaker namespace; defaults to the manifest's name (its folder's for manifest.jsonl etc.)

    @classmethod
    def from_spec(cls, spec: str) -> SourceConfig:
        """`--data` item: `PATH`, `PATH:NAME` or `PATH:NAME:WEIGHT` (`PATH::WEIGHT` keeps the default name).

        An existing path is taken whole, so a path that contains a colon still works."""
        if Path(spec).exists() or ":" not in spec:
            return cls(path=spec)
        path, _, rest = spec.partition(":")
        name, _, weight_text = rest.partition(":")
        weight = 1.0
        if weight_text:
            try:
                weight = float(weight_text)
            except ValueError:
                raise ConfigError(f"--data {spec}: weight {weight_text!r} is not a number (PATH:NAME:WEIGHT)") from None
            if not (math.isfinite(weight) and weight > 0):
                raise ConfigError(f"--data {spec}: weight must be a finite number > 0 (PATH:NAME:WEIGHT)")
        if name and not all(c.isalnum() or c in "-_." for c in name):
            raise ConfigError(f"--data {spec}: source name {name!r} may hold letters, digits, '-', '_' and '.' only")
        return cls(path=path, weight=weight, name=name)


@dataclass
class SpecAugmentConfig:
    prob: float = num(0.0, 0, 1)
    num_freq_masks: int = num(1, 0, 100)
    max_freq_width: int = num(8, 0)
    num_time_masks: int = num(1, 0, 100)
    max_time_width: int = num(10, 0)


@dataclass
class AugmentConfig:
    """Waveform augmentation (`speakerforge.data.augment.Augmenter` reads this section as it is)."""

    noise_dir: str | None = None
    rir_dir: str | None = None
    # exclusive per-utterance choices (3D-Speaker's aug_prob 0.6 = 0.2 each); used only when a folder is set
    noise_prob: float = num(0.2, 0, 1)
    reverb_prob: float = num(0.2, 0, 1)
    both_prob: float = num(0.2, 0, 1)
    # SNR ranges in dB, [low, high], by MUSAN category (speech: each babble talker), and babble's talker count
    noise_snr: list[float] = num(low=-30, high=60, factory=lambda: [0.0, 15.0])
    music_snr: list[float] = num(low=-30, high=60, factory=lambda: [5.0, 15.0])
    babble_snr: list[float] = num(low=-30, high=60, factory=lambda: [13.0, 20.0])
    babble_speakers: list[int] = num(low=1, high=64, factory=lambda: [3, 7])
    cache_size: int = num(64, 0)  # decoded noise / RIR files kept in memory per process
    spec_augment: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)

    @property
    def enabled(self) -> bool:
        """Whether waveform augmentation (noise / reverb) can happen at all."""
        return bool(self.noise_dir or self.rir_dir)


@dataclass
class DataConfig:
    sources: list[SourceConfig] = field(default_factory=list)
    shared_speakers: bool = False  # same speaker name in two sources = one class
    crop_seconds: float = num(3.0, 0, 600, above=True)
    min_seconds: float = num(0.5, 0, 600)  # shorter utterances are padded by repetition
    batch_size: int = num(32, 1, 1_000_000)
    num_workers: int = num(0, 0, 1024)
    samples_per_epoch: int = num(0, 0)  # 0: the sum of the sources' sizes
    speed_perturb: list[float] = num(low=0.25, high=4.0, factory=lambda: [1.0])  # each non-1 speed: new speakers
    skip_bad_audio: bool = False
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class HeadConfig:
    kind: str = choice("aam", "aam", "am")
    scale: float = num(32.0, 0, 1000, above=True)
    subcenters: int = num(1, 1, 100)
    easy_margin: bool = False


@dataclass
class MarginConfig:
    initial: float = num(0.0, 0, 1)
    final: float = num(0.2, 0, 1)
    start_epoch: float = num(0.0, 0)  # margin held at `initial` before, raised until end_epoch
    end_epoch: float = num(0.0, 0)
    kind: str = choice("linear", "linear", "exponential")


@dataclass
class OptimConfig:
    optimizer: str = choice("sgd", "sgd", "adamw")
    lr: float = num(0.1, 0, 1000, above=True)
    min_lr: float = num(1e-4, 0, 1000)
    warmup_epochs: float = num(0.0, 0)
    weight_decay: float = num(1e-4, 0, 10)
    momentum: float = num(0.9, 0, 1, below=True)
    nesterov: bool = True
    betas: list[float] = num(low=0, high=1, below=True, factory=lambda: [0.9, 0.999])
    lr_mult: dict[str, float] = num(low=0, high=1000, factory=dict)  # parameter prefix -> LR multiplier
    scale_lr_with_world_size: bool = False


@dataclass
class StageConfig:
    """One stage of a staged schedule; unset (None) fields inherit from the top-level config."""

    name: str = ""
    epochs: int = num(1, 1)
    freeze: list[str] = field(default_factory=list)
    lr: float | None = num(None, 0, 1000, above=True)
    min_lr: float | None = num(None, 0, 1000)
    warmup_epochs: float | None = num(None, 0)
    lr_mult: dict[str, float] | None = num(None, 0, 1000)
    margin: MarginConfig | None = None
    crop_seconds: float | None = num(None, 0, 600, above=True)
    speed_perturb: list[float] | None = num(None, 0.25, 4.0)
    sources: list[SourceConfig] | None = None


@dataclass
class TrainConfig:
    epochs: int = num(10, 1)
    seed: int = num(1234, 0, 2**63 - 1)
    grad_clip: float = num(5.0, 0)  # 0: no clipping
    grad_accum: int = num(1, 1, 100_000)
    amp: str = choice("none", "none", "bf16", "fp16")
    device: str = choice("auto", "auto", "cpu", "cuda", pattern=r"cuda:\d+")
    threads: int = num(0, 0, 4096)  # torch intra-op threads on CPU; 0 = leave torch's default
    save_every_steps: int = num(0, 0)  # 0: at the end of every epoch only
    keep_last: int = num(3, 1)
    log_every: int = num(10, 1)
    max_nonfinite_steps: int = num(5, 1)  # stop after this many non-finite losses in a row
    freeze: list[str] = field(default_factory=list)
    freeze_bn: bool = True
    allow_dead_params: bool = False
    integrity_check: bool = True


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    data: DataConfig = field(default_factory=DataConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    margin: MarginConfig = field(default_factory=MarginConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    stages: list[StageConfig] = field(default_factory=list)
    ssl: dict[str, Any] = field(default_factory=dict)  # method-specific settings, validated by the SSL objective
    asr: dict[str, Any] = field(default_factory=dict)  # ASR settings, validated by speakerforge.asr.trainer
