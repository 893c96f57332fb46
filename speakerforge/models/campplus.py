"""CAM++: a densely connected TDNN with context-aware masking, on top of a small 2D-CNN front end (FCM).

Same network as 3D-Speaker's `speakerlab.models.campplus.DTDNN.CAMPPlus` (Wang et al., Interspeech 2023), with the
same module names, so 3D-Speaker checkpoints load by identity (`load_state_dict(ckpt)`); see `speakerlab_key_map`.

Registered as `campplus`: `build_model("campplus", embedding_dim=192)`. Released checkpoints: 192-d for the
200k-speaker (zh-cn) models, 512-d for VoxCeleb.

The layers are in `speakerforge.models.campplus_layers` (3D-Speaker's `layers.py`); this module holds the FCM
front end and the network (3D-Speaker's `DTDNN.py`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn as nn

from speakerforge.errors import ConfigError
from speakerforge.models.campplus_layers import (
    BasicResBlock,
    CAMDenseTDNNBlock,
    DenseLayer,
    TDNNLayer,
    TransitLayer,
    fuse_into_conv,
    make_nonlinear,
)
from speakerforge.models.fuse import conv_bn_act, fuse_conv_bn_act, uses_channels_last
from speakerforge.models.pooling import TemporalStatsPool
from speakerforge.models.registry import register_model

__all__ = ["CAMPPlus", "speakerlab_key_map"]


class FCM(nn.Module):
    """Front-end convolution module: 2D ResNet over (freq, time), frequency downsampled 8x, flattened to channels."""

    def __init__(self, num_blocks: Sequence[int] = (2, 2), m_channels: int = 32, feat_dim: int = 80):
        super().__init__()
        self.conv1 = nn.Conv2d(1, m_channels, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(m_channels)
        self.layer1 = self._make_layer(m_channels, m_channels, num_blocks[0], stride=2)
        self.layer2 = self._make_layer(m_channels, m_channels, num_blocks[1], stride=2)
        self.conv2 = nn.Conv2d(m_channels, m_channels, 3, stride=(2, 1), padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(m_channels)
        freq = feat_dim
        for _ in range(3):  # layer1, layer2 and conv2 each halve the frequency axis (rounding up)
            freq = (freq - 1) // 2 + 1
        self.out_channels = m_channels * freq

    @staticmethod
    def _make_layer(in_planes: int, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        blocks = [BasicResBlock(in_planes, planes, stride)]
        blocks += [BasicResBlock(planes, planes, 1) for _ in range(num_blocks - 1)]
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, F, T]` -> `[B, C * F/8, T]`."""
        x = x.unsqueeze(1)
        if uses_channels_last(self.conv2):
            x = x.contiguous(memory_format=torch.channels_last)
        out = conv_bn_act(self.conv1, self.bn1, x, "relu")
        out = conv_bn_act(self.conv2, self.bn2, self.layer2(self.layer1(out)), "relu")
        return out.flatten(1, 2)

    def fuse_for_inference(self) -> None:
        """Fold the stem and exit BNs into their convs, ReLUs as fused post-ops (blocks fold themselves)."""
        self.conv1, self.bn1 = fuse_conv_bn_act(self.conv1, self.bn1, "relu"), nn.Identity()
        self.conv2, self.bn2 = fuse_conv_bn_act(self.conv2, self.bn2, "relu"), nn.Identity()


@register_model("campplus")
class CAMPPlus(nn.Module):
    """CAM++ speaker embedding network: fbank `[B, T, feat_dim]` -> embedding `[B, embedding_dim]`.

    Defaults are the published CAM++ (6.85M parameters at 192-d, 7.18M at 512-d). `m_channels`, `init_channels`,
    `growth_rate`, `bn_size` and `block_layers` shrink it for demos; `memory_efficient` recomputes the dense
    bottleneck in backward (training only, same gradients).
    """

    # oneDNN runs the small-channel 2D convs of the FCM front end several times faster in channels-last layout
    channels_last_inference = True

    def __init__(
        self,
        feat_dim: int = 80,
        embedding_dim: int = 192,
        growth_rate: int = 32,
        bn_size: int = 4,
        init_channels: int = 128,
        m_channels: int = 32,
        fcm_blocks: Sequence[int] = (2, 2),
        block_layers: Sequence[int] = (12, 24, 16),
        block_kernels: Sequence[int] = (3, 3, 3),
        block_dilations: Sequence[int] = (1, 2, 2),
        config_str: str = "batchnorm-relu",
        memory_efficient: bool = True,
        seg_len: int = 100,
        stats_eps: float = 0.0,
    ):
        super().__init__()
        if not len(block_layers) == len(block_kernels) == len(block_dilations):
            raise ConfigError("block_layers, block_kernels and block_dilations must have the same length")
        self.feat_dim = feat_dim
        self.embedding_dim = embedding_dim

        self.head = FCM(num_blocks=fcm_blocks, m_channels=m_channels, feat_dim=feat_dim)
        channels = self.head.out_channels
        self.xvector = nn.Sequential(
            OrderedDict(tdnn=TDNNLayer(channels, init_channels, 5, stride=2, padding=-1, config_str=config_str))
        )
        channels = init_channels
        for i, (num_layers, kernel, dilation) in enumerate(zip(block_layers, block_kernels, block_dilations), 1):
            block = CAMDenseTDNNBlock(
                num_layers,
                channels,
                growth_rate,
                bn_size * growth_rate,
                kernel,
                dilation=dilation,
                config_str=config_str,
                memory_efficient=memory_efficient,
                seg_len=seg_len,
            )
            self.xvector.add_module(f"block{i}", block)
            channels = block.out_channels
            self.xvector.add_module(
                f"transit{i}", TransitLayer(channels, channels // 2, bias=False, config_str=config_str)
            )
            channels //= 2
        self.xvector.add_module("out_nonlinear", make_nonlinear(config_str, channels))
        # 3D-Speaker's StatsPool has no variance floor; WeSpeaker's CAM++ pools with its TSTP (stats_eps=1e-7)
        self.xvector.add_module("stats", TemporalStatsPool(eps=stats_eps))
        self.xvector.add_module("dense", DenseLayer(channels * 2, embedding_dim, config_str="batchnorm_"))

        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, T, feat_dim]` -> `[B, embedding_dim]`."""
        return self.xvector(self.head(x.transpose(1, 2)))

    def fuse_for_inference(self) -> None:
        """Fold the output BN-ReLU's BN into the last transit conv (the layers fold their own)."""
        last_transit = [m for name, m in self.xvector.named_children() if name.startswith("transit")][-1]
        last_transit.linear, self.xvector.out_nonlinear = fuse_into_conv(
            last_transit.linear, self.xvector.out_nonlinear
        )


def speakerlab_key_map(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """3D-Speaker `CAMPPlus` state dict -> ours. The names are identical; this only drops a `module.` prefix."""
    return {k.removeprefix("module."): v for k, v in state_dict.items()}
