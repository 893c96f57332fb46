"""One typed configuration schema for every command, loaded from YAML with dotted `--set` overrides.

Unknown keys and wrong types are errors that name the dotted key and suggest the nearest valid one: a typo in a
config (3D-Speaker's `speed_pertub`) must never be silently ignored.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

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
            raw = bounded_yaml(p.read_text(encoding="utf-8"), str(path)) or {}
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not UTF-8 text; expected a YAML config file") from None
        except yaml.YAMLError as exc:
            raise ConfigError(_yaml_error(path, exc)) from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections (model, data, train, ...)")
    for item in overrides or []:
        apply_override(raw, item)
    cfg = from_dict(Config, raw, where=str(path) if path else "config")
    check_values(cfg, where=str(path) if path else "config")
    return cfg


def check_values(cfg: Any, where: str = "config", prefix: str = "") -> None:
    """ConfigError for a value outside its declared range or choices (`train.epochs` 0, a negative `optim.lr`,
    `optim.lr: inf`, `train.device: foo`), naming the key; every number must be finite."""
    for f in dataclasses.fields(cfg):
        key, value = f"{prefix}{f.name}", getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            check_values(value, where, key + ".")
        elif isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
            for i, item in enumerate(value):
                check_values(item, where, f"{key}[{i}].")
        elif isinstance(value, str) and (f.metadata.get("choices") or f.metadata.get("pattern")):
            _check_choice(where, key, value, f.metadata["choices"], f.metadata.get("pattern"))
        else:
            _check_numbers(where, key, value, f.metadata.get("range", Range()))


def _check_numbers(where: str, key: str, value: Any, rng: Range) -> None:
    items: list[tuple[str, Any]] = [(key, value)]
    if isinstance(value, list):
        items = [(f"{key}[{i}]", v) for i, v in enumerate(value)]
    elif isinstance(value, dict):
        items = [(f"{key}.{k}", v) for k, v in value.items()]
    for name, v in items:
        if v is None or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if not math.isfinite(v) or not rng.holds(v):
            what = rng.describe()
            if not math.isfinite(v):
                what = "a finite number" + ("" if what == "finite" else f" {what}")
            raise ConfigError(f"{where}: {name} must be {what}, got {v!r}")


def _check_choice(where: str, key: str, value: str, options: tuple[str, ...], pattern: str | None) -> None:
    import re

    if value in options or (pattern is not None and re.fullmatch(pattern, value)):
        return
    near = difflib.get_close_matches(value, options, n=1)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    also = f" or {pattern.replace(chr(92) + 'd+', 'N')}" if pattern else ""
    raise ConfigError(f"{where}: {key} must be one of {', '.join(options)}{also}, got {value!r}{hint}")


# A config is small: these bounds stop an alias bomb (a 540-byte file that expands to billions of values) and deep
# nesting (a RecursionError) at load time, before anything walks the document.
MAX_YAML_DEPTH = 64
MAX_YAML_VALUES = 200_000
MAX_KEY_PARTS = 32


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with a nesting limit (its composer recurses once per level)."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                mark = self.peek_event().start_mark
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_YAML_DEPTH} levels", mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def bounded_yaml(text: str, where: str) -> Any:
    """`yaml.safe_load` with bounded nesting and alias expansion; ConfigError (`file:line:col`) otherwise."""
    try:
        loader = _BoundedLoader(text)
        try:
            data = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_error(where, exc)) from None
    except RecursionError:
        raise ConfigError(f"{where}: invalid YAML (nested too deeply)") from None
    _count_values(data, where)
    return data


def _count_values(data: Any, where: str) -> None:
    """Values the document holds once aliases are expanded (shared objects counted at every use), without
    expanding them; more than MAX_YAML_VALUES is refused."""
    count, stack = 0, [(data, 0)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_YAML_VALUES or depth > MAX_YAML_DEPTH:
            what = f"more than {MAX_YAML_VALUES} values" if count > MAX_YAML_VALUES else "nesting too deep"
            raise ConfigError(f"{where}: refused: the YAML expands to {what} (YAML aliases?)")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
            count += len(node)
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)


def _yaml_error(path: str | Path, exc: yaml.YAMLError) -> str:
    """One line, `file:line:column: invalid YAML (problem)`, from PyYAML's multi-line message."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    at = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    what = ": ".join(str(x) for x in (getattr(exc, "context", None), getattr(exc, "problem", None)) if x)
    return f"{at}: invalid YAML ({what or str(exc).splitlines()[0]})"


