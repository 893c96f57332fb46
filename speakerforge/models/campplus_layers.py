"""The layers of CAM++ (`speakerforge.models.campplus`), as 3D-Speaker's `speakerlab.models.campplus.layers` holds
them and under the same names: nonlinearity stacks, the FCM's 2D residual block, TDNN, context-aware masking, the
densely connected TDNN block, transit and dense layers, each able to fold its BatchNorms for inference."""

from __future__ import annotations

import functools
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp

from speakerforge.errors import ConfigError
from speakerforge.models.fuse import (
    bn_scale_shift,
    conv_bn_act,
    fold_bn_into_conv,
    fuse_conv_bn_act,
    is_tracing,
)


def make_nonlinear(config_str: str, channels: int) -> nn.Sequential:
    """`"batchnorm-relu"` -> Sequential(batchnorm=BatchNorm1d, relu=ReLU); `batchnorm_` is BN without affine."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for name in config_str.split("-"):
        if name == "relu":
            layers["relu"] = nn.ReLU(inplace=True)
        elif name == "prelu":
            layers["prelu"] = nn.PReLU(channels)
        elif name == "batchnorm":
            layers["batchnorm"] = nn.BatchNorm1d(channels)
        elif name == "batchnorm_":
            layers["batchnorm"] = nn.BatchNorm1d(channels, affine=False)
        else:
            raise ConfigError(
                f"unknown nonlinearity {name!r} in {config_str!r}; use batchnorm, batchnorm_, relu, prelu"
            )
    return nn.Sequential(layers)


def fuse_into_conv(conv: nn.Conv1d, nonlinear: nn.Sequential) -> tuple[nn.Module, nn.Sequential]:
    """conv -> nonlinear(batchnorm, relu, ...): fold the BN into the conv and the ReLU into it as a post-op; returns
    the new conv and what is left of the nonlinearity (eval mode only)."""
    rest = list(nonlinear._modules.items())
    if rest and rest[0][0] == "batchnorm":
        fold_bn_into_conv(conv, rest.pop(0)[1])
    act = "none"
    if rest and rest[0][0] == "relu":
        rest.pop(0)
        act = "relu"
    return fuse_conv_bn_act(conv, None, act), nn.Sequential(OrderedDict(rest))


def _context_pooling_matrix(frames: int, seg_len: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """`[T, n_seg]` matrix P such that `x @ P` is, per segment, the utterance mean plus that segment's mean (the
    last segment may be shorter, as with `avg_pool1d(ceil_mode=True)`). Cached, except under tracers and exporters,
    whose (fake) tensors must not outlive them."""
    if is_tracing():
        return _build_context_pooling_matrix(frames, seg_len, dtype, device)
    return _cached_context_pooling_matrix(frames, seg_len, dtype, device)


def _build_context_pooling_matrix(frames: int, seg_len: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    # A normal tensor even when first built under torch.inference_mode (extraction): the cache is shared with
    # training, where an inference tensor cannot be saved for backward.
    with torch.inference_mode(False):
        n_seg = -(-frames // seg_len)
        p = torch.full((frames, n_seg), 1.0 / frames, dtype=torch.float64)
        for j in range(n_seg):
            start, stop = j * seg_len, min((j + 1) * seg_len, frames)
            p[start:stop, j] += 1.0 / (stop - start)
        return p.to(dtype=dtype, device=device)


_cached_context_pooling_matrix = functools.lru_cache(maxsize=64)(_build_context_pooling_matrix)


class BasicResBlock(nn.Module):
    """2D residual block of the FCM front end; strides only along frequency."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=(stride, 1), padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=(stride, 1), bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = conv_bn_act(self.conv1, self.bn1, x, "relu")
        return conv_bn_act(self.conv2, self.bn2, out, "relu", residual=self.shortcut(x))

    def fuse_for_inference(self) -> None:
        """Fold every BN into its conv, with the ReLUs and the residual add as fused post-ops (eval mode only)."""
        self.conv1, self.bn1 = fuse_conv_bn_act(self.conv1, self.bn1, "relu"), nn.Identity()
        self.conv2, self.bn2 = fuse_conv_bn_act(self.conv2, self.bn2, "relu"), nn.Identity()
        if len(self.shortcut) == 2:  # through oneDNN too: its output is the residual post-op's operand, same layout
            self.shortcut = nn.Sequential(fuse_conv_bn_act(self.shortcut[0], self.shortcut[1], "none"), nn.Identity())


