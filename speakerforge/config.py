"""One typed configuration schema for every command, loaded from YAML with dotted `--set` overrides.

Unknown keys and wrong types are errors that name the dotted key and suggest the nearest valid one: a typo in a
config (3D-Speaker's `speed_pertub`) must never be silently ignored.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from speakerforge.errors import ConfigError


# --------------------------------------------------------------------------------------------------------------
# Schema
@dataclass
class ModelConfig:
    name: str = "ecapa_tdnn"
    args: dict[str, Any] = field(default_factory=dict)  # passed to models.build_model(name, **args)


@dataclass
class FeatureConfig:
    num_mel_bins: int = 80
    frame_length: float = 25.0
    frame_shift: float = 10.0
    dither: float = 0.0  # training-time dither; extraction always uses 0
    mean_norm: bool = True


@dataclass
class SourceConfig:
    path: str = ""
    weight: float = 1.0
    name: str = ""  # speaker namespace; defaults to the manifest's file stem


@dataclass
class SpecAugmentConfig:
    prob: float = 0.0
    num_freq_masks: int = 1
    max_freq_width: int = 8
    num_time_masks: int = 1
    max_time_width: int = 10


@dataclass
class AugmentConfig:
    noise_dir: str | None = None
    rir_dir: str | None = None
    # exclusive per-utterance choices (3D-Speaker's aug_prob 0.6 = 0.2 each); used only when a folder is set
    noise_prob: float = 0.2
    reverb_prob: float = 0.2
    both_prob: float = 0.2
    spec_augment: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)


@dataclass
class DataConfig:
    sources: list[SourceConfig] = field(default_factory=list)
    shared_speakers: bool = False  # same speaker name in two sources = one class
    crop_seconds: float = 3.0
    min_seconds: float = 0.5  # shorter utterances are padded by repetition
    batch_size: int = 32
    num_workers: int = 0
    samples_per_epoch: int = 0  # 0: the sum of the sources' sizes
    speed_perturb: list[float] = field(default_factory=lambda: [1.0])  # each non-1 speed is a new speaker set
    skip_bad_audio: bool = False
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class HeadConfig:
    kind: str = "aam"  # aam | am
    scale: float = 32.0
    subcenters: int = 1
    easy_margin: bool = False


@dataclass
class MarginConfig:
    initial: float = 0.0
    final: float = 0.2
    start_epoch: float = 0.0  # margin held at `initial` before, raised until end_epoch
    end_epoch: float = 0.0
    kind: str = "linear"  # linear | exponential


@dataclass
class OptimConfig:
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.1
    min_lr: float = 1e-4
    warmup_epochs: float = 0.0
    weight_decay: float = 1e-4
    momentum: float = 0.9
    nesterov: bool = True
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    lr_mult: dict[str, float] = field(default_factory=dict)  # parameter prefix -> LR multiplier
    scale_lr_with_world_size: bool = False


@dataclass
class StageConfig:
    """One stage of a staged schedule; unset (None) fields inherit from the top-level config."""

    name: str = ""
    epochs: int = 1
    freeze: list[str] = field(default_factory=list)
    lr: float | None = None
    min_lr: float | None = None
    warmup_epochs: float | None = None
    lr_mult: dict[str, float] | None = None
    margin: MarginConfig | None = None
    crop_seconds: float | None = None
    speed_perturb: list[float] | None = None
    sources: list[SourceConfig] | None = None


@dataclass
class TrainConfig:
    epochs: int = 10
    seed: int = 1234
    grad_clip: float = 5.0
    grad_accum: int = 1
    amp: str = "none"  # none | bf16 | fp16
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # torch intra-op threads on CPU; 0 = leave torch's default
    save_every_steps: int = 0  # 0: at the end of every epoch only
    keep_last: int = 3
    log_every: int = 10
    max_nonfinite_steps: int = 5  # stop after this many non-finite losses in a row
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


# --------------------------------------------------------------------------------------------------------------
# Loading
def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """YAML file (or defaults) -> validated `Config`, then `key=value` overrides applied in order."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if p.is_dir():
            raise ConfigError(f"{path}: is a directory; expected a YAML config file")
        if not p.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not UTF-8 text; expected a YAML config file") from None
        except yaml.YAMLError as exc:
            raise ConfigError(_yaml_error(path, exc)) from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections (model, data, train, ...)")
    for item in overrides or []:
        _apply_override(raw, item)
    cfg = from_dict(Config, raw, where=str(path) if path else "config")
    check_values(cfg, where=str(path) if path else "config")
    return cfg


# Numbers that have a valid range: outside it, training fails deep inside (a negative LR in the optimizer, a
# zero-length crop in a convolution) or silently does nothing (0 epochs writes an untrained model).
_AT_LEAST: dict[str, float] = {
    "train.epochs": 1,
    "train.grad_accum": 1,
    "train.keep_last": 1,
    "train.log_every": 1,
    "train.max_nonfinite_steps": 1,
    "data.batch_size": 1,
    "features.num_mel_bins": 1,
    "head.subcenters": 1,
    "train.grad_clip": 0,
    "train.threads": 0,
    "train.save_every_steps": 0,
    "data.min_seconds": 0,
    "data.num_workers": 0,
    "data.samples_per_epoch": 0,
    "optim.min_lr": 0,
    "optim.warmup_epochs": 0,
    "optim.weight_decay": 0,
    "margin.start_epoch": 0,
    "margin.end_epoch": 0,
}
_ABOVE_ZERO = ("optim.lr", "data.crop_seconds", "features.frame_length", "features.frame_shift", "head.scale")
_STAGE_AT_LEAST = {"epochs": 1, "min_lr": 0, "warmup_epochs": 0}
_STAGE_ABOVE_ZERO = ("lr", "crop_seconds")


