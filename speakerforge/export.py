"""ONNX export of an embedding model, checked against PyTorch before the file is kept.

The graph takes fbank `[batch, frames, bins]` (`feats`), or with `with_fbank` a 16 kHz waveform `[batch, samples]`
(`waveform`) and computes the Kaldi fbank and mean normalisation inside (`speakerforge.data.features.Fbank`: DFT and
mel filters as matrix products). Batch and time axes are dynamic; the output is `embedding` `[batch, D]`.

Parity: a traced graph can bake in a shape it saw at export time and still match PyTorch at that shape (SpeechBrain
#2661). So the check runs ONNX Runtime at two other lengths (one shorter, one longer than the example, batch 2) and
refuses the export when the largest difference exceeds `atol` relative to the embedding scale (max(1, max |ref|)).
The file is written under a temporary name and renamed only after the check passes.

Metadata (`metadata_props`): `speakerforge` holds JSON with the format, model, embedding dimension, `with_fbank`,
input name, sample rate, features and (when the model file has one) the threshold; `embedding_dim`, `with_fbank` and
`sample_rate` are also plain entries for other tools.

Large models: protobuf caps one file at 2 GB, and W2V-BERT's 580M float weights are 2.3 GB. Above
`SINGLE_FILE_LIMIT` the graph is written as `NAME.onnx` plus its weights in one `NAME.onnx.data` beside it (ONNX's
external data, which ONNX Runtime reads from the graph's folder); both appear only after the parity check.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from speakerforge.atomic import atomic_path
from speakerforge.data.audio import SAMPLE_RATE
from speakerforge.errors import SpeakerforgeError
from speakerforge.inference import SpeakerModel, load_model
from speakerforge.inference.backends import feature_settings
from speakerforge.inference.loading import ONNX_FORMAT, ONNX_META_KEY

log = logging.getLogger(__name__)

__all__ = ["export_onnx", "ExportReport", "ExportError", "ONNX_FORMAT"]

DEFAULT_OPSET = 17
DEFAULT_ATOL = 1e-4
# The example length must exceed every shape-dependent branch of the models (CAM++'s segment context changes form
# above 100 frames after its stride-2 TDNN), so it is 4 s; the check lengths differ from it and from each other.
EXAMPLE_FRAMES = 400
CHECK_FRAMES = (157, 611)
# Weight bytes above which the graph keeps its weights in an external data file (protobuf's limit is 2 GiB, and the
# graph itself needs room).
SINGLE_FILE_LIMIT = 1_800_000_000


class ExportError(SpeakerforgeError):
    """The exported graph does not reproduce the PyTorch model, or could not be produced."""


@dataclass
class ExportReport:
    """What `export_onnx` did: where, how, and how far ONNX Runtime is from PyTorch at each checked length."""

    path: str
    with_fbank: bool
    opset: int
    embedding_dim: int
    max_abs_diff: dict[int, float] = field(default_factory=dict)  # frames -> max |onnx - torch|
    scale: float = 1.0
    seconds: float = 0.0

    @property
    def worst(self) -> float:
        return max(self.max_abs_diff.values()) if self.max_abs_diff else 0.0

    def summary(self) -> str:
        diffs = ", ".join(f"{n} frames {d:.2e}" for n, d in self.max_abs_diff.items())
        return (
            f"{self.path}: {'waveform' if self.with_fbank else 'fbank'} input, {self.embedding_dim}-d, opset "
            f"{self.opset}; parity max |diff| vs PyTorch: {diffs} (embedding scale {self.scale:.3g})"
        )


class _FeatsToEmbedding(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.net(feats)


class _WaveToEmbedding(nn.Module):
    """Waveform -> Kaldi fbank (+ mean and variance norm) -> network, built from the features module's public pieces
    (`frame_sizes`, `dft_basis`, `mel_banks`, `LOG_FLOOR`) with the steps of its `fbank`. `Fbank` itself frames with
    `Tensor.unfold`, which the TorchScript exporter cannot export over a dynamic length, so frames are gathered by
    index here. The parity check compares the graph against `features.fbank`, so any drift between the two is
    caught at export time."""

    def __init__(self, net: nn.Module, features: dict[str, Any]):
        super().__init__()
        from speakerforge.data.features import dft_basis, frame_sizes, mel_banks

        self.window, self.shift, fft_size = frame_sizes(SAMPLE_RATE, features["frame_length"], features["frame_shift"])
        self.mean_norm = bool(features["mean_norm"])
        self.var_norm = bool(features.get("var_norm", False))
        basis = dft_basis(self.window, fft_size)  # [window, 2 * bins]: real parts, then imaginary parts
        self.bins = basis.shape[1] // 2
        self.register_buffer("basis", basis.float(), persistent=False)
        self.register_buffer(
            "mel", mel_banks(features["num_mel_bins"], fft_size, SAMPLE_RATE).float(), persistent=False
        )
        self.register_buffer("offsets", torch.arange(self.window), persistent=False)
        self.net = net

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        from speakerforge.data.features import LOG_FLOOR, mean_normalize, variance_normalize

        frames = (waveform.shape[-1] - self.window) // self.shift + 1
        index = torch.arange(frames, device=waveform.device).unsqueeze(1) * self.shift + self.offsets
        x = waveform[:, index]  # [B, frames, window]
        spectrum = (x - x.mean(dim=-1, keepdim=True)) @ self.basis
        power = spectrum[..., : self.bins].square() + spectrum[..., self.bins :].square()
        feats = (power @ self.mel).clamp_min(LOG_FLOOR).log()
        if self.mean_norm:
            feats = mean_normalize(feats)
        if self.var_norm:  # traced with at least two frames: the graph always divides
            feats = variance_normalize(feats)
        return self.net(feats)


def _reference(net: nn.Module, x: torch.Tensor, with_fbank: bool, features: dict[str, Any]) -> torch.Tensor:
    """What the PyTorch backend computes: the model's `FeatureSpec`, then the network."""
    if not with_fbank:
        return net(x)
    from speakerforge.data.features import FeatureSpec

    return net(FeatureSpec.from_meta(features)(x))


