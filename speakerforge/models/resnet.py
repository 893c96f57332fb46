"""ResNet speaker embedding model (2D CNN over the fbank "image", statistics pooling, one or two embedding layers).

The network and every state-dict key are those of 3D-Speaker's `speakerlab.models.resnet.ResNet.ResNet` and of
WeSpeaker's `wespeaker.models.resnet.ResNet` (the same code lineage): `conv1`, `bn1`, `layer{1..4}.{i}.conv1/bn1/
conv2/bn2[/conv3/bn3]/shortcut.{0,1}`, `seg_1`, `seg_bn_1`, `seg_2`. Checkpoints of both load by identity.

The two toolkits differ in their ResNet34 recipes, and both are arguments here:

- 3D-Speaker (`resnet34()` defaults): 192-d embedding, `two_emb_layer=True` (`seg_1 -> ReLU -> BN(affine=False) ->
  seg_2`), 6.34 M parameters (egs/3dspeaker/sv-resnet/conf/resnet.yaml).
- WeSpeaker: `resnet34(embedding_dim=256, two_emb_layer=False)`, the embedding is `seg_1`'s output, 6.63 M.

Depth is an argument (`resnet(depth=34|221|293...)`: WeSpeaker's ResNet18-293 stage sizes and blocks). With
`simam=True` every block applies SimAM (parameter-free attention) to its residual branch before the add: WeSpeaker's
`SimAM_ResNet34_ASP` / `SimAM_ResNet100_ASP` (VoxBlink2 models) are `resnet(depth=34|100, simam=True,
m_channels=64, embedding_dim=256, pooling="ASP", two_emb_layer=False)`; their checkpoints name the trunk `front.*`,
the projections `downsample`, the pooling `pooling.attention.{0,2,3}` and the embedding layer `bottleneck`, which
`speakerforge.models.convert` maps.

Pooling is one of the shared layers of `speakerforge.models.pooling` by its reference name (`TSTP` default, `TAP`,
`TSDP`, `ASTP`, `ASP`).

For inference, `fuse_for_inference` folds every BatchNorm into its conv with the ReLU and residual add as oneDNN
post-ops, and the model runs channels-last (`speakerforge.models.fuse`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from speakerforge.errors import ConfigError
from speakerforge.models.fuse import (
    conv_bn_act,
    fuse_conv_bn_act,
    uses_channels_last,
)
from speakerforge.models.pooled import PooledEmbedding2d
from speakerforge.models.pooling import POOLING_ALIASES
from speakerforge.models.registry import register_model

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "RESNET_DEPTHS", "resnet", "resnet34", "simam", "speakerlab_key_map"]

# depth -> (blocks per stage, block): WeSpeaker's ResNet18..293 (`wespeaker/models/resnet.py`) and the basic-block
# ResNet100 of its SimAM models (`samresnet.py`).
RESNET_DEPTHS: dict[int, tuple[tuple[int, int, int, int], str]] = {
    18: ((2, 2, 2, 2), "basic"),
    34: ((3, 4, 6, 3), "basic"),
    50: ((3, 4, 6, 3), "bottleneck"),
    100: ((6, 16, 24, 3), "basic"),
    101: ((3, 4, 23, 3), "bottleneck"),
    152: ((3, 8, 36, 3), "bottleneck"),
    221: ((6, 16, 48, 3), "bottleneck"),
    293: ((10, 20, 64, 3), "bottleneck"),
}


def simam(x: torch.Tensor, lambda_p: float = 1e-4) -> torch.Tensor:
    """SimAM (Yang et al., 2021): each activation weighted by the sigmoid of its energy over its channel's map."""
    n = x.shape[2] * x.shape[3] - 1
    d = (x - x.mean(dim=(2, 3), keepdim=True)).pow(2)
    v = d.sum(dim=(2, 3), keepdim=True) / n
    return x * torch.sigmoid(d / (4 * (v + lambda_p)) + 0.5)


