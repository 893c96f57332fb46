"""Inference-time rewrites of an embedding model that keep its outputs (to float rounding) and make it faster.

`optimize_for_inference(model)` returns an eval-mode copy in which

1. every BatchNorm that directly follows a conv/linear is folded into it. Modules opt in by defining
   `fuse_for_inference(self) -> None` (called children first, in eval mode), which knows the dataflow of its own
   `forward`; in any `nn.Sequential`, a conv/linear immediately followed by a BatchNorm is folded without help;
2. 2D-convolution models that set `channels_last_inference = True` are converted to channels-last memory format,
   which oneDNN runs several times faster on CPU for the small channel counts of speaker models (the model's
   `forward` converts its input when its weights are channels-last);
3. modules may swap a conv and the activation (and residual add) after it for a `ConvAct1d`/`ConvAct2d`, which runs
   them as one oneDNN primitive with the activation as a post-op (`torch.ops.mkldnn._convolution_pointwise`, what
   `torch.compile` uses on CPU): one pass over the output instead of two or three, and never PyTorch's slow
   non-oneDNN fallbacks (batch-1, dilated). A single utterance through a 'same' 1D conv is one matrix product
   instead. Where the op is missing, a gradient is needed, or a tracer/exporter runs, the standard operations are
   used (`is_tracing`).

4. 2D-convolution models that set `inference_slice_frames` run a large batch in slices of about that many frames
   (`run_in_slices`): their feature maps (64-128 channels x 80 bins x frames) outgrow the caches at batch 16, where
   ERes2Net runs about 1.4x faster four utterances at a time than sixteen (CAM++, mostly 1D, does not: unset).

`torch.compile` is not used. In torch 2.13 with freezing it fails on channels-last models with dynamic lengths (a
stride assertion in the fused-convolution lowering); without freezing it works on ERes2Net (about 1.15x faster than
this eager path at batch 1) but compiles for a minute and again for new input lengths.

The result is for inference only: no gradients, and training it would train a different parameterisation.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable

import torch
import torch.nn as nn

__all__ = [
    "optimize_for_inference",
    "fold_bn_into_conv",
    "fold_bn_into_linear",
    "fold_sequential_bns",
    "uses_channels_last",
    "ConvAct1d",
    "ConvAct2d",
    "conv_bn_act",
    "fuse_conv_bn_act",
    "is_tracing",
    "bn_scale_shift",
    "run_in_slices",
]

log = logging.getLogger(__name__)

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def bn_scale_shift(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """The eval-mode BN as `y = x * scale + shift`, per channel (float64 for an exact fold)."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    if bn.training:
        raise ValueError("fold BatchNorm only in eval mode: in training mode it uses batch statistics")
    scale = 1.0 / torch.sqrt(bn.running_var.double() + bn.eps)
    shift = -bn.running_mean.double() * scale
    if bn.affine:
        scale = scale * bn.weight.double()
        shift = shift * bn.weight.double() + bn.bias.double()
    return scale, shift


def _set_weight_bias(layer: nn.Module, weight: torch.Tensor, bias: torch.Tensor) -> None:
    dtype = layer.weight.dtype
    layer.weight = nn.Parameter(weight.to(dtype), requires_grad=False)
    layer.bias = nn.Parameter(bias.to(dtype), requires_grad=False)