def apply_override(raw: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. optim.lr=0.01")
    key, _, text = item.partition("=")
    keys = key.strip().split(".")
    if len(keys) > MAX_KEY_PARTS:
        raise ConfigError(f"--set {key[:60]}...: a key of {len(keys)} parts; at most {MAX_KEY_PARTS}")
    _check_path_exists(keys)
    try:
        value = bounded_yaml(text, f"--set {key}") if text.strip() else ""
    except ConfigError as exc:
        if "refused" in str(exc) or "deep" in str(exc):
            raise
        value = text
    node: Any = raw
    for i, k in enumerate(keys[:-1]):
        if isinstance(node, list):
            node = _list_item(node, k, keys[:i])
            continue
        nxt = node.get(k)
        if isinstance(nxt, list) or (nxt is None and keys[i + 1].isdigit()):
            node = nxt or []  # a list of sections: the next key picks an item (`stages.0`, `stages.finetune`)
            continue
        if not isinstance(nxt, dict):
            nxt = {}
            node[k] = nxt
        node = nxt
    if isinstance(node, list):
        where = ".".join(keys[:-1])
        raise ConfigError(
            f"--set {key}: {where} is a list; pick an item by index (from 0) or name, e.g. {where}.0.{keys[-1]}=..."
        )
    node[keys[-1]] = value


def _list_item(items: list[Any], k: str, parents: list[str]) -> dict[str, Any]:
    """`stages.1` (index from 0) or `stages.finetune` (an item's `name`) in a `--set` key."""
    where = ".".join(parents)
    names = [str(it.get("name")) for it in items if isinstance(it, dict) and it.get("name")]
    choices = f"0..{len(items) - 1}" + (f" or a name: {', '.join(names)}" if names else "")
    if not items:
        raise ConfigError(f"--set {where}.{k}...: the config has no {where}; define them in the config file first")
    if k.isdigit():
        if int(k) >= len(items):
            raise ConfigError(f"--set {where}.{k}...: the config has {len(items)} {where} ({choices})")
        item = items[int(k)]
    else:
        found = [it for it in items if isinstance(it, dict) and it.get("name") == k]
        if not found:
            raise ConfigError(f"--set {where}.{k}...: no item of {where} is named {k!r} ({choices})")
        item = found[0]
    if not isinstance(item, dict):
        raise ConfigError(f"--set {where}.{k}...: that item is not a mapping")
    return item


def _check_path_exists(keys: list[str]) -> None:
    """`--set` of a key the schema does not have is an error, with a suggestion."""
    cls: Any = Config
    skip_item = False
    for i, k in enumerate(keys):
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            return  # inside a free-form dict (model.args, ssl, lr_mult): anything goes
        if skip_item:  # the index or name of an item of a list of sections (`stages.0`, `stages.finetune`)
            skip_item = False
            continue
        names = {f.name: f for f in dataclasses.fields(cls)}
        if k not in names:
            dotted = ".".join(keys[: i + 1])
            raise ConfigError(f"--set {'.'.join(keys)}: unknown key {dotted!r}{_suggest(k, names, keys[:i])}")
        hint = _type_hints(cls)[k]
        cls = _unwrap_optional(hint)
        skip_item = typing.get_origin(_unwrap_none(hint)) is list and dataclasses.is_dataclass(cls)
        if skip_item and i + 2 == len(keys) and not keys[-1].isdigit():  # `stages.epochs`: no item named
            where = ".".join(keys[: i + 1])
            raise ConfigError(
                f"--set {'.'.join(keys)}: {where} is a list; pick an item by index (from 0) or name, e.g. "
                f"{where}.0.{keys[-1]}=..."
            )


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
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
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


def _unwrap_none(tp: Any) -> Any:
    """`X | None` -> X (lists kept as lists)."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return inner[0] if inner else tp
    return tp


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


def config_diff(
    old: dict[str, Any], new: dict[str, Any], prefix: str = "", defaults: dict[str, Any] | None = None
) -> list[str]:
    """Human-readable differences between two resolved configs, one `key: old -> new` per line.

    With `defaults` (the resolved default config), a key the old config lacks and the new one holds at its default
    is no difference: a newer speakerforge added that setting, and the run it resumes behaved like the default."""
    out: list[str] = []
    defaults = defaults or {}
    for k in sorted(set(old) | set(new), key=str):
        a, b = old.get(k, "<absent>"), new.get(k, "<absent>")
        key = f"{prefix}{k}"
        default = defaults.get(k) if isinstance(defaults, dict) else None
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(config_diff(a, b, key + ".", default if isinstance(default, dict) else None))
        elif a == "<absent>" and k in defaults and b == default:
            continue
        elif a != b:
            out.append(f"{key}: {a!r} -> {b!r}")
    return out
