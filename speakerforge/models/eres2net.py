"""ERes2Net family: Res2Net, ERes2Net and ERes2NetV2 (one network with the fusion parts as arguments).

ERes2Net is a Res2Net with local (inside each block) and global (across stages) attentional feature fusion. Same
network as 3D-Speaker's `speakerlab.models.eres2net.ERes2Net.ERes2Net` (Chen et al., Interspeech 2023) and, with
`variant="huge"`, its `ERes2Net_huge.ERes2Net`; with `variant="v2"` its `ERes2NetV2.ERes2NetV2` (global fusion of the
last two stages only), with `variant="res2net"` its `res2net.Res2Net.Res2Net` (no fusion; the last split of each block
passes through unconvolved). Module names are identical, so 3D-Speaker checkpoints load by identity; see
`speakerlab_key_map`. WeSpeaker's `ERes2Net` is the same network under other names in its fusion blocks (mapped by
`speakerforge.models.convert`).

Registered as `eres2net` (and `eres2netv2`, `res2net`: the same class with that variant). Variants (all default to
192-d embeddings; pass `embedding_dim=512` for the released 3D-Speaker-dataset base/large checkpoints):

- `base`:  m_channels=32, expansion=2, base_width=32, scale=2 (3D-Speaker `conf/eres2net.yaml`, 6.6M at 192-d)
- `large`: m_channels=64, otherwise as base ("change m_channels from 32 to 64" in that conf; 22.5M at 192-d)
- `huge`:  m_channels=64, expansion=4, base_width=24, scale=3 (`ERes2Net_huge.py`, the 200k-speaker zh-cn model;
  55.2M at 192-d; WeSpeaker's `ERes2Net34_aug`)
- `v2`:    m_channels=64, expansion=2, base_width=26, scale=2, ERes2NetV2 fusion (17.9M at 192-d)
- `v2_w24s4ep4`: ERes2NetV2 with expansion=4, base_width=24, scale=4
- `res2net`: m_channels=32, expansion=2, base_width=32, scale=2, no fusion (3D-Speaker's Res2Net, 4.03M)

Any of `m_channels`, `expansion`, `base_width`, `scale`, `num_blocks` given explicitly overrides the variant.
`pooling` is a shared layer by its reference name (`TSTP` default, `TAP`, `TSDP`, `ASTP`; speakerlab's
`pooling_func`), `two_emb_layer` adds speakerlab's second embedding layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn

from speakerforge.errors import ConfigError
from speakerforge.models.fuse import (
    conv_bn_act,
    fuse_conv_bn_act,
    uses_channels_last,
)
from speakerforge.models.pooled import PooledEmbedding2d
from speakerforge.models.registry import register_model

__all__ = ["ERes2Net", "ERES2NET_VARIANTS", "speakerlab_key_map"]

ERES2NET_VARIANTS: dict[str, dict[str, int]] = {
    "base": dict(m_channels=32, expansion=2, base_width=32, scale=2),
    "large": dict(m_channels=64, expansion=2, base_width=32, scale=2),
    "huge": dict(m_channels=64, expansion=4, base_width=24, scale=3),
    "v2": dict(m_channels=64, expansion=2, base_width=26, scale=2),
    "v2_w24s4ep4": dict(m_channels=64, expansion=4, base_width=24, scale=4),
    "res2net": dict(m_channels=32, expansion=2, base_width=32, scale=2),
}
# Which fusion each variant has: `all` (ERes2Net: AFF inside the blocks of stages 3-4, and every stage fused into the
# next), `last` (ERes2NetV2: AFF blocks, only stage 3 fused into stage 4), `none` (Res2Net).
FUSIONS = ("all", "last", "none")
_VARIANT_FUSION = {"v2": "last", "v2_w24s4ep4": "last", "res2net": "none"}

# Inside its blocks ERes2Net clips activations at 20: the reference's `ReLU` is a Hardtanh(0, 20). In
# `conv_bn_act` this activation is called "relu20".
RELU20 = "relu20"


class AFF(nn.Module):
    """Attentional feature fusion of `x` and `ds_y` (same shape): `x * a + ds_y * (2 - a)`, `a = 1 + tanh(att)`."""

    def __init__(self, channels: int = 64, r: int = 4):
        super().__init__()
        inter = channels // r
        self.local_att = nn.Sequential(
            nn.Conv2d(channels * 2, inter, 1),
            nn.BatchNorm2d(inter),
            nn.SiLU(inplace=True),
            nn.Conv2d(inter, channels, 1),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor, ds_y: torch.Tensor) -> torch.Tensor:
        conv1, bn1, _, conv2, bn2 = self.local_att  # the SiLU module is applied by conv_bn_act
        t = conv_bn_act(conv1, bn1, torch.cat((x, ds_y), dim=1), "silu")
        t = conv_bn_act(conv2, bn2, t, "tanh")
        # x * (1 + t) + ds_y * (1 - t), rearranged to one fused multiply-add
        return (x + ds_y).addcmul_(t, x - ds_y)

    def fuse_for_inference(self) -> None:
        """Fold both BNs of the attention branch into its convs, with SiLU and tanh as fused post-ops."""
        conv1, bn1, act, conv2, bn2 = self.local_att
        self.local_att = nn.Sequential(
            fuse_conv_bn_act(conv1, bn1, "silu"),
            nn.Identity(),
            act,
            fuse_conv_bn_act(conv2, bn2, "tanh"),
            nn.Identity(),
        )


class ERes2NetBlock(nn.Module):
    """Res2Net basic block: 1x1 conv, `scale` hierarchical 3x3 branches, 1x1 conv, residual.

    With `aff`, branch i receives AFF(previous branch, split i) instead of their sum (local feature fusion). With
    `passthrough` (plain Res2Net), only the first `scale - 1` splits are convolved and the last one is concatenated
    as it is.
    """

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        base_width: int = 32,
        scale: int = 2,
        expansion: int = 2,
        aff: bool = False,
        passthrough: bool = False,
    ):
        super().__init__()
        width = int(math.floor(planes * (base_width / 64.0)))
        self.width = width
        self.scale = scale
        self.n_convs = scale - 1 if passthrough else scale
        self.conv1 = nn.Conv2d(in_planes, width * scale, 1, stride=stride, bias=False)
        self.bn1 = nn.BatchNorm2d(width * scale)
        self.convs = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1, bias=False) for _ in range(self.n_convs))
        self.bns = nn.ModuleList(nn.BatchNorm2d(width) for _ in range(self.n_convs))
        if aff:
            self.fuse_models = nn.ModuleList(AFF(channels=width) for _ in range(scale - 1))
        else:
            self.fuse_models = None
        self.conv3 = nn.Conv2d(width * scale, planes * expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * expansion)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes * expansion:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes * expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * expansion),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spx = torch.split(conv_bn_act(self.conv1, self.bn1, x, RELU20), self.width, dim=1)
        outs = []
        sp = spx[0]
        for i in range(self.n_convs):
            if i > 0:
                sp = self.fuse_models[i - 1](sp, spx[i]) if self.fuse_models is not None else sp + spx[i]
            sp = conv_bn_act(self.convs[i], self.bns[i], sp, RELU20)
            outs.append(sp)
        if self.n_convs < self.scale:
            outs.append(spx[-1])
        return conv_bn_act(self.conv3, self.bn3, torch.cat(outs, dim=1), RELU20, residual=self.shortcut(x))

    def fuse_for_inference(self) -> None:
        """Fold every BN into its conv, activations and the residual add as fused post-ops (AFFs fold their own)."""
        self.conv1, self.bn1 = fuse_conv_bn_act(self.conv1, self.bn1, RELU20), nn.Identity()
        for i in range(self.n_convs):
            self.convs[i], self.bns[i] = fuse_conv_bn_act(self.convs[i], self.bns[i], RELU20), nn.Identity()
        self.conv3, self.bn3 = fuse_conv_bn_act(self.conv3, self.bn3, RELU20), nn.Identity()
        if len(self.shortcut) == 2:  # through oneDNN too: its output is the residual post-op's operand, same layout
            self.shortcut = nn.Sequential(fuse_conv_bn_act(self.shortcut[0], self.shortcut[1], "none"), nn.Identity())


@register_model("eres2net")
class ERes2Net(PooledEmbedding2d):
    """ERes2Net speaker embedding network: fbank `[B, T, feat_dim]` -> embedding `[B, embedding_dim]`."""

    def __init__(
        self,
        variant: str = "base",
        feat_dim: int = 80,
        embedding_dim: int = 192,
        m_channels: int | None = None,
        expansion: int | None = None,
        base_width: int | None = None,
        scale: int | None = None,
        num_blocks: Sequence[int] = (3, 4, 6, 3),
        pooling: str = "TSTP",
        two_emb_layer: bool = False,
        fusion: str | None = None,
    ):
        super().__init__()
        if variant not in ERES2NET_VARIANTS:
            raise ConfigError(f"unknown ERes2Net variant {variant!r}; known: {', '.join(ERES2NET_VARIANTS)}")
        if len(num_blocks) != 4:
            raise ConfigError(f"num_blocks needs 4 stage depths, got {list(num_blocks)}")
        preset = ERES2NET_VARIANTS[variant]
        m = preset["m_channels"] if m_channels is None else m_channels
        self.expansion = preset["expansion"] if expansion is None else expansion
        self.base_width = preset["base_width"] if base_width is None else base_width
        self.scale = preset["scale"] if scale is None else scale
        self.fusion = _VARIANT_FUSION.get(variant, "all") if fusion is None else fusion
        if self.fusion not in FUSIONS:
            raise ConfigError(f"ERes2Net fusion must be one of {', '.join(FUSIONS)}, got {self.fusion!r}")
        self.variant = variant
        self.m_channels = m
        self.feat_dim = feat_dim
        self.embedding_dim = embedding_dim

        self.conv1 = nn.Conv2d(1, m, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(m)
        self._in_planes = m
        aff = self.fusion != "none"
        self.layer1 = self._make_layer(m, num_blocks[0], stride=1, aff=False)
        self.layer2 = self._make_layer(m * 2, num_blocks[1], stride=2, aff=False)
        self.layer3 = self._make_layer(m * 4, num_blocks[2], stride=2, aff=aff)
        self.layer4 = self._make_layer(m * 8, num_blocks[3], stride=2, aff=aff)

        e = self.expansion
        self._build_fusion(m * e)
        freq = feat_dim
        for _ in range(3):  # three stride-2 stages
            freq = (freq - 1) // 2 + 1
        pool_in = m * 8 * e * freq
        self.build_embedding_layers(pooling, pool_in, embedding_dim, two_emb_layer)

    def _build_fusion(self, c: int) -> None:
        """The fusion modules of the variant over stage widths c, 2c, 4c, 8c (c = m_channels x expansion)."""
        if self.fusion == "all":
            # global feature fusion: each stage's output, downsampled, is fused bottom-up into the next one's
            self.layer1_downsample = nn.Conv2d(c, c * 2, 3, stride=2, padding=1, bias=False)
            self.layer2_downsample = nn.Conv2d(c * 2, c * 4, 3, stride=2, padding=1, bias=False)
            self.layer3_downsample = nn.Conv2d(c * 4, c * 8, 3, stride=2, padding=1, bias=False)
            self.fuse_mode12 = AFF(channels=c * 2)
            self.fuse_mode123 = AFF(channels=c * 4)
            self.fuse_mode1234 = AFF(channels=c * 8)
        elif self.fusion == "last":  # ERes2NetV2: stage 3, downsampled, fused into stage 4
            self.layer3_ds = nn.Conv2d(c * 4, c * 8, 3, stride=2, padding=1, bias=False)
            self.fuse34 = AFF(channels=c * 8)

    def _make_layer(self, planes: int, num_blocks: int, stride: int, aff: bool) -> nn.Sequential:
        blocks = []
        for s in [stride] + [1] * (num_blocks - 1):
            blocks.append(
                ERes2NetBlock(
                    self._in_planes,
                    planes,
                    s,
                    self.base_width,
                    self.scale,
                    self.expansion,
                    aff,
                    passthrough=self.fusion == "none",
                )
            )
            self._in_planes = planes * self.expansion
        return nn.Sequential(*blocks)

    def frame_features(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, T, F]` fbank -> `[B, C, F', T']`: the last stage, fused with the earlier ones as the variant does."""
        x = x.transpose(1, 2).unsqueeze(1)  # [B, 1, F, T]
        if uses_channels_last(self.layer1[0].conv3):
            x = x.contiguous(memory_format=torch.channels_last)
        out1 = self.layer1(conv_bn_act(self.conv1, self.bn1, x, "relu"))
        out2 = self.layer2(out1)
        if self.fusion == "all":
            fuse12 = self.fuse_mode12(out2, self.layer1_downsample(out1))
            out3 = self.layer3(out2)
            fuse123 = self.fuse_mode123(out3, self.layer2_downsample(fuse12))
            out4 = self.layer4(out3)
            top = self.fuse_mode1234(out4, self.layer3_downsample(fuse123))
        elif self.fusion == "last":
            out3 = self.layer3(out2)
            top = self.fuse34(self.layer4(out3), self.layer3_ds(out3))
        else:
            top = self.layer4(self.layer3(out2))
        return top

    def fuse_for_inference(self) -> None:
        """Fold the stem BN into its conv, and the second embedding layer's BN into `seg_2` (blocks fold their own);
        all convs run through oneDNN."""
        self.conv1, self.bn1 = fuse_conv_bn_act(self.conv1, self.bn1, "relu"), nn.Identity()
        for name in ("layer1_downsample", "layer2_downsample", "layer3_downsample", "layer3_ds"):
            if hasattr(self, name):
                setattr(self, name, fuse_conv_bn_act(getattr(self, name), None, "none"))
        self.fold_embedding_layers()


@register_model("eres2netv2")
def eres2netv2(variant: str = "v2", **kwargs: object) -> ERes2Net:
    """ERes2NetV2 (3D-Speaker's recommended model): `variant` `v2` (base_width 26, scale 2, expansion 2) or
    `v2_w24s4ep4`; other arguments as `eres2net`."""
    if variant not in _VARIANT_FUSION or _VARIANT_FUSION[variant] != "last":
        raise ConfigError(f"eres2netv2 variant must be v2 or v2_w24s4ep4, got {variant!r}")
    return ERes2Net(variant=variant, **kwargs)  # type: ignore[arg-type]


@register_model("res2net")
def res2net(**kwargs: object) -> ERes2Net:
    """3D-Speaker's Res2Net (`speakerlab.models.res2net.Res2Net`): ERes2Net without fusion; arguments as `eres2net`."""
    return ERes2Net(variant="res2net", **kwargs)  # type: ignore[arg-type]


def speakerlab_key_map(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """3D-Speaker `ERes2Net` state dict -> ours. The names are identical; this only drops a `module.` prefix."""
    return {k.removeprefix("module."): v for k, v in state_dict.items()}
