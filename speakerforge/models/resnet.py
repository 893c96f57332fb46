"""ResNet speaker embedding model (2D CNN over the fbank "image", statistics pooling, one or two embedding layers).

The network and every state-dict key are those of 3D-Speaker's `speakerlab.models.resnet.ResNet.ResNet` and of
WeSpeaker's `wespeaker.models.resnet.ResNet` (the same code lineage): `conv1`, `bn1`, `layer{1..4}.{i}.conv1/bn1/
conv2/bn2[/conv3/bn3]/shortcut.{0,1}`, `seg_1`, `seg_bn_1`, `seg_2`. Checkpoints of both load by identity.

The two toolkits differ in their ResNet34 recipes, and both are arguments here:

- 3D-Speaker (`resnet34()` defaults): 192-d embedding, `two_emb_layer=True` (`seg_1 -> ReLU -> BN(affine=False) ->
  seg_2`), 6.34 M parameters (egs/3dspeaker/sv-resnet/conf/resnet.yaml).
- WeSpeaker: `resnet34(embedding_dim=256, two_emb_layer=False)`, the embedding is `seg_1`'s output, 6.63 M.

Pooling is one of the shared layers of `speakerforge.models.pooling` by its reference name (`TSTP` default, `TAP`,
`TSDP`, `ASTP`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from speakerforge.errors import ConfigError
from speakerforge.models.pooling import POOLING_ALIASES, build_pooling
from speakerforge.models.registry import register_model

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet", "resnet34", "speakerlab_key_map"]


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 - 3x3 - 1x1 bottleneck with 4x expansion (WeSpeaker's ResNet-50/101/152/221/293)."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    """Identity (an empty Sequential, as in the references, so keys match) or a strided 1x1 projection."""
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_planes),
    )


_BLOCKS: dict[str, type[BasicBlock] | type[Bottleneck]] = {"basic": BasicBlock, "bottleneck": Bottleneck}
_STAGE_STRIDES = (1, 2, 2, 2)


class ResNet(nn.Module):
    """ResNet over `[B, T, feat_dim]` fbank -> `[B, embedding_dim]`.

    Four stages of `num_blocks` blocks with `m_channels * (1, 2, 4, 8)` channels; the last three halve frequency and
    time. The pooled statistics go through `seg_1` (and, with `two_emb_layer`, ReLU, a non-affine BatchNorm and
    `seg_2`; the embedding is then `seg_2`'s output).
    """

    def __init__(
        self,
        num_blocks: Sequence[int] = (3, 4, 6, 3),
        block: str = "basic",
        m_channels: int = 32,
        feat_dim: int = 80,
        embedding_dim: int = 192,
        pooling: str = "TSTP",
        two_emb_layer: bool = True,
    ):
        super().__init__()
        if block not in _BLOCKS:
            raise ConfigError(f"resnet block must be one of {', '.join(_BLOCKS)}, got {block!r}")
        if len(num_blocks) != 4:
            raise ConfigError(f"resnet num_blocks needs 4 stage sizes, got {list(num_blocks)}")
        pooling = pooling.upper()
        if pooling not in POOLING_ALIASES:
            raise ConfigError(f"resnet pooling must be one of {', '.join(POOLING_ALIASES)}, got {pooling!r}")
        block_cls = _BLOCKS[block]
        self.feat_dim = feat_dim
        self.embedding_dim = embedding_dim
        self.two_emb_layer = two_emb_layer

        self.conv1 = nn.Conv2d(1, m_channels, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(m_channels)
        in_planes = m_channels
        for i, (n, stride) in enumerate(zip(num_blocks, _STAGE_STRIDES)):
            planes = m_channels * 2**i
            blocks = []
            for s in [stride] + [1] * (n - 1):
                blocks.append(block_cls(in_planes, planes, s))
                in_planes = planes * block_cls.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))

        # Frequency after the three stride-2 stages (ceil division; equals the references' feat_dim // 8 when
        # feat_dim is a multiple of 8, and stays right when it is not).
        freq = feat_dim
        for stride in _STAGE_STRIDES:
            freq = (freq - 1) // stride + 1
        stats_in = in_planes * freq
        self.pool = build_pooling(pooling, stats_in)
        self.seg_1 = nn.Linear(stats_in * self.pool.n_stats, embedding_dim)
        if two_emb_layer:
            self.seg_bn_1 = nn.BatchNorm1d(embedding_dim, affine=False)
            self.seg_2 = nn.Linear(embedding_dim, embedding_dim)
        else:
            self.seg_bn_1 = nn.Identity()
            self.seg_2 = nn.Identity()

    def frame_features(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, T, F]` fbank -> `[B, C, F', T']` output of the last stage."""
        out = x.transpose(1, 2).unsqueeze(1)
        out = F.relu(self.bn1(self.conv1(out)))
        return self.layer4(self.layer3(self.layer2(self.layer1(out))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, T, feat_dim]` fbank -> `[B, embedding_dim]` embedding."""
        emb = self.seg_1(self.pool(self.frame_features(x)))
        if self.two_emb_layer:
            emb = self.seg_2(self.seg_bn_1(F.relu(emb)))
        return emb


@register_model("resnet")
def resnet(
    num_blocks: Sequence[int] = (3, 4, 6, 3),
    block: str = "basic",
    m_channels: int = 32,
    feat_dim: int = 80,
    embedding_dim: int = 192,
    pooling: str = "TSTP",
    two_emb_layer: bool = True,
) -> ResNet:
    """ResNet of any depth: `num_blocks` per stage and `block` (`basic` or `bottleneck`; WeSpeaker's ResNet293 is
    `num_blocks=(10, 20, 64, 3), block="bottleneck"`)."""
    return ResNet(num_blocks, block, m_channels, feat_dim, embedding_dim, pooling, two_emb_layer)


@register_model("resnet34")
def resnet34(
    m_channels: int = 32,
    feat_dim: int = 80,
    embedding_dim: int = 192,
    pooling: str = "TSTP",
    two_emb_layer: bool = True,
) -> ResNet:
    """ResNet34 (blocks 3-4-6-3); defaults are 3D-Speaker's recipe, WeSpeaker's is `embedding_dim=256,
    two_emb_layer=False`."""
    return ResNet((3, 4, 6, 3), "basic", m_channels, feat_dim, embedding_dim, pooling, two_emb_layer)


def speakerlab_key_map(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """3D-Speaker (and WeSpeaker) `ResNet` state dict -> ours. The names are identical; drops a `module.` prefix."""
    return {k.removeprefix("module."): v for k, v in state_dict.items()}
