"""Loading every saved form of a speaker model (experiment folder, checkpoint, model file, ONNX) as a backend with
its embedding dimension, feature settings and metadata; `speakerforge.inference.load_model` wraps the result in a
`SpeakerModel`."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn as nn

from speakerforge.artifacts import backbone_prefix, expect, list_checkpoints
from speakerforge.checkpoint_io import load_state
from speakerforge.errors import CheckpointError
from speakerforge.inference.backends import FEATURE_DEFAULTS, OnnxBackend, TorchBackend, feature_settings

log = logging.getLogger(__name__)

ONNX_META_KEY = "speakerforge"
ONNX_FORMAT = "speakerforge-onnx-1"


class LoadedModel(NamedTuple):
    """What a loader found: `SpeakerModel`'s constructor arguments, in its order."""

    backend: Any
    embedding_dim: int
    features: dict[str, Any]
    meta: dict[str, Any]
    source: str
    kind: str


def open_model(path: str | Path, device: str, optimize: bool, threads: int | None) -> LoadedModel:
    """The backend and facts of the model at `path` (the arguments of `speakerforge.inference.load_model`)."""
    if not Path(path).exists():
        raise CheckpointError(f"{path}: model not found (expected {_LOADABLE})")
    art = expect(path, ("experiment", "onnx", "checkpoint", "model_file"), _LOADABLE, _FOREIGN_HINT)
    if art.kind == "experiment":
        return _load_experiment(art.path, device, optimize)
    if art.kind == "onnx":
        return _load_onnx(art.path, threads)
    if art.kind == "checkpoint":
        return _load_checkpoint(art.path, device, optimize)
    return _load_model_file(art.path, device, optimize)


_LOADABLE = "an experiment folder, a speakerforge checkpoint, a speakerforge model file or an ONNX model"
_FOREIGN_HINT = (
    "for 3D-Speaker or WeSpeaker weights run `speakerforge convert --from 3dspeaker|wespeaker` first, "
    "or fine-tune from them with `finetune --init FILE --init-format ...`"
)


def _finish_torch(
    model: nn.Module,
    meta: dict[str, Any],
    features: dict[str, Any] | None,
    source: str,
    kind: str,
    device: str,
    optimize: bool,
) -> LoadedModel:
    from speakerforge.models.fuse import optimize_for_inference

    model.eval()
    if optimize:
        model = optimize_for_inference(model, inplace=True)
    dev = torch.device(device)
    model.to(dev)
    model.requires_grad_(False)
    dim = int(getattr(model, "embedding_dim", 0) or meta.get("embedding_dim") or 0)
    if dim <= 0:
        raise CheckpointError(f"{source}: the model does not state its embedding dimension")
    log.info("loaded %s (%s, %d-d) from %s", meta.get("model", {}).get("name", "?"), kind, dim, source)
    return LoadedModel(
        TorchBackend(model, feature_settings(features), dev), dim, feature_settings(features), meta, source, kind
    )


def _load_model_file(path: Path, device: str, optimize: bool) -> LoadedModel:
    from speakerforge.models.modelfile import load_embedding_model

    model, meta, _extras = load_embedding_model(path)
    if not meta.get("features"):
        log.warning("%s states no feature settings; using %s", path, FEATURE_DEFAULTS)
    return _finish_torch(model, meta, meta.get("features"), str(path), "model_file", device, optimize)


def _read_config(path: Path) -> dict[str, Any]:

    if not path.is_file():
        raise CheckpointError(
            f"{path}: not found; a checkpoint is rebuilt from its run's config.yaml "
            "(two folders up), or pass the model.safetensors file"
        )
    from speakerforge.config import bounded_yaml
    from speakerforge.errors import ConfigError

    try:
        cfg = bounded_yaml(path.read_text(), str(path)) or {}
    except ConfigError as exc:
        raise CheckpointError(f"unreadable config: {exc}") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict) or "name" not in cfg["model"]:
        raise CheckpointError(f"{path}: no `model: {{name, args}}` section")
    return cfg


def _checkpoint_backbone(state: dict[str, Any], origin: str) -> dict[str, torch.Tensor]:
    """The embedding network's weights in a training state: `backbone.*`, or a self-supervised run's teacher
    (`artifacts.backbone_prefix`)."""
    weights = state.get("model")
    if not isinstance(weights, dict):
        raise CheckpointError(f"{origin}: checkpoint holds no model weights")
    prefix = backbone_prefix(weights, None, origin)
    found = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
    if not found:
        raise CheckpointError(f"{origin}: no `backbone.*` weights in this checkpoint")
    return found