def export_onnx(
    model: str | Path | SpeakerModel,
    out: str | Path,
    with_fbank: bool = False,
    opset: int = DEFAULT_OPSET,
    dynamo: bool = False,
    atol: float = DEFAULT_ATOL,
    seed: int = 0,
) -> ExportReport:
    """Export `model` (anything `load_model` reads, except ONNX) to `out`; parity-checked, written atomically."""
    started = time.perf_counter()
    sm = model if isinstance(model, SpeakerModel) else load_model(model, optimize=False)
    if sm.model is None:
        raise ExportError(f"{sm.source}: already an ONNX model; export from the model file or experiment folder")
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise ExportError(f"{out}: the output should end in .onnx")
    features = feature_settings(sm.features)
    if with_fbank and features.get("kind", "kaldi") != "kaldi":
        raise ExportError(
            f"{sm.source}: --with-fbank builds Kaldi fbank into the graph, and this model reads "
            f"{features['kind']} features; export without --with-fbank and compute them outside"
        )
    net = _export_copy(sm.model)
    wrapper = (_WaveToEmbedding(net, features) if with_fbank else _FeatsToEmbedding(net)).eval()
    input_name = "waveform" if with_fbank else "feats"
    gen = torch.Generator().manual_seed(seed)
    example = _example_input(sm, with_fbank, EXAMPLE_FRAMES, 1, gen)

    weight_bytes = sum(t.numel() * t.element_size() for t in net.state_dict().values())
    with _export_target(out, weight_bytes > SINGLE_FILE_LIMIT) as tmp:
        _torch_export(wrapper, example, tmp, input_name, opset, dynamo)
        meta = {
            "format": ONNX_FORMAT,
            "model": sm.meta.get("model"),
            "embedding_dim": sm.embedding_dim,
            "with_fbank": with_fbank,
            "input": input_name,
            "sample_rate": SAMPLE_RATE,
            "features": features,
            "source": sm.source,
        }
        if sm.threshold is not None:
            meta["threshold"] = sm.threshold
        _write_metadata(tmp, meta)
        report = ExportReport(str(out), with_fbank, opset, sm.embedding_dim)
        _check_parity(net, tmp, sm, with_fbank, features, report, atol, gen)
    report.seconds = time.perf_counter() - started
    log.info("%s", report.summary())
    return report


@contextlib.contextmanager
def _export_target(out: Path, external: bool) -> Iterator[Path]:
    """Where to export: a temporary file renamed over `out` (`atomic_path`), or for a model over the single-file
    limit a scratch folder beside `out` (the exporter writes one file per weight there), consolidated into
    `out.data` + `out` on success; on failure nothing is left."""
    if not external:
        with atomic_path(out) as tmp:
            yield tmp
        return
    import onnx

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as work:
        scratch = Path(work) / "exported" / out.name
        scratch.parent.mkdir()
        yield scratch
        final = Path(work) / out.name
        data = out.name + ".data"
        onnx.save_model(
            onnx.load(str(scratch)), str(final), save_as_external_data=True, all_tensors_to_one_file=True, location=data
        )
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(Path(work) / data, 0o666 & ~umask)  # onnx writes it private; the graph beside it is not
        os.replace(Path(work) / data, out.parent / data)  # the weights first: a graph never points at nothing
        os.replace(final, out)
    log.info("%s: weights in %s (over ONNX's 2 GB single-file limit)", out, out.name + ".data")


