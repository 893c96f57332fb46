"""One typed configuration schema for every command, loaded from YAML with dotted `--set` overrides.

Unknown keys and wrong types are errors that name the dotted key and suggest the nearest valid one: a typo in a
config (3D-Speaker's `speed_pertub`) must never be silently ignored.

The package's modules: `schema` (the dataclasses and their declared ranges), `yamlfile` (bounded YAML reading) and
`parse` (typed building, `--set` overrides, range checks); this module loads, writes and compares configs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from speakerforge.config.parse import apply_override, check_values, from_dict
from speakerforge.config.schema import (
    AugmentConfig,
    Config,
    DataConfig,
    FeatureConfig,
    HeadConfig,
    MarginConfig,
    ModelConfig,
    OptimConfig,
    Range,
    SourceConfig,
    SpecAugmentConfig,
    StageConfig,
    TrainConfig,
)
from speakerforge.config.yamlfile import bounded_yaml, read_yaml_file
from speakerforge.errors import ConfigError

__all__ = [
    "AugmentConfig",
    "Config",
    "DataConfig",
    "FeatureConfig",
    "HeadConfig",
    "MarginConfig",
    "ModelConfig",
    "OptimConfig",
    "Range",
    "SourceConfig",
    "SpecAugmentConfig",
    "StageConfig",
    "TrainConfig",
    "apply_override",
    "bounded_yaml",
    "check_values",
    "config_diff",
    "dump_config",
    "from_dict",
    "load_config",
    "to_dict",
]


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """YAML file (or defaults) -> validated `Config`, then `key=value` overrides applied in order."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = read_yaml_file(path) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections (model, data, train, ...)")
    for item in overrides or []:
        apply_override(raw, item)
    cfg = from_dict(Config, raw, where=str(path) if path else "config")
    check_values(cfg, where=str(path) if path else "config")
    return cfg


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
