"""Gemini DF-ResNet (Liu et al., "Golden Gemini is All You Need", 2023, on DF-ResNet, Interspeech 2022): WeSpeaker's
`Gemini_DF_ResNet{60,114,183,237}`, whose 114-layer model WeSpeaker releases (`voxceleb_gemini_dfresnet114_LM`).

A depth-first ResNet: a stem, then four stages, each a downsampling 3x3 conv (+BN) and a stack of inverted
bottlenecks (1x1 up to 4x the width, depthwise 3x3, 1x1 down, residual). Every stage halves frequency; only the
second halves time (the "T14c" stride plan of Golden Gemini). Our module names are WeSpeaker's
(`downsample_layers.i.{0,1}`, `stages.i.j.conv1..bn3`, `seg_1`), so its checkpoints load by identity.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
import torch.nn as nn

from speakerforge.errors import ConfigError
from speakerforge.models.fuse import conv_bn_act, fuse_conv_bn_act, uses_channels_last
from speakerforge.models.pooled import PooledEmbedding2d
from speakerforge.models.registry import register_model

__all__ = ["GeminiDFResNet", "InvertedBottleneck", "DFRESNET_DEPTHS"]

# WeSpeaker's named depths (separate downsampling layers counted in): blocks per stage
DFRESNET_DEPTHS = {60: (3, 3, 9, 3), 114: (3, 3, 27, 3), 183: (3, 8, 45, 3), 237: (3, 8, 63, 3)}
DFRESNET_DIMS = (32, 32, 64, 128, 256)
_STRIDES = ((2, 1), (2, 2), (2, 1), (2, 1))  # (frequency, time) of each stage's downsampling conv


class InvertedBottleneck(nn.Module):
    """`relu(x + bn3(conv3(relu(bn2(dwconv2(relu(bn1(conv1(x)))))))))`, 4x wider inside."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv1: nn.Module = nn.Conv2d(dim, 4 * dim, 1, bias=False)
        self.bn1: nn.Module = nn.BatchNorm2d(4 * dim)
        self.conv2: nn.Module = nn.Conv2d(4 * dim, 4 * dim, 3, padding=1, groups=4 * dim, bias=False)
        self.bn2: nn.Module = nn.BatchNorm2d(4 * dim)
        self.conv3: nn.Module = nn.Conv2d(4 * dim, dim, 1, bias=False)
        self.bn3: nn.Module = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = conv_bn_act(self.conv1, self.bn1, x, "relu")
        out = conv_bn_act(self.conv2, self.bn2, out, "relu")
        return conv_bn_act(self.conv3, self.bn3, out, "relu", residual=x)

    def fuse_for_inference(self) -> None:
        """Each BN into its conv; the activations and the residual add as fused post-ops."""
        self.conv1, self.bn1 = fuse_conv_bn_act(self.conv1, self.bn1, "relu"), nn.Identity()
        self.conv2, self.bn2 = fuse_conv_bn_act(self.conv2, self.bn2, "relu"), nn.Identity()
        self.conv3, self.bn3 = fuse_conv_bn_act(self.conv3, self.bn3, "relu"), nn.Identity()


@register_model("gemini_dfresnet")
class GeminiDFResNet(PooledEmbedding2d):
    """Gemini DF-ResNet: fbank `[B, T, feat_dim]` -> embedding `[B, embedding_dim]`. `depth` picks WeSpeaker's
    block counts (60, 114, 183, 237); `depths` and `dims` (stem width, then the four stage widths) override them."""

    def __init__(
        self,
        depth: int = 114,
        feat_dim: int = 80,
        embedding_dim: int = 256,
        pooling: str = "TSTP_WS",
        two_emb_layer: bool = False,
        depths: Sequence[int] | None = None,
        dims: Sequence[int] = DFRESNET_DIMS,
    ):
        super().__init__()
        if depths is None and depth not in DFRESNET_DEPTHS:
            raise ConfigError(f"gemini_dfresnet depth must be one of {sorted(DFRESNET_DEPTHS)}, got {depth}")
        blocks = tuple(depths) if depths is not None else DFRESNET_DEPTHS[depth]
        if len(blocks) != 4 or len(dims) != 5:
            raise ConfigError(f"gemini_dfresnet needs 4 depths and 5 dims, got {list(blocks)} and {list(dims)}")
        self.feat_dim, self.embedding_dim = feat_dim, embedding_dim
        stem = nn.Sequential(nn.Conv2d(1, dims[0], 3, padding=1, bias=False), nn.BatchNorm2d(dims[0]), nn.ReLU())
        self.downsample_layers = nn.ModuleList([stem])
        for i, stride in enumerate(_STRIDES):
            conv = nn.Conv2d(dims[i], dims[i + 1], 3, stride=stride, padding=1, bias=False)
            self.downsample_layers.append(nn.Sequential(conv, nn.BatchNorm2d(dims[i + 1])))
        self.stages = nn.ModuleList(
            nn.Sequential(*(InvertedBottleneck(dims[i + 1]) for _ in range(n))) for i, n in enumerate(blocks)
        )
        freq = feat_dim
        for f, _t in _STRIDES:
            freq = (freq - 1) // f + 1
        self.build_embedding_layers(pooling, dims[-1] * freq, embedding_dim, two_emb_layer)

    def frame_features(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, T, F]` fbank -> `[B, C, F / 16, T / 2]`."""
        out = x.transpose(1, 2).unsqueeze(1)
        layers = [cast(nn.Sequential, seq) for seq in self.downsample_layers]
        if uses_channels_last(layers[1][0]):
            out = out.contiguous(memory_format=torch.channels_last)
        out = conv_bn_act(layers[0][0], layers[0][1], out, "relu")
        for down, stage in zip(layers[1:], self.stages):
            out = stage(conv_bn_act(down[0], down[1], out, "none"))
        return out

    def fuse_for_inference(self) -> None:
        """Fold the stem's and each downsampling conv's BN (blocks fold their own) and `seg_bn_1`."""
        for i, seq in enumerate(cast(nn.Sequential, s) for s in self.downsample_layers):
            act = "relu" if i == 0 else "none"
            self.downsample_layers[i] = nn.Sequential(
                fuse_conv_bn_act(seq[0], seq[1], act), nn.Identity(), *list(seq)[2:]
            )
        self.fold_embedding_layers()