def _load_checkpoint(path: Path, device: str, optimize: bool, cfg_path: Path | None = None) -> LoadedModel:
    from speakerforge.models.modelfile import build_checked_model, check_declared_size, load_strict

    cfg_path = cfg_path or path.parent.parent / "config.yaml"
    cfg = _read_config(cfg_path)
    weights = _checkpoint_backbone(load_state(path), str(path))
    spec = cfg["model"]
    if not isinstance(spec.get("args") or {}, dict):
        raise CheckpointError(f"{cfg_path}: model.args must be a mapping, got {spec.get('args')!r:.80}")
    check_declared_size(spec["name"], spec.get("args") or {}, weights, str(path))
    model = build_checked_model(spec["name"], spec.get("args") or {}, where=f"{cfg_path}: model.args")
    load_strict(model, weights, str(path))
    meta: dict[str, Any] = {
        "model": {"name": spec["name"], "args": spec.get("args") or {}},
        "features": cfg.get("features") or {},
        "embedding_dim": getattr(model, "embedding_dim", 0),
        "config": str(cfg_path),
    }
    return _finish_torch(model, meta, meta["features"], str(path), "checkpoint", device, optimize)


def _load_experiment(folder: Path, device: str, optimize: bool) -> LoadedModel:
    model_file = folder / "model.safetensors"
    if model_file.is_file():
        return _load_model_file(model_file, device, optimize)
    found = list_checkpoints(folder)
    if not found:
        raise CheckpointError(
            f"{folder}: no model here: expected an experiment folder with model.safetensors or "
            "checkpoints/ckpt-*.pt, a model file or an .onnx file"
        )
    reasons = []
    for _step, ckpt in found:
        try:
            return _load_checkpoint(ckpt, device, optimize, folder / "config.yaml")
        except CheckpointError as exc:
            log.warning("skipping checkpoint %s: %s", ckpt, exc)
            reasons.append(str(exc))
    raise CheckpointError(f"{folder}: none of its {len(found)} checkpoints could be loaded (newest: {reasons[0]})")


def _load_onnx(path: Path, threads: int | None) -> LoadedModel:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types (InvalidProtobuf, Fail, ...)
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a loadable ONNX model ({first})") from None
    props = session.get_modelmeta().custom_metadata_map or {}
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) < 1:
        raise CheckpointError(
            f"{path}: expected an ONNX model with one input (waveform or fbank) and an embedding "
            f"output; it has {len(inputs)} inputs and {len(outputs)} outputs"
        )
    if ONNX_META_KEY in props:
        meta = _onnx_meta(props[ONNX_META_KEY], str(path))
        with_fbank = bool(meta.get("with_fbank"))
        dim = int(meta.get("embedding_dim") or 0)
    else:
        meta, with_fbank, dim = _guess_onnx(path, inputs, outputs)
    if dim <= 0:
        raise CheckpointError(f"{path}: cannot tell the embedding dimension of this ONNX model")
    features = feature_settings(meta.get("features"))
    log.info("loaded ONNX model %s (%d-d, fbank %s the graph)", path, dim, "inside" if with_fbank else "outside")
    return LoadedModel(OnnxBackend(session, features, with_fbank), dim, features, meta, str(path), "onnx")


def _onnx_meta(text: str, origin: str) -> dict[str, Any]:
    """The speakerforge metadata of an ONNX model, checked with the model file's schema (types and ranges)."""
    from speakerforge.models.modelfile import check_feature_meta, check_model_meta_types

    try:
        meta = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise CheckpointError(f"{origin}: corrupt speakerforge metadata in the ONNX model") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{origin}: corrupt speakerforge metadata (a {type(meta).__name__}, not a mapping)")
    meta = dict(meta)
    meta["features"] = check_feature_meta(meta.get("features"), origin)
    check_model_meta_types(meta, origin)
    return meta


def _guess_onnx(path: Path, inputs: list, outputs: list) -> tuple[dict[str, Any], bool, int]:
    """An ONNX model exported elsewhere: waveform `[B, T]` or fbank `[B, T, 80]` in, `[B, D]` out."""
    rank = len(inputs[0].shape)
    out_shape = outputs[0].shape
    dim = out_shape[-1] if out_shape and isinstance(out_shape[-1], int) else 0
    if rank not in (2, 3) or len(out_shape) != 2:
        raise CheckpointError(
            f"{path}: not a speaker-embedding ONNX model (input shape {inputs[0].shape}, output "
            f"shape {out_shape}); expected [B, samples] or [B, frames, bins] -> [B, D]"
        )
    log.warning(
        "%s: no speakerforge metadata; assuming %s input and default features %s",
        path,
        "waveform" if rank == 2 else "fbank",
        FEATURE_DEFAULTS,
    )
    return {"features": dict(FEATURE_DEFAULTS)}, rank == 2, int(dim)
