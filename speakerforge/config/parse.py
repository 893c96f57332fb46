"""From raw YAML data to a typed config: building the dataclasses with every key and type checked ("did you
mean"), dotted `--set` overrides applied to the raw mapping, and the declared ranges and choices checked."""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Sequence
from typing import Any, Union

from speakerforge.config.schema import Config, Range
from speakerforge.config.yamlfile import bounded_yaml
from speakerforge.errors import ConfigError

# `--set` keys of more parts than this are refused before the schema is walked.
MAX_KEY_PARTS = 32


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


def check_unread_keys(cfg: Any, keys: Sequence[str], command: str) -> None:
    """ConfigError naming the first of `keys` (dotted; `stages.KEY`: that key of any stage) that `cfg` sets away
    from its default: `speakerforge COMMAND` does not read it and would silently ignore it."""
    default = type(cfg)()
    for key in keys:
        parts = key.split(".")
        hit = None
        if parts[0] == "stages":
            hit = next(
                (f"stages.{i}.{parts[1]}" for i, st in enumerate(cfg.stages) if getattr(st, parts[1]) is not None), None
            )
        else:
            mine, theirs = cfg, default
            for part in parts:
                mine, theirs = getattr(mine, part), getattr(theirs, part)
            hit = key if mine != theirs else None
        if hit is not None:
            shown = command.replace("-", " ")
            raise ConfigError(f"config: {hit} is not read by `speakerforge {shown}`, which would ignore it; remove it")