class TDNNLayer(nn.Module):
    """Conv1d followed by a nonlinearity; `padding=-1` means 'same' for odd kernels."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        bias: bool = False,
        config_str: str = "batchnorm-relu",
    ):
        super().__init__()
        if padding < 0:
            if kernel_size % 2 == 0:
                raise ConfigError(f"'same' padding needs an odd kernel size, got {kernel_size}")
            padding = (kernel_size - 1) // 2 * dilation
        self.linear = nn.Conv1d(in_channels, out_channels, kernel_size, stride, padding, dilation, bias=bias)
        self.nonlinear = make_nonlinear(config_str, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlinear(self.linear(x))

    def fuse_for_inference(self) -> None:
        """Fold the BN (and ReLU) that follow the conv into it."""
        self.linear, self.nonlinear = fuse_into_conv(self.linear, self.nonlinear)


class CAMLayer(nn.Module):
    """Context-aware masking: a local conv whose output is gated by a mask computed from utterance-level and
    segment-level (`seg_len` frames) average context.

    The mask is piecewise constant over segments, so it is computed once per segment and broadcast, which is the
    same arithmetic as the reference (that expands the context to every frame first) with far fewer operations;
    the context itself is one matrix product with a cached pooling matrix.
    """

    def __init__(
        self,
        bn_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        padding: int,
        dilation: int,
        bias: bool,
        reduction: int = 2,
        seg_len: int = 100,
    ):
        super().__init__()
        self.linear_local = nn.Conv1d(bn_channels, out_channels, kernel_size, stride, padding, dilation, bias=bias)
        self.linear1 = nn.Conv1d(bn_channels, bn_channels // reduction, 1)
        self.linear2 = nn.Conv1d(bn_channels // reduction, out_channels, 1)
        self.seg_len = seg_len

    def forward(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """`out` (inference only): write the result there instead of into a new tensor."""
        y = self.linear_local(x)
        t = x.shape[-1]
        # [B, n_seg, C]: utterance mean + mean of each segment
        if is_tracing():  # exporters: shape-generic ops (the pooling matrix would be traced as a constant)
            context = (
                x.mean(-1, keepdim=True) + F.avg_pool1d(x, self.seg_len, self.seg_len, ceil_mode=True)
            ).transpose(1, 2)
        else:
            context = torch.matmul(x, _context_pooling_matrix(t, self.seg_len, x.dtype, x.device)).transpose(1, 2)
        h = F.linear(context, self.linear1.weight.squeeze(-1), self.linear1.bias).relu_()
        m = F.linear(h, self.linear2.weight.squeeze(-1), self.linear2.bias).sigmoid_().transpose(1, 2)
        if m.shape[-1] > 1:
            m = m.repeat_interleave(self.seg_len, dim=-1)[..., :t]
        return torch.mul(y, m, out=out) if out is not None else y * m

    def fuse_for_inference(self) -> None:
        """Run the local conv through oneDNN (PyTorch's own path for dilated batch-1 conv1d is slow)."""
        self.linear_local = fuse_conv_bn_act(self.linear_local, None, "none")


class CAMDenseTDNNLayer(nn.Module):
    """One densely connected layer: BN-ReLU, 1x1 bottleneck, BN-ReLU, CAM layer."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        bn_channels: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        bias: bool = False,
        config_str: str = "batchnorm-relu",
        memory_efficient: bool = False,
        seg_len: int = 100,
    ):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ConfigError(f"CAM++ dense layers need an odd kernel size, got {kernel_size}")
        padding = (kernel_size - 1) // 2 * dilation
        self.memory_efficient = memory_efficient
        self.nonlinear1 = make_nonlinear(config_str, in_channels)
        self.linear1 = nn.Conv1d(in_channels, bn_channels, 1, bias=False)
        self.nonlinear2 = make_nonlinear(config_str, bn_channels)
        self.cam_layer = CAMLayer(
            bn_channels, out_channels, kernel_size, stride, padding, dilation, bias, seg_len=seg_len
        )
        # the leading BN as `x * scale + shift`, set by fuse_for_inference (buffers: they follow .to(device))
        self.register_buffer("_pre_scale", None, persistent=False)
        self.register_buffer("_pre_shift", None, persistent=False)

    def bn_function(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear1(self.nonlinear1(x))

    def forward(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """`out` (inference only): write the result there instead of into a new tensor."""
        if self._pre_scale is not None:  # fused for inference: BN-ReLU as one multiply-add, no module calls
            return self.cam_layer(self.linear1(torch.addcmul(self._pre_shift, x, self._pre_scale).relu_()), out=out)
        if self.training and self.memory_efficient and x.requires_grad:
            # recompute the (wide) pre-activation in backward instead of keeping it: DenseNet's memory trick
            x = cp.checkpoint(self.bn_function, x, use_reentrant=False)
        else:
            x = self.bn_function(x)
        return self.cam_layer(self.nonlinear2(x), out=out)

    def fuse_for_inference(self) -> None:
        """Fold the BN (and ReLU) after the bottleneck conv into it. The leading BN acts on the concatenation of
        all earlier layers' outputs, each layer with its own statistics, so it stays, as a precomputed affine map
        (this layer is called 52 times per utterance: module-call overhead counts at batch 1)."""
        self.linear1, self.nonlinear2 = fuse_into_conv(self.linear1, self.nonlinear2)
        if len(self.nonlinear2) == 0 and list(self.nonlinear1._modules) == ["batchnorm", "relu"]:
            scale, shift = bn_scale_shift(self.nonlinear1.batchnorm)
            dtype = self.linear1.weight.dtype
            self._pre_scale, self._pre_shift = scale.to(dtype).unsqueeze(-1), shift.to(dtype).unsqueeze(-1)


class CAMDenseTDNNBlock(nn.Module):
    """`num_layers` dense layers named `tdnnd1..N`; each appends `out_channels` channels to its input."""

    def __init__(
        self,
        num_layers: int,
        in_channels: int,
        out_channels: int,
        bn_channels: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        bias: bool = False,
        config_str: str = "batchnorm-relu",
        memory_efficient: bool = False,
        seg_len: int = 100,
    ):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = in_channels + num_layers * out_channels
        for i in range(num_layers):
            layer = CAMDenseTDNNLayer(
                in_channels + i * out_channels,
                out_channels,
                bn_channels,
                kernel_size,
                stride,
                dilation,
                bias,
                config_str,
                memory_efficient,
                seg_len,
            )
            self.add_module(f"tdnnd{i + 1}", layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            for layer in self.children():
                x = torch.cat([x, layer(x)], dim=1)
            return x
        # Inference: write each layer's output into one preallocated buffer instead of re-copying the growing
        # concatenation at every layer (the values are identical).
        b, c, t = x.shape
        buf = x.new_empty(b, self.out_channels, t)
        buf[:, :c] = x
        for layer in self.children():
            k = layer.cam_layer.linear_local.out_channels
            layer(buf[:, :c], out=buf[:, c : c + k])
            c += k
        return buf


class TransitLayer(nn.Module):
    """BN-ReLU then 1x1 conv: halves the channels between dense blocks."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True, config_str: str = "batchnorm-relu"):
        super().__init__()
        self.nonlinear = make_nonlinear(config_str, in_channels)
        self.linear = nn.Conv1d(in_channels, out_channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.nonlinear(x))

    def fuse_for_inference(self) -> None:
        """Run the conv through oneDNN (its BN-ReLU acts before it: kept)."""
        self.linear = fuse_conv_bn_act(self.linear, None, "none")


class DenseLayer(nn.Module):
    """1x1 conv (on `[B, C]` or `[B, C, T]`) followed by a nonlinearity: the embedding layer."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = False, config_str: str = "batchnorm-relu"):
        super().__init__()
        self.linear = nn.Conv1d(in_channels, out_channels, 1, bias=bias)
        self.nonlinear = make_nonlinear(config_str, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = self.linear(x.unsqueeze(-1)).squeeze(-1)
        else:
            x = self.linear(x)
        return self.nonlinear(x)

    def fuse_for_inference(self) -> None:
        """Fold the BN after the conv into it."""
        self.linear, self.nonlinear = fuse_into_conv(self.linear, self.nonlinear)