class _Block(nn.Module):
    """What both block kinds share: the residual tail (SimAM optional) and folding for inference."""

    shortcut: nn.Sequential
    use_simam: bool

    def _finish(self, conv: nn.Module, bn: nn.Module, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """`relu(branch + shortcut(x))`, the branch being `bn(conv(out))`, SimAM-weighted if asked."""
        if self.use_simam:
            y = simam(conv_bn_act(conv, bn, out, "none"))
            return F.relu(y + self.shortcut(x))
        return conv_bn_act(conv, bn, out, "relu", residual=self.shortcut(x))

    def _fuse_shortcut(self) -> None:
        if len(self.shortcut) == 2:  # through oneDNN too: its output is the residual post-op's operand, same layout
            self.shortcut = nn.Sequential(fuse_conv_bn_act(self.shortcut[0], self.shortcut[1], "none"), nn.Identity())


class BasicBlock(_Block):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34/100)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, use_simam: bool = False):
        super().__init__()
        self.use_simam = use_simam
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = conv_bn_act(self.conv1, self.bn1, x, "relu")
        return self._finish(self.conv2, self.bn2, out, x)

    def fuse_for_inference(self) -> None:
        """Fold both BNs into their convs, the ReLU (and the residual add) as fused post-ops (eval mode only)."""
        self.conv1, self.bn1 = fuse_conv_bn_act(self.conv1, self.bn1, "relu"), nn.Identity()
        act = "none" if self.use_simam else "relu"
        self.conv2, self.bn2 = fuse_conv_bn_act(self.conv2, self.bn2, act), nn.Identity()
        self._fuse_shortcut()


class Bottleneck(_Block):
    """1x1 - 3x3 - 1x1 bottleneck with 4x expansion (WeSpeaker's ResNet-50/101/152/221/293)."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, use_simam: bool = False):
        super().__init__()
        self.use_simam = use_simam
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = conv_bn_act(self.conv1, self.bn1, x, "relu")
        out = conv_bn_act(self.conv2, self.bn2, out, "relu")
        return self._finish(self.conv3, self.bn3, out, x)

    def fuse_for_inference(self) -> None:
        """Fold the three BNs into their convs, the ReLUs (and the residual add) as fused post-ops (eval mode)."""
        self.conv1, self.bn1 = fuse_conv_bn_act(self.conv1, self.bn1, "relu"), nn.Identity()
        self.conv2, self.bn2 = fuse_conv_bn_act(self.conv2, self.bn2, "relu"), nn.Identity()
        act = "none" if self.use_simam else "relu"
        self.conv3, self.bn3 = fuse_conv_bn_act(self.conv3, self.bn3, act), nn.Identity()
        self._fuse_shortcut()


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


class ResNet(PooledEmbedding2d):
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
        simam: bool = False,
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
        self.simam = simam

        self.conv1 = nn.Conv2d(1, m_channels, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(m_channels)
        in_planes = m_channels
        for i, (n, stride) in enumerate(zip(num_blocks, _STAGE_STRIDES)):
            planes = m_channels * 2**i
            blocks = []
            for s in [stride] + [1] * (n - 1):
                blocks.append(block_cls(in_planes, planes, s, simam))
                in_planes = planes * block_cls.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))

        # Frequency after the three stride-2 stages (ceil division; equals the references' feat_dim // 8 when
        # feat_dim is a multiple of 8, and stays right when it is not).
        freq = feat_dim
        for stride in _STAGE_STRIDES:
            freq = (freq - 1) // stride + 1
        stats_in = in_planes * freq
        self.build_embedding_layers(pooling, stats_in, embedding_dim, two_emb_layer)

    def frame_features(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, T, F]` fbank -> `[B, C, F', T']` output of the last stage."""
        out = x.transpose(1, 2).unsqueeze(1)
        if uses_channels_last(self.layer1[0].conv2):
            out = out.contiguous(memory_format=torch.channels_last)
        out = conv_bn_act(self.conv1, self.bn1, out, "relu")
        return self.layer4(self.layer3(self.layer2(self.layer1(out))))

    def fuse_for_inference(self) -> None:
        """Fold the stem BN into its conv, and the second embedding layer's BN into `seg_2` (blocks fold their own)."""
        self.conv1, self.bn1 = fuse_conv_bn_act(self.conv1, self.bn1, "relu"), nn.Identity()
        self.fold_embedding_layers()


@register_model("resnet")
def resnet(
    num_blocks: Sequence[int] = (3, 4, 6, 3),
    block: str = "basic",
    m_channels: int = 32,
    feat_dim: int = 80,
    embedding_dim: int = 192,
    pooling: str = "TSTP",
    two_emb_layer: bool = True,
    depth: int = 0,
    simam: bool = False,
) -> ResNet:
    """ResNet of any depth: `depth` (18, 34, 50, 100, 101, 152, 221, 293; sets `num_blocks` and `block`), or
    `num_blocks` per stage and `block` (`basic` or `bottleneck`); `simam` for WeSpeaker's SimAM-ResNets."""
    if depth:
        if depth not in RESNET_DEPTHS:
            raise ConfigError(f"resnet depth must be one of {', '.join(map(str, RESNET_DEPTHS))}, got {depth}")
        num_blocks, block = RESNET_DEPTHS[depth]
    return ResNet(num_blocks, block, m_channels, feat_dim, embedding_dim, pooling, two_emb_layer, simam)


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