@torch.no_grad()
def fold_bn_into_conv(conv: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> nn.Module:
    """`bn(conv(x))` -> `conv'(x)`: rescale the conv's output channels and give it a bias. In place; returns conv."""
    if conv.weight.shape[0] != bn.num_features:
        raise ValueError(
            f"BatchNorm over {bn.num_features} channels cannot follow a layer with {conv.weight.shape[0]} outputs"
        )
    scale, shift = bn_scale_shift(bn)
    w = conv.weight.double() * scale.reshape(-1, *([1] * (conv.weight.dim() - 1)))
    b = shift if conv.bias is None else conv.bias.double() * scale + shift
    _set_weight_bias(conv, w, b)
    return conv


@torch.no_grad()
def fold_bn_into_linear(linear: nn.Module, bn: nn.modules.batchnorm._BatchNorm, bn_before: bool = False) -> nn.Module:
    """Fold `bn(linear(x))`, or with `bn_before` `linear(bn(x))`, into the linear (or 1x1 conv). In place."""
    if not bn_before:
        return fold_bn_into_conv(linear, bn)
    scale, shift = bn_scale_shift(bn)
    w = linear.weight.double()  # [out, in, *kernel]; a BN before the layer scales its input channels
    if w.dim() > 2 and any(k != 1 for k in w.shape[2:]):
        raise ValueError("a BatchNorm before a conv folds only into a 1x1 conv (padding would see the shift)")
    w2 = w.reshape(w.shape[0], w.shape[1])
    b = w2 @ shift + (0.0 if linear.bias is None else linear.bias.double())
    _set_weight_bias(linear, (w2 * scale).reshape(w.shape), b)
    return linear


def fold_sequential_bns(seq: nn.Sequential) -> int:
    """Inside one Sequential, fold each BN that directly follows a conv/linear; returns how many were folded."""
    names = list(seq._modules)
    folded = 0
    for prev, cur in zip(names, names[1:]):
        layer, bn = seq._modules[prev], seq._modules[cur]
        if isinstance(bn, _BN) and isinstance(layer, (*_CONV, nn.Linear)) and bn.track_running_stats:
            if layer.weight.shape[0] == bn.num_features:
                fold_bn_into_conv(layer, bn)
                seq._modules[cur] = nn.Identity()
                folded += 1
    return folded


def uses_channels_last(conv: nn.Module) -> bool:
    """Whether a 2D conv's weight was converted to channels-last (`model.to(memory_format=torch.channels_last)`).

    Ask a conv with more than one input channel: with one, both layouts have the same strides and PyTorch reports
    the weight as contiguous in both.
    """
    w = conv.weight
    if w.dim() != 4 or w.shape[1] == 1:
        raise ValueError("uses_channels_last needs a 2D conv with more than one input channel")
    return not w.is_contiguous() and w.is_contiguous(memory_format=torch.channels_last)


def _pointwise_conv_op():
    """oneDNN's fused convolution (conv + bias + activation, or + residual add), if this PyTorch build has it."""
    try:
        op = torch.ops.mkldnn._convolution_pointwise
        _ = op.default, op.binary
    except (AttributeError, RuntimeError):
        return None
    return op if torch.backends.mkldnn.is_available() else None


_POINTWISE = _pointwise_conv_op()
_is_exporting = getattr(torch.compiler, "is_exporting", lambda: False)  # torch.export (non-strict mode)


def is_tracing() -> bool:
    """Whether a tracer or exporter (TorchScript, ONNX, torch.export, torch.compile) is running the model: then
    inference shortcuts (fused oneDNN ops, cached tensors) must step aside for standard operations."""
    return (
        torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.onnx.is_in_onnx_export()
        or torch.compiler.is_compiling()
        or _is_exporting()
    )


# our activation name -> (oneDNN post-op name, its scalars, the eager in-place equivalent)
_ACTIVATIONS = {
    "none": ("none", (), lambda y: y),
    "relu": ("relu", (), torch.relu_),
    "relu20": ("hardtanh", (0.0, 20.0), lambda y: nn.functional.hardtanh_(y, 0.0, 20.0)),  # ERes2Net's capped ReLU
    "silu": ("swish", (), lambda y: nn.functional.silu(y, inplace=True)),
    "tanh": ("tanh", (), torch.tanh_),
    "sigmoid": ("sigmoid", (), torch.sigmoid_),
}


class _ConvActMixin:
    """`act(conv(x) + residual)` for an inference-only conv; see `ConvAct1d` / `ConvAct2d`."""

    act: str

    @classmethod
    def from_conv(cls, conv: nn.Module, act: str = "none"):
        """Wrap an existing (BN-folded) conv; its parameters are shared, not copied."""
        if act not in _ACTIVATIONS:
            raise ValueError(f"unsupported activation {act!r}; known: {', '.join(_ACTIVATIONS)}")
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(f"{cls.__name__} needs explicit zero padding")
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.__dict__.update({k: v for k, v in conv.__dict__.items() if not k.startswith("_")})
        new.weight, new.bias = conv.weight, conv.bias
        new.act = act
        return new

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        attr, scalars, eager_act = _ACTIVATIONS[self.act]
        if self._use_pointwise(x):
            geometry = (list(self.padding), list(self.stride), list(self.dilation), self.groups)
            if residual is None:
                return _POINTWISE(x, self.weight, self.bias, *geometry, attr, list(scalars), "")
            if x.dim() < 4:  # no fused residual add for 1D convolutions
                y = _POINTWISE(x, self.weight, self.bias, *geometry, "none", [], "")
                y += residual
                return eager_act(y)
            unary = "relu" if attr == "relu" else None  # oneDNN fuses add + relu only
            y = _POINTWISE.binary(x, residual, self.weight, self.bias, *geometry, "add", None, unary, [], None)
            return y if unary is not None else eager_act(y)
        y = self._conv_forward(x, self.weight, self.bias)
        if residual is not None:
            y = y + residual
        return eager_act(y)

    def _use_pointwise(self, x: torch.Tensor) -> bool:
        if _POINTWISE is None or x.dtype != torch.float32 or x.device.type != "cpu":
            return False
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
            return False  # the fused op has no backward
        return not is_tracing()  # tracers and exporters get the standard operations

    def extra_repr(self) -> str:
        return super().extra_repr() + f", act={self.act}"


class ConvAct1d(_ConvActMixin, nn.Conv1d):
    """Inference-only Conv1d fused with the activation after it (and optionally a residual added before that):
    `act(conv(x) + residual)` in one oneDNN call when gradients are off and the op exists, else eager PyTorch.
    Same parameters (and state-dict keys) as the conv it replaces.

    A single utterance (batch 1) through a stride-1 'same' convolution is instead one matrix product of the stacked
    kernel taps with the input plus shifted adds: on CPU that beats both oneDNN and PyTorch's own batch-1 paths
    (which for dilated kernels is several times slower)."""

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() == 3 and x.shape[0] == 1 and self._is_same_stride1() and self._use_pointwise(x):
            y = self._gemm(x[0]).unsqueeze(0)
            if residual is not None:
                y += residual
            return _ACTIVATIONS[self.act][2](y)
        return super().forward(x, residual)

    def _is_same_stride1(self) -> bool:
        (k,), (d,), (p,) = self.kernel_size, self.dilation, self.padding
        return self.stride == (1,) and self.groups == 1 and k % 2 == 1 and p == d * (k // 2)

    def _stacked_weight(self) -> torch.Tensor:
        """`[k * out, in]`: the kernel taps stacked, cached until the weight changes."""
        w = self.weight
        key = (w.data_ptr(), w._version, w.dtype, w.device)
        cached = self.__dict__.get("_stacked_cache")
        if cached is None or cached[0] != key:
            cached = (key, w.detach().permute(2, 0, 1).reshape(-1, w.shape[1]).contiguous())
            self.__dict__["_stacked_cache"] = cached
        return cached[1]

    def _gemm(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution of one `[in, T]` input: `y[t] = sum_j W_j x[t + (j - k//2) * d]`, zero-padded."""
        k, out, t = self.kernel_size[0], self.out_channels, x.shape[1]
        bias = None if self.bias is None else self.bias.unsqueeze(1)
        if k == 1:
            w = self.weight.view(out, -1)
            return torch.mm(w, x) if bias is None else torch.addmm(bias, w, x)
        u = torch.mm(self._stacked_weight(), x).view(k, out, t)
        c, d = k // 2, self.dilation[0]
        y = u[c].clone() if bias is None else u[c] + bias
        for j in range(k):
            shift = (j - c) * d
            if j == c or abs(shift) >= t:
                continue
            if shift > 0:
                y[:, : t - shift] += u[j, :, shift:]
            else:
                y[:, -shift:] += u[j, :, : t + shift]
        return y


class ConvAct2d(_ConvActMixin, nn.Conv2d):
    """Inference-only Conv2d fused with the activation after it (and optionally a residual added before that):
    `act(conv(x) + residual)` in one oneDNN call when gradients are off and the op exists, else eager PyTorch.
    Same parameters (and state-dict keys) as the conv it replaces."""


_CONV_ACT = {nn.Conv1d: ConvAct1d, nn.Conv2d: ConvAct2d, ConvAct1d: ConvAct1d, ConvAct2d: ConvAct2d}


def conv_bn_act(
    conv: nn.Module, bn: nn.Module, x: torch.Tensor, act: str, residual: torch.Tensor | None = None
) -> torch.Tensor:
    """`act(bn(conv(x)) + residual)` in eager PyTorch, or one fused call once `fuse_conv_bn_act` has made the conv a
    `ConvAct2d` (and the BN an Identity). Models write their forward with this so that both forms share it."""
    if isinstance(conv, _ConvActMixin):
        return conv(x, residual)
    y = bn(conv(x))
    if residual is not None:
        y += residual  # in place: y is a fresh tensor that no backward formula needs
    return _ACTIVATIONS[act][2](y)


def fuse_conv_bn_act(conv: nn.Module, bn: nn.Module | None, act: str) -> nn.Module:
    """Fold `bn` (a BatchNorm, Identity or None) into `conv` (Conv1d/2d) and make it a `ConvAct1d`/`ConvAct2d`
    applying `act`; eval mode only."""
    if isinstance(bn, _BN):
        fold_bn_into_conv(conv, bn)
    elif not (bn is None or isinstance(bn, nn.Identity)):
        raise ValueError(f"expected a BatchNorm or Identity after the conv, got {type(bn).__name__}")
    return _CONV_ACT[type(conv)].from_conv(conv, act)


def _count_bns(model: nn.Module) -> int:
    return sum(isinstance(m, _BN) for m in model.modules())


@torch.no_grad()
def optimize_for_inference(model: nn.Module, channels_last: bool | None = None, inplace: bool = False) -> nn.Module:
    """An eval-mode, BN-folded (and, for 2D CNNs, channels-last) copy of `model` with the same outputs."""
    model = model if inplace else copy.deepcopy(model)
    model.eval()
    before = _count_bns(model)
    # Children before parents: a parent's fold may rely on its children being done (never the other way).
    for module in reversed(list(model.modules())):
        fuse = getattr(module, "fuse_for_inference", None)
        if callable(fuse):
            fuse()
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            fold_sequential_bns(module)
    model.requires_grad_(False)
    if hasattr(model, "inference_slice_frames"):
        model.slice_frames = int(model.inference_slice_frames)
    if channels_last is None:
        channels_last = bool(getattr(model, "channels_last_inference", False))
    if channels_last:
        model.to(memory_format=torch.channels_last)
    log.debug(
        "optimize_for_inference: folded %d of %d BatchNorms; channels_last=%s",
        before - _count_bns(model),
        before,
        channels_last,
    )
    return model


def run_in_slices(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, frames: int) -> torch.Tensor:
    """`forward(x)` for a `[B, T, F]` batch, run over slices of at most `frames` frames in all (at least one
    utterance each) when that is smaller than the batch; the same output, row for row, in eval mode."""
    if frames <= 0 or x.dim() != 3 or x.shape[0] * x.shape[1] <= frames or x.shape[0] == 1 or is_tracing():
        return forward(x)
    return torch.cat([forward(part) for part in x.split(max(1, frames // x.shape[1]))])
