"""ReDimNet2 (Yakovlev et al. 2026, PalabraAI/redimnet2): WeSpeaker's `ReDimNet2B0`..`ReDimNet2B6`, whose B6 it
releases (`voxceleb_redimnet2_B6_LM`, trained on its TF-style 72-bin log mel: `FeatureSpec(kind="tfmel")`).

A "reshape dimensions" network: every stage reads a learned softmax mix of all earlier outputs as a 1D map
`[B, C*F, T]`, reshapes it to 2D `[B, C, F, T]`, downsamples frequency (channels grow by the same factor, so C*F stays
fixed) and time, runs depthwise-separable residual blocks, reshapes back to 1D, runs a 1D time-context block
(ConvNeXt-like 1D convs of widths 7, 19, 31, 59 and one transformer layer, at C*F / `att_red` channels) and
upsamples time back. The mix of every output then meets a 1x1 head, attentive statistics pooling, BN and a linear.

Module and parameter names are WeSpeaker's (`backbone.stem`, `backbone.stage{i}.{j}`, `backbone.fin_wght1d.w`,
`backbone.head`, `pool`, `bn`, `linear`), so its checkpoints load by identity; the constructor covers its defaults
(`block_1d_type="conv+att"`, `block_2d_type="basic_resnet"`, `group_divisor=1`, `fm_weigthing_type="NC"`), the only
settings its B0-B6 use.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from speakerforge.errors import ConfigError
from speakerforge.models.fuse import (
    conv_bn_act,
    fold_bn_into_conv,
    fold_bn_into_linear,
    fuse_conv_bn_act,
    run_in_slices,
)
from speakerforge.models.pooling import build_pooling
from speakerforge.models.registry import register_model

__all__ = ["ReDimNet2", "REDIMNET2_VARIANTS"]

# stage: (freq stride, time stride, blocks, channel expansion, 1D attention reduction). WeSpeaker's tables also list
# 2D kernel sizes, which its "basic_resnet" blocks ignore (they are 3x3).
Stage = tuple[int, int, int, float, int]


# WeSpeaker's `ReDimNet2B{0..6}`: channels C, head width (None: no head), whether the head is 2D, the stages
# fmt: off
REDIMNET2_VARIANTS: dict[str, dict[str, Any]] = {
    "b0": dict(C=12, out_channels=64, two_d=False, stages=(
        (1, 1, 2, 2, 36), (2, 1, 3, 1, 36), (1, 2, 4, 1, 36),
        (2, 1, 5, 1, 36), (1, 2, 4, 1, 18), (2, 1, 3, 1, 18))),
    "b1": dict(C=16, out_channels=64, two_d=False, stages=(
        (1, 1, 2, 2, 32), (2, 1, 3, 1, 32), (1, 2, 4, 1, 32),
        (2, 1, 5, 1, 32), (1, 2, 4, 1, 16), (2, 1, 3, 1, 16))),
    "b2": dict(C=20, out_channels=64, two_d=False, stages=(
        (1, 1, 2, 2, 40), (2, 1, 3, 1, 30), (1, 2, 4, 1, 30),
        (3, 1, 5, 1, 20), (1, 2, 4, 1, 20), (2, 1, 3, 1, 10))),
    "b4": dict(C=32, out_channels=None, two_d=False, stages=(
        (1, 1, 2, 4, 24), (2, 1, 3, 3, 24), (1, 2, 4, 2, 24),
        (2, 1, 5, 1, 24), (1, 2, 4, 1, 24), (2, 1, 3, 1, 24))),
    "b5": dict(C=48, out_channels=256, two_d=False, stages=(
        (1, 1, 2, 4, 48), (2, 1, 3, 3, 48), (1, 2, 4, 2, 48),
        (2, 1, 5, 1, 48), (1, 2, 4, 1, 32), (2, 1, 3, 1, 32))),
    "b6": dict(C=64, out_channels=224, two_d=True, stages=(
        (1, 1, 3, 3, 64), (2, 1, 4, 2, 64), (1, 2, 5, 2, 48),
        (2, 1, 5, 1, 48), (1, 2, 4, 0.75, 32), (2, 1, 3, 0.5, 24))),
}
# fmt: on
REDIMNET2_VARIANTS["b3"] = {**REDIMNET2_VARIANTS["b0"], "C": 24}  # B0's stages, wider


class ChannelNorm(nn.Module):
    """LayerNorm over dim 1 of `[B, C, ...]` (WeSpeaker's `LayerNorm(data_format="channels_first")`, eps 1e-6)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x.dim()  # explicit permutations: `movedim(1, -1)` exports a negative perm that ONNX Runtime refuses
        out = F.layer_norm(x.permute(0, *range(2, d), 1), self.weight.shape, self.weight, self.bias, self.eps)
        return out.permute(0, d - 1, *range(1, d - 1))


class To1d(nn.Module):
    """`[B, C, F, T] -> [B, F*C, T]` (frequency-major, as WeSpeaker's `to1d`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, f, t = x.shape
        return x.permute(0, 2, 1, 3).reshape(b, c * f, t)


class To2d(nn.Module):
    """The inverse of `To1d` for `f` frequency rows of `c` channels."""

    def __init__(self, f: int, c: int):
        super().__init__()
        self.f, self.c = f, c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], self.f, self.c, x.shape[-1]).permute(0, 2, 1, 3)


class MapMix(nn.Module):
    """Softmax-weighted sum of the `n` 1D maps so far, one weight per map and channel (WeSpeaker's `weigth1d`)."""

    def __init__(self, n: int, channels: int):
        super().__init__()
        w = torch.zeros(1, n, channels, 1)
        if n > 1:
            self.w = nn.Parameter(w)
        else:  # a softmax over one map is 1 whatever w holds: a buffer, so nothing counts it as trainable
            self.register_buffer("w", w)

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        w = torch.softmax(self.w, dim=1)
        out = maps[0] * w[:, 0]  # accumulated map by map: stacking them first copies them all (B6: 7 x 4608 x T)
        for i in range(1, len(maps)):
            out = out.addcmul_(maps[i], w[:, i])
        return out


class ResBlock2d(nn.Module):
    """Depthwise-separable residual block: `relu(x + bn2(pw2(dw2(bn1(relu(pw1(dw1(x))))))))` (`ResBasicBlock`)."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)
        self.conv1pw: nn.Module = nn.Conv2d(c, c, 1)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)
        self.conv2pw: nn.Module = nn.Conv2d(c, c, 1)
        self.bn2: nn.Module = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn1(conv_bn_act(self.conv1pw, nn.Identity(), self.conv1(x), "relu"))
        return conv_bn_act(self.conv2pw, self.bn2, self.conv2(out), "relu", residual=x)

    def fuse_for_inference(self) -> None:
        """The ReLU into conv1pw; bn2, the residual add and the ReLU into conv2pw (bn1 follows a ReLU and feeds a
        zero-padded conv: it does not fold exactly)."""
        self.conv1pw = fuse_conv_bn_act(self.conv1pw, None, "relu")
        self.conv2pw, self.bn2 = fuse_conv_bn_act(self.conv2pw, self.bn2, "relu"), nn.Identity()


class ConvBlock2d(nn.Module):
    """Holds the block under WeSpeaker's name (`conv_block`)."""

    def __init__(self, c: int):
        super().__init__()
        self.conv_block = ResBlock2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_block(x)


class ConvNeXt1d(nn.Module):
    """`x + pw(gelu(bn(dwconv(x))))` over time, one depthwise kernel (`ConvNeXtLikeBlock(dim=1)`)."""

    def __init__(self, c: int, kernel: int):
        super().__init__()
        self.dwconvs = nn.ModuleList([nn.Conv1d(c, c, kernel, padding=kernel // 2, groups=c)])
        self.norm: nn.Module = nn.BatchNorm1d(c)
        self.pwconv1 = nn.Conv1d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pwconv1(F.gelu(self.norm(self.dwconvs[0](x))))

    def fuse_for_inference(self) -> None:
        self.dwconvs[0] = fold_bn_into_conv(self.dwconvs[0], cast(nn.BatchNorm1d, self.norm))
        self.norm = nn.Identity()


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate q/k/v/out projections (WeSpeaker's `MultiHeadAttention`)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ConfigError(f"redimnet2: attention width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.k_proj, self.v_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.q_proj, self.out_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (
            p(x).view(b, t, self.heads, d // self.heads).transpose(1, 2)
            for p in (self.q_proj, self.k_proj, self.v_proj)
        )
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(b, t, d))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.intermediate_dense = nn.Linear(dim, hidden)
        self.output_dense = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_dense(F.gelu(self.intermediate_dense(x), approximate="tanh"))


class TransformerLayer(nn.Module):
    """Post-norm transformer layer on `[B, C, T]` (WeSpeaker's `TransformerEncoderLayer`, tanh GELU, eps 1e-6)."""

    def __init__(self, dim: int, hidden: int, heads: int = 4):
        super().__init__()
        self.attention = SelfAttention(dim, heads)
        self.layer_norm = nn.LayerNorm(dim, eps=1e-6)
        self.feed_forward = FeedForward(dim, hidden)
        self.final_layer_norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.transpose(1, 2)
        h = self.layer_norm(h + self.attention(h))
        h = self.final_layer_norm(h + self.feed_forward(h))
        return h.transpose(1, 2)


class TimeContext1d(nn.Module):
    """`x + expand(tcm(reduce(x)))`: the "conv+att" time-context block at `hidden` channels."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.red_dim_conv = nn.Sequential(nn.Conv1d(channels, hidden, 1), ChannelNorm(hidden))
        self.tcm = nn.Sequential(*(ConvNeXt1d(hidden, k) for k in (7, 19, 31, 59)), TransformerLayer(hidden, hidden))
        self.exp_dim_conv = nn.Conv1d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.exp_dim_conv(self.tcm(self.red_dim_conv(x)))


class ReDimNet2Trunk(nn.Module):
    """Log mel `[B, 1, F, T]` -> `[B, out, F', T]` (2D head) or `[B, out, T]`; WeSpeaker's `ReDimNet2` module."""

    def __init__(self, F_: int, C: int, stages: Sequence[Stage], out_channels: int | None, two_d: bool):
        super().__init__()
        width = C * F_  # the 1D maps' channel count, the same after every stage
        self.stem = nn.Sequential(nn.Conv2d(1, C, 3, padding=1), ChannelNorm(C), To1d())
        c, f, total_t = C, F_, 1
        for i, (sf, st, blocks, exp, red) in enumerate(stages):
            total_t *= st
            if f % sf:
                raise ConfigError(f"redimnet2: stage {i} halves {f} frequency rows by {sf}: feat_dim must divide")
            inner = int(sf * c * exp)
            layers: list[nn.Module] = [
                MapMix(i + 1, width),
                To2d(f, c),
                nn.Conv2d(c, inner, (sf, total_t), stride=(sf, total_t), groups=math.gcd(c, inner)),
            ]
            c, f = sf * c, f // sf
            layers += [ConvBlock2d(inner) for _ in range(blocks)]
            if exp != 1:
                layers.append(nn.Sequential(nn.Conv2d(inner, c, 1), nn.BatchNorm2d(c, eps=1e-6)))
            layers += [To1d(), TimeContext1d(width, width // red), nn.Upsample(scale_factor=total_t, mode="nearest")]
            self.add_module(f"stage{i}", nn.Sequential(*layers))
        self.num_stages = len(stages)
        self.time_stride = total_t
        self.fin_wght1d = MapMix(len(stages) + 1, width)
        self.fin_to2d: nn.Module = To2d(f, c) if two_d else nn.Identity()
        self.head: nn.Module = nn.Identity()
        if out_channels is not None:
            self.head = nn.Conv2d(c, out_channels, 1) if two_d else nn.Conv1d(width, out_channels, 1)
        self.out_dim = (out_channels or c) * f if two_d else (out_channels or width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[-1] // self.time_stride * self.time_stride  # the reshapes need whole strides
        maps = [self.stem(x[..., :t])]
        for i in range(self.num_stages):
            maps.append(getattr(self, f"stage{i}")(maps))
        return self.head(self.fin_to2d(self.fin_wght1d(maps)))


@register_model("redimnet2")
class ReDimNet2(nn.Module):
    """ReDimNet2: log mel `[B, T, feat_dim]` -> embedding `[B, embedding_dim]`. `variant` is WeSpeaker's
    B0..B6; `channels` overrides its C (to shrink it for tests)."""

    # Inference: its 2D convs run 1.4x faster channels-last; its 1D maps are wide (B6: 4608 channels), so a batch
    # runs one utterance at a time (a batch of 16 whole was 2x slower per utterance than one alone: memory-bound).
    channels_last_inference = True
    inference_slice_frames = 1
    slice_frames = 0  # set by optimize_for_inference

    def __init__(
        self,
        variant: str = "b6",
        feat_dim: int = 72,
        embedding_dim: int = 192,
        pooling: str = "ASTP",
        channels: int | None = None,
    ):
        super().__init__()
        key = variant.lower()
        if key not in REDIMNET2_VARIANTS:
            raise ConfigError(f"redimnet2 variant {variant!r}: choose from {', '.join(sorted(REDIMNET2_VARIANTS))}")
        v = REDIMNET2_VARIANTS[key]
        self.feat_dim, self.embedding_dim, self.variant = feat_dim, embedding_dim, key
        self.backbone = ReDimNet2Trunk(feat_dim, channels or v["C"], v["stages"], v["out_channels"], v["two_d"])
        out = self.backbone.out_dim
        # WeSpeaker's ASTP: global context (unbiased std + 1e-7), variance floor 1e-7
        self.pool = build_pooling(
            pooling, out, **({"global_context": True, "eps": 1e-7} if pooling.upper() == "ASTP" else {})
        )
        stats = out * int(cast(Any, self.pool).n_stats)
        self.bn: nn.Module = nn.BatchNorm1d(stats)
        self.linear: nn.Module = nn.Linear(stats, embedding_dim)

    def frame_features(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, T, F]` -> the head's output flattened to `[B, D, T']`."""
        out = self.backbone(x.transpose(1, 2).unsqueeze(1))
        return out.flatten(1, 2) if out.dim() == 4 else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, T, feat_dim]` log mel -> `[B, embedding_dim]`."""
        if self.slice_frames and not self.training:
            return run_in_slices(self.embed, x, self.slice_frames)
        return self.embed(x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The forward of one batch, whole."""
        return self.linear(self.bn(self.pool(self.frame_features(x))))

    def fuse_for_inference(self) -> None:
        """The pooled statistics' BN into the linear layer."""
        self.linear = fold_bn_into_linear(self.linear, cast(nn.BatchNorm1d, self.bn), bn_before=True)
        self.bn = nn.Identity()
