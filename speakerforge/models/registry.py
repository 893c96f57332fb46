"""Name -> constructor. Every model in the toolkit is built from a config through `build_model`."""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable
from typing import Any

import torch.nn as nn

from speakerforge.errors import ConfigError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}

# Families live in their own modules; importing them registers their names. Listed here so that
# `build_model` works without the caller importing the family module first.
_FAMILY_MODULES = (
    "speakerforge.models.ecapa",
    "speakerforge.models.campplus",
    "speakerforge.models.eres2net",
    "speakerforge.models.resnet",
    "speakerforge.models.dfresnet",
    "speakerforge.models.redimnet",
    "speakerforge.models.w2vbert",
)


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: make a constructor (class or function) available to `build_model(name, ...)`."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"model name {name!r} registered twice")
        _REGISTRY[name] = fn
        return fn

    return deco


def _load_families() -> None:
    for mod in _FAMILY_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:  # a real missing dependency inside the family module
                raise


def list_models() -> list[str]:
    """Registered model names."""
    _load_families()
    return sorted(_REGISTRY)


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered embedding model; unknown names and arguments are errors that suggest the right one."""
    _load_families()
    if name not in _REGISTRY:
        near = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f"; did you mean {', '.join(near)}?" if near else f"; known: {', '.join(sorted(_REGISTRY))}"
        raise ConfigError(f"unknown model {name!r}{hint}")
    kwargs = _checked_args(name, _REGISTRY[name], kwargs)
    try:
        return _REGISTRY[name](**kwargs)
    except TypeError as exc:
        raise ConfigError(f"model {name!r}: {exc}") from None


def _checked_args(name: str, ctor: Callable[..., nn.Module], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Unknown names and values of the wrong kind (text for a number) are ConfigErrors naming `model.args.KEY`;
    otherwise the constructor fails deep inside with a message about string formatting or tensor sizes."""
    try:
        params = inspect.signature(ctor).parameters
    except (TypeError, ValueError):  # no introspectable signature: let the constructor decide
        return kwargs
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        known = [k for k, p in params.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL]
        for key in kwargs:
            if key not in params:
                near = difflib.get_close_matches(key, known, n=2)
                hint = f"did you mean {' or '.join(repr(n) for n in near)}?" if near else f"known: {', '.join(known)}"
                raise ConfigError(f"model.args.{key}: model {name!r} takes no argument {key!r}; {hint}")
    out = dict(kwargs)
    for key, value in kwargs.items():
        default = params[key].default if key in params else None
        if default is None or default is inspect.Parameter.empty:
            continue
        if isinstance(default, bool):
            ok, kind = isinstance(value, bool), "true or false"
        elif isinstance(default, (int, float)):
            if isinstance(value, str) and isinstance(default, float):  # YAML 1.1 reads 1e-3 as text
                try:
                    value = out[key] = float(value)
                except ValueError:
                    pass
            ok, kind = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
        elif isinstance(default, (tuple, list)):
            ok, kind = isinstance(value, (tuple, list)), "a list"
        elif isinstance(default, str):
            ok, kind = isinstance(value, str), "a string"
        else:
            continue
        if not ok:
            raise ConfigError(f"model.args.{key}: model {name!r} needs {kind} (default {default!r}), got {value!r}")
    return out