def _export_copy(model: nn.Module) -> nn.Module:
    """The BN-folded network, in the default memory format (channels-last is a runtime choice of PyTorch's)."""
    from speakerforge.models.fuse import optimize_for_inference

    net = optimize_for_inference(model, channels_last=False).float().cpu().eval()
    return net.to(memory_format=torch.contiguous_format)


def _example_input(sm: SpeakerModel, with_fbank: bool, frames: int, batch: int, gen: torch.Generator) -> torch.Tensor:
    if with_fbank:
        # noise with a slow envelope: a speech-like dynamic range rather than flat white noise
        samples = sm.frame_span(frames)
        env = torch.linspace(0.05, 0.5, samples).repeat(batch, 1)
        return (torch.rand(batch, samples, generator=gen) * 2 - 1) * env
    feats = torch.randn(batch, frames, sm.features["num_mel_bins"], generator=gen)
    return feats - feats.mean(dim=1, keepdim=True)


def _torch_export(
    wrapper: nn.Module, example: torch.Tensor, path: Path, input_name: str, opset: int, dynamo: bool
) -> None:
    import warnings

    try:
        # Grad mode on (the weights need none): modules that write into preallocated buffers under no_grad (CAM++'s
        # dense blocks) then take their plain concatenation path, which exports as Concat rather than in-place
        # slice updates.
        with torch.enable_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
            warnings.simplefilter("ignore", category=DeprecationWarning)  # "legacy exporter": chosen on purpose
            warnings.filterwarnings("ignore", message=r"var_mean\(\): degrees of freedom")  # shape inference probe
            if dynamo:
                batch, time_ = torch.export.Dim("batch", min=1), torch.export.Dim("time", min=8)
                torch.onnx.export(
                    wrapper,
                    (example,),
                    str(path),
                    dynamo=True,
                    opset_version=opset,
                    input_names=[input_name],
                    output_names=["embedding"],
                    dynamic_shapes=({0: batch, 1: time_},),
                    external_data=False,
                )
            else:
                torch.onnx.export(
                    wrapper,
                    (example,),
                    str(path),
                    dynamo=False,
                    opset_version=opset,
                    input_names=[input_name],
                    output_names=["embedding"],
                    do_constant_folding=True,
                    dynamic_axes={input_name: {0: "batch", 1: "time"}, "embedding": {0: "batch"}},
                )
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        exporter = "dynamo" if dynamo else "TorchScript"
        other = "the TorchScript exporter (default)" if dynamo else "--dynamo"
        raise ExportError(
            f"ONNX export ({exporter} exporter, opset {opset}) failed: {first}; try {other} or another --opset"
        ) from None


def _write_metadata(path: Path, meta: dict[str, Any]) -> None:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)  # the graph only: external weights stay where they are
    entries = {
        ONNX_META_KEY: json.dumps(meta, sort_keys=True),
        "embedding_dim": str(meta["embedding_dim"]),
        "with_fbank": str(bool(meta["with_fbank"])).lower(),
        "sample_rate": str(meta["sample_rate"]),
    }
    for prop in [p for p in proto.metadata_props if p.key in entries]:
        proto.metadata_props.remove(prop)
    for key, value in entries.items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name = "speakerforge"
    onnx.save(proto, str(path))


def _check_parity(
    net: nn.Module,
    path: Path,
    sm: SpeakerModel,
    with_fbank: bool,
    features: dict[str, Any],
    report: ExportReport,
    atol: float,
    gen: torch.Generator,
) -> None:
    """ONNX Runtime vs PyTorch at lengths other than the example's, batch 2; ExportError beyond tolerance."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ExportError(f"ONNX Runtime cannot load the exported graph: {str(exc).splitlines()[0][:300]}") from None
    name = session.get_inputs()[0].name
    for frames in CHECK_FRAMES:
        x = _example_input(sm, with_fbank, frames, 2, gen)
        with torch.inference_mode():
            ref = _reference(net, x, with_fbank, features).numpy()
        try:
            got = session.run(None, {name: x.numpy()})[0]
        except Exception as exc:
            raise ExportError(
                f"the exported graph fails at {frames} frames (exported at {EXAMPLE_FRAMES}): "
                f"{str(exc).splitlines()[0][:300]}"
            ) from None
        if got.shape != ref.shape:
            raise ExportError(
                f"the exported graph returns shape {got.shape} at {frames} frames, PyTorch "
                f"{ref.shape}: a shape was fixed at export time"
            )
        report.max_abs_diff[frames] = float(np.abs(got - ref).max())
        report.scale = max(report.scale, float(np.abs(ref).max()))
    if report.worst > atol * report.scale:
        raise ExportError(
            f"the ONNX graph does not match PyTorch: max |diff| {report.worst:.3g} (tolerance "
            f"{atol:g} x embedding scale {report.scale:.3g}) at lengths {list(CHECK_FRAMES)} frames; "
            "no file written"
        )
