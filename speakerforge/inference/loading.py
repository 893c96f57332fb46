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

from speakerforge.artifacts import MODEL_KINDS, Resolved, resolve
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
    res = resolve(path, kinds=MODEL_KINDS, wanted=_LOADABLE, hint=_FOREIGN_HINT)
    if res.kind == "onnx":
        return _load_onnx(res.file, threads)
    if res.task == "asr":
        raise CheckpointError(f"{res.file}: an ASR model; use `speakerforge asr decode`")
    model, meta = _build(res)
    dim = int(getattr(model, "embedding_dim", 0) or meta.get("embedding_dim") or 0)
    if dim <= 0:
        raise CheckpointError(f"{res.origin}: the model does not state its embedding dimension")
    model.eval()
    if optimize:
        from speakerforge.models.fuse import optimize_for_inference

        model = optimize_for_inference(model, inplace=True)
    dev = torch.device(device)
    model.to(dev).requires_grad_(False)
    features = feature_settings(meta.get("features"))
    log.info("loaded %s (%s, %d-d) from %s", meta["model"]["name"], res.kind, dim, res.origin)
    return LoadedModel(TorchBackend(model, features, dev), dim, features, meta, str(res.file), res.kind)


_LOADABLE = "an experiment folder, a speakerforge checkpoint, a speakerforge model file or an ONNX model"
_FOREIGN_HINT = (
    "for 3D-Speaker or WeSpeaker weights run `speakerforge convert --from 3dspeaker|wespeaker` first, "
    "or fine-tune from them with `finetune --init FILE --init-format ...`"
)


def _build(res: Resolved) -> tuple[nn.Module, dict[str, Any]]:
    """The backbone a resolved model file or checkpoint describes, loaded strictly; (model, meta)."""
    from speakerforge.models.modelfile import (
        build_checked_model,
        build_embedding_model,
        check_declared_size,
        load_strict,
    )

    if res.kind == "model_file":
        if not res.meta.get("features"):
            log.warning("%s states no feature settings; using %s", res.file, FEATURE_DEFAULTS)
        return build_embedding_model(res.weights, res.meta, res.origin)
    cfg_path = res.config
    if "model" not in res.meta:
        raise CheckpointError(
            f"{cfg_path}: not found; a checkpoint is rebuilt from its run's config.yaml "
            "(two folders up), or pass the model.safetensors file"
        )
    spec = res.meta["model"]
    args = spec.get("args") or {}
    if not isinstance(args, dict):
        raise CheckpointError(f"{cfg_path}: model.args must be a mapping, got {spec.get('args')!r:.80}")
    check_declared_size(spec["name"], args, res.weights, res.origin)
    model = build_checked_model(spec["name"], args, where=f"{cfg_path}: model.args")
    load_strict(model, res.weights, res.origin)
    meta = {**res.meta, "model": {"name": spec["name"], "args": args}, "embedding_dim": model.embedding_dim}
    return model, meta


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