def check_values(cfg: Config, where: str = "config") -> None:
    """ConfigError for a number outside its range (e.g. `train.epochs` 0, a negative `optim.lr`), naming the key."""

    def get(obj: Any, dotted: str) -> Any:
        for part in dotted.split("."):
            obj = getattr(obj, part)
        return obj

    def check(key: str, value: Any, low: float, strict: bool) -> None:
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            return
        if value < low or (strict and value == low) or value != value:
            bound = f"> {low:g}" if strict else f">= {low:g}"
            raise ConfigError(f"{where}: {key} must be {bound}, got {value!r}")

    for key, low in _AT_LEAST.items():
        check(key, get(cfg, key), low, strict=False)
    for key in _ABOVE_ZERO:
        check(key, get(cfg, key), 0, strict=True)
    for i, stage in enumerate(cfg.stages):
        for name, low in _STAGE_AT_LEAST.items():
            check(f"stages[{i}].{name}", getattr(stage, name), low, strict=False)
        for name in _STAGE_ABOVE_ZERO:
            check(f"stages[{i}].{name}", getattr(stage, name), 0, strict=True)
    for i, src in enumerate(cfg.data.sources):
        check(f"data.sources[{i}].weight", src.weight, 0, strict=True)


def _yaml_error(path: str | Path, exc: yaml.YAMLError) -> str:
    """One line, `file:line:column: invalid YAML (problem)`, from PyYAML's multi-line message."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    at = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    what = ": ".join(str(x) for x in (getattr(exc, "context", None), getattr(exc, "problem", None)) if x)
    return f"{at}: invalid YAML ({what or str(exc).splitlines()[0]})"


def _apply_override(raw: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. optim.lr=0.01")
    key, _, text = item.partition("=")
    keys = key.strip().split(".")
    _check_path_exists(keys)
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    node = raw
    for k in keys[:-1]:
        nxt = node.get(k)
        if not isinstance(nxt, dict):
            nxt = {}
            node[k] = nxt
        node = nxt
    node[keys[-1]] = value


def _check_path_exists(keys: list[str]) -> None:
    """`--set` of a key the schema does not have is an error, with a suggestion."""
    cls: Any = Config
    for i, k in enumerate(keys):
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            return  # inside a free-form dict (model.args, ssl, lr_mult): anything goes
        names = {f.name: f for f in dataclasses.fields(cls)}
        if k not in names:
            dotted = ".".join(keys[: i + 1])
            raise ConfigError(f"--set {'.'.join(keys)}: unknown key {dotted!r}{_suggest(k, names, keys[:i])}")
        cls = _unwrap_optional(_type_hints(cls)[k])


def from_dict(cls: type, raw: Any, where: str = "config", prefix: str = "") -> Any:
    """Build dataclass `cls` from a mapping, checking every key and type."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: {prefix or 'top level'} must be a mapping, got {type(raw).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    hints = _type_hints(cls)
    kwargs = {}
    for key, value in raw.items():
        if key not in names:
            dotted = f"{prefix}{key}"
            raise ConfigError(
                f"{where}: unknown key {dotted!r}"
                f"{_suggest(str(key), names, prefix.rstrip('.').split('.') if prefix else [])}"
            )
        kwargs[key] = _coerce(hints[key], value, where, f"{prefix}{key}")
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, where: str, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, where, key)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where, key + ".")
    if origin is list:
        if isinstance(value, (str, int, float)) and args and args[0] is str:
            value = [v.strip() for v in str(value).split(",") if v.strip()]  # FunASR-style "a,b"
        if isinstance(value, (int, float)) and args and args[0] in (int, float):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: {key} must be a list, got {value!r}")
        return [_coerce(args[0], v, where, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {key} must be a mapping, got {value!r}")
        return {str(k): _coerce(args[1], v, where, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: {key} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: {key} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: {key} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: {key} must be a string, got {value!r}")
    return value


def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return inner[0] if inner else tp
    if typing.get_origin(tp) is list:
        return typing.get_args(tp)[0]
    return tp


def _suggest(key: str, names: Any, parents: list[str]) -> str:
    near = difflib.get_close_matches(key, list(names), n=3, cutoff=0.5)
    base = ".".join(p for p in parents if p)
    full = [f"{base}.{n}" if base else n for n in near]
    if full:
        return f"; did you mean {' or '.join(repr(n) for n in full)}?"
    return f"; valid keys here: {', '.join(sorted(names))}"


# --------------------------------------------------------------------------------------------------------------
# Writing and comparing
def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (for YAML and for comparing configs)."""
    return dataclasses.asdict(cfg)


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None)


def config_diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Human-readable differences between two resolved configs, one `key: old -> new` per line."""
    out: list[str] = []
    for k in sorted(set(old) | set(new), key=str):
        a, b = old.get(k, "<absent>"), new.get(k, "<absent>")
        key = f"{prefix}{k}"
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(config_diff(a, b, key + "."))
        elif a != b:
            out.append(f"{key}: {a!r} -> {b!r}")
    return out
