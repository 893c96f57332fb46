"""Our model file: one safetensors file holding the embedding network's weights and, in its header, the JSON needed
to rebuild it (registry name, constructor arguments, feature settings). `extract`, `verify`, `export` and
`finetune --init` all read it; `train` writes it at the end, `convert` writes it from 3D-Speaker/WeSpeaker weights.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from speakerforge.artifacts import BACKBONE
from speakerforge.checkpoint_io import load_model_file, save_model_file
from speakerforge.config import FeatureConfig, ModelConfig, check_values, from_dict
from speakerforge.errors import CheckpointError, ConfigError, SpeakerforgeError
from speakerforge.models.registry import build_model

FORMAT = "speakerforge-model-1"


def save_embedding_model(
    path: str | Path,
    backbone: nn.Module,
    name: str,
    args: dict[str, Any],
    features: dict[str, Any] | None = None,
    extra_tensors: dict[str, torch.Tensor] | None = None,
    extra_meta: dict[str, Any] | None = None,
) -> None:
    """Write `backbone` (keys prefixed `backbone.`) plus optional extra tensors (e.g. `classifier.weight`)."""
    state = {BACKBONE + k: v for k, v in backbone.state_dict().items()}
    state.update(extra_tensors or {})
    meta = {
        "format": FORMAT,
        "model": {"name": name, "args": args},
        "features": features or {},
        "embedding_dim": int(getattr(backbone, "embedding_dim", 0) or 0),
    }
    meta.update(extra_meta or {})
    save_model_file(path, state, meta)


def load_embedding_model(path: str | Path) -> tuple[nn.Module, dict[str, Any], dict[str, torch.Tensor]]:
    """Rebuild the backbone from a model file and load its weights strictly: (model in eval mode, meta, extras)."""
    state, meta = load_model_file(path)
    weights = {k[len(BACKBONE) :]: v for k, v in state.items() if k.startswith(BACKBONE)}
    extras = {k: v for k, v in state.items() if not k.startswith(BACKBONE)}
    model, meta = build_embedding_model(weights, meta, str(path))
    return model, meta, extras


def build_embedding_model(weights: dict[str, torch.Tensor], meta: Any, origin: str) -> tuple[nn.Module, dict[str, Any]]:
    """The backbone that `meta` (a model file's metadata) describes, with `weights` loaded strictly, in eval mode.

    The metadata is checked with the config's typed schema and ranges, and the network it describes is first built
    on the meta device (no memory) and compared with the tensors: a header claiming 200,000 channels is refused
    before anything is allocated."""
    meta = check_model_meta(meta, origin)
    spec = meta["model"]
    try:
        check_declared_size(spec["name"], spec["args"], weights, origin)
        model = build_checked_model(spec["name"], spec["args"], where=f"{origin}: metadata model.args")
    except ConfigError as exc:  # e.g. an unknown model name: say which file states it
        raise CheckpointError(str(exc) if origin in str(exc) else f"{origin}: metadata: {exc}") from None
    load_strict(model, weights, origin)
    model.eval()
    return model, meta


def check_model_meta(meta: Any, origin: str) -> dict[str, Any]:
    """The speakerforge metadata of a model file, validated: `model` and `features` with the config's schema and
    ranges, the other known keys by type; CheckpointError naming the file and the key otherwise."""
    if not isinstance(meta, dict):
        raise CheckpointError(f"{origin}: corrupt speakerforge metadata (a {type(meta).__name__}, not a mapping)")
    if meta.get("format") != FORMAT or "model" not in meta:
        raise CheckpointError(f"{origin}: unknown model file format {meta.get('format')!r}")
    out = dict(meta)
    try:
        model = from_dict(ModelConfig, meta["model"], where=f"{origin}: metadata", prefix="model.")
        check_values(model, f"{origin}: metadata", "model.")
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None
    out["model"] = {"name": model.name, "args": model.args}
    out["features"] = check_feature_meta(meta.get("features"), origin)
    check_model_meta_types(out, origin)
    return out


def check_feature_meta(features: Any, origin: str) -> dict[str, Any]:
    """Feature settings stated by a model (file or ONNX), checked like the config's `features:` section."""
    if features is None:
        return {}
    try:
        cfg = from_dict(FeatureConfig, features, where=f"{origin}: metadata", prefix="features.")
        check_values(cfg, f"{origin}: metadata", "features.")
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None
    return {k: getattr(cfg, k) for k in features}


_META_TYPES: dict[str, tuple[type, ...]] = {
    "embedding_dim": (int,),
    "threshold": (int, float),
    "speakers": (list,),
    "speeds": (list,),
    "sub_centers": (int,),
    "with_fbank": (bool,),
    "config": (dict, str),
}


def check_model_meta_types(meta: dict[str, Any], origin: str) -> None:
    """The known keys of model metadata (file or ONNX) by type and range."""
    import math

    for key, types in _META_TYPES.items():
        value = meta.get(key)
        if value is None:
            continue
        if isinstance(value, bool) and bool not in types:
            value = "bool"
        if not isinstance(value, types):
            names = " or ".join(t.__name__ for t in types)
            raise CheckpointError(f"{origin}: metadata {key} must be {names}, got {meta.get(key)!r:.80}")
    dim = meta.get("embedding_dim")
    if dim is not None and not 0 <= dim <= MAX_EMBEDDING_DIM:
        raise CheckpointError(f"{origin}: metadata embedding_dim must be in [0, {MAX_EMBEDDING_DIM}], got {dim}")
    threshold = meta.get("threshold")
    if threshold is not None and not math.isfinite(threshold):
        raise CheckpointError(f"{origin}: metadata threshold must be finite, got {threshold!r}")


MAX_EMBEDDING_DIM = 65536


def build_checked_model(
    name: str, args: dict[str, Any], where: str = "model.args", probe_bins: int | None = None
) -> nn.Module:
    """`build_model` where whatever the constructor refuses (negative channels, torch's own checks) is a
    ConfigError naming `where`, and running out of memory says which model was asked for. With `probe_bins`, one
    forward pass over 2 s of zero fbank (`[2, 200, probe_bins]`, eval mode, no gradient, no RNG) must work too:
    zero channels, or features that do not fit the network, fail here and not at the first training step."""
    try:
        model = build_model(name, **args)
        if probe_bins is not None:
            was_training = model.training
            model.eval()
            with torch.no_grad():
                model(torch.zeros(2, 200, probe_bins))
            model.train(was_training)
        return model
    except SpeakerforgeError:
        raise
    except MemoryError:
        raise ConfigError(f"{where}: model {name!r} with {args} needs more memory than there is") from None
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        also = f" on {probe_bins}-bin features (features.num_mel_bins)" if probe_bins is not None else ""
        raise ConfigError(f"{where}: model {name!r} cannot be built or run with {args}{also} ({first})") from None


def check_declared_size(name: str, args: dict[str, Any], weights: Mapping[str, torch.Tensor], origin: str) -> None:
    """Build the described network on the meta device (shapes only, no memory) and refuse a file whose tensors
    do not fit it, before the real network is allocated."""
    try:
        with torch.device("meta"):
            skeleton = build_model(name, **args)
    except Exception:  # a model that cannot be built on the meta device: the strict load below still checks it
        return
    problems = fit_problems(skeleton.state_dict(), weights)
    if problems:
        raise CheckpointError(
            f"{origin}: its metadata ({name} {args}) does not describe the weights in the file: " + "; ".join(problems)
        )


def load_strict(model: nn.Module, weights: dict[str, torch.Tensor], origin: str) -> None:
    """`load_state_dict(strict=True)` with an error that lists every missing, unexpected and mis-shaped key."""
    problems = fit_problems(model.state_dict(), weights)
    if problems:
        raise CheckpointError(f"{origin}: weights do not fit the model: " + "; ".join(problems))
    model.load_state_dict(weights, strict=True)


LIST_LIMIT = 20


def fit_problems(
    own: Mapping[str, torch.Tensor],
    weights: Mapping[str, torch.Tensor],
    source: str = "file",
    name: Callable[[str], str] = str,
) -> list[str]:
    """What keeps `weights` from loading strictly where `own` is: missing, unexpected and mis-shaped keys, one
    listing each (empty when they fit). `name` may say where a key came from (missing and mis-shaped keys)."""
    missing = sorted(own.keys() - weights.keys())
    unexpected = sorted(weights.keys() - own.keys())
    shapes = sorted(
        f"{name(k)}: {source} {tuple(weights[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own.keys() & weights.keys()
        if own[k].shape != weights[k].shape
    )
    return [
        listing(what, keys)
        for what, keys in (
            ("missing", [name(k) for k in missing]),
            ("unexpected", unexpected),
            ("shape mismatch", shapes),
        )
        if keys
    ]


def listing(what: str, items: list[str]) -> str:
    """`N what: a, b, ... and K more`."""
    more = f" ... and {len(items) - LIST_LIMIT} more" if len(items) > LIST_LIMIT else ""
    return f"{len(items)} {what}: {', '.join(items[:LIST_LIMIT])}{more}"
