"""Name -> constructor. Every model in the toolkit is built from a config through `build_model`."""

from __future__ import annotations

import difflib
import importlib
from typing import Any, Callable

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
    try:
        return _REGISTRY[name](**kwargs)
    except TypeError as exc:
        raise ConfigError(f"model {name!r}: {exc}") from None
