"""ECAPA-TDNN speaker embedding model: one implementation for supervised training, SSL backbones and imports.

Layout (Desplanques et al., 2020): a TDNN layer, three SE-Res2Net blocks with growing dilation, multi-layer feature
aggregation (MFA: the three blocks' outputs concatenated, 1x1 conv), attentive statistics pooling, BatchNorm and a
linear embedding layer.

`variant="3dspeaker"` (default) is 3D-Speaker's `speakerlab.models.ecapa_tdnn.ECAPA_TDNN.ECAPA_TDNN` (itself
SpeechBrain's), with identical state-dict keys except the pooling, which is the shared
`speakerforge.models.pooling.AttentiveStatsPool`: `asp.tdnn.conv.conv.*` -> `asp.linear1.*`, `asp.tdnn.norm.norm.*`
-> `asp.norm.*`, `asp.conv.conv.*` -> `asp.linear2.*` (`speakerforge.models.convert` maps them). 3D-Speaker's
ECAPA-512 is `channels=512` (MFA 1536), its ECAPA-1024 `channels=1024` (MFA 3072, 20.8 M parameters).
Its RDINO/SDPN copies are the same network and keys with `embedding_dim=512, input_norm=True` (they also take the
log of linear mel input and expect `[B, F, T]`; our input is already log fbank `[B, T, F]`).

`variant="wespeaker"` is WeSpeaker's `ECAPA_TDNN` (lawlict's layout), which differs in more than names: zero instead
of reflect padding, the MFA conv always outputs 1536 channels and has no BatchNorm, the pooling attention has no
ReLU/BatchNorm and its global context (WeSpeaker's `GLOB` models only: `global_context=True`) uses the unbiased std.
Its Res2Net splits are the same computation with the chunks rotated by one, which the checkpoint converter absorbs by
permuting weights, so one Res2Net implementation serves both.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from speakerforge.errors import CheckpointError, ConfigError
from speakerforge.models.pooling import AttentiveStatsPool
from speakerforge.models.registry import register_model

__all__ = [
    "ECAPATDNN",
    "ecapa_tdnn",
    "relative_length_mask",
    "speakerlab_key_map",
    "wespeaker_import",
    "to_wespeaker_layout",
]

_VARIANTS = ("3dspeaker", "wespeaker")
_PAD_MODES = {"reflect": "reflect", "zeros": "constant"}


class SameConv1d(nn.Module):
    """1D convolution whose output keeps the input length, padding with `padding_mode` (`reflect` or `zeros`).

    The convolution sits in `.conv`, so parameters are `*.conv.weight` as in SpeechBrain and 3D-Speaker.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        dilation: int = 1,
        bias: bool = True,
        padding_mode: str = "reflect",
    ):
        super().__init__()
        total = dilation * (kernel_size - 1)
        if total % 2:
            raise ConfigError(
                f"'same' padding needs an odd effective kernel, got kernel {kernel_size}, dilation {dilation}"
            )
        if padding_mode not in _PAD_MODES:
            raise ConfigError(f"padding_mode must be one of {', '.join(_PAD_MODES)}, got {padding_mode!r}")
        self.pad = total // 2
        self.pad_mode = _PAD_MODES[padding_mode]
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, dilation=dilation, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad:
            x = F.pad(x, (self.pad, self.pad), mode=self.pad_mode)
        return self.conv(x)


class _Norm(nn.Module):
    """BatchNorm1d in `.norm`: a wrapper kept only so that keys read `*.norm.norm.*` as in 3D-Speaker checkpoints."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


class TDNNBlock(nn.Module):
    """Conv1d -> ReLU -> BatchNorm (the BatchNorm is optional for WeSpeaker's MFA layer)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        dilation: int = 1,
        padding_mode: str = "reflect",
        norm: bool = True,
    ):
        super().__init__()
        self.conv = SameConv1d(in_channels, out_channels, kernel_size, dilation, padding_mode=padding_mode)
        self.activation = nn.ReLU()
        self.norm = _Norm(out_channels) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.activation(self.conv(x)))


class Res2NetBlock(nn.Module):
    """Res2Net split: `scale` channel chunks; the first passes through, each next one is convolved after adding the
    previous chunk's output (a growing receptive field inside one layer)."""

    def __init__(self, channels: int, scale: int, kernel_size: int, dilation: int, padding_mode: str = "reflect"):
        super().__init__()
        if channels % scale:
            raise ConfigError(f"Res2Net: channels ({channels}) must be divisible by res2net_scale ({scale})")
        width = channels // scale
        self.scale = scale
        self.blocks = nn.ModuleList(
            TDNNBlock(width, width, kernel_size, dilation, padding_mode) for _ in range(scale - 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        chunks = torch.chunk(x, self.scale, dim=1)
        out = [chunks[0]]
        y = None
        for block, chunk in zip(self.blocks, chunks[1:]):
            y = block(chunk if y is None else chunk + y)
            out.append(y)
        return torch.cat(out, dim=1)


class SEBlock(nn.Module):
    """Squeeze-and-excitation over channels, the squeeze being the (masked) mean over time."""

    def __init__(self, channels: int, se_channels: int):
        super().__init__()
        self.conv1 = SameConv1d(channels, se_channels, kernel_size=1)
        self.conv2 = SameConv1d(se_channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None:
            s = x.mean(dim=2, keepdim=True)
        else:
            s = (x * mask).sum(dim=2, keepdim=True) / mask.sum(dim=2, keepdim=True)
        s = torch.sigmoid(self.conv2(torch.relu(self.conv1(s))))
        return s * x


class SERes2NetBlock(nn.Module):
    """TDNN(1x1) -> Res2Net -> TDNN(1x1) -> SE, plus a residual connection (1x1 projection if widths differ)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        res2net_scale: int,
        se_channels: int,
        kernel_size: int,
        dilation: int,
        padding_mode: str = "reflect",
    ):
        super().__init__()
        self.tdnn1 = TDNNBlock(in_channels, out_channels, 1, padding_mode=padding_mode)
        self.res2net_block = Res2NetBlock(out_channels, res2net_scale, kernel_size, dilation, padding_mode)
        self.tdnn2 = TDNNBlock(out_channels, out_channels, 1, padding_mode=padding_mode)
        self.se_block = SEBlock(out_channels, se_channels)
        self.shortcut = SameConv1d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        residual = x if self.shortcut is None else self.shortcut(x)
        out = self.tdnn2(self.res2net_block(self.tdnn1(x)))
        return self.se_block(out, mask) + residual


def relative_length_mask(lengths: torch.Tensor, frames: int, dtype: torch.dtype) -> torch.Tensor:
    """Relative lengths `[B]` in (0, 1] -> `[B, 1, frames]` mask of valid frames (SpeechBrain's convention)."""
    t = torch.arange(frames, device=lengths.device, dtype=lengths.dtype)
    return (t.unsqueeze(0) < (lengths * frames).unsqueeze(1)).to(dtype).unsqueeze(1)


class ECAPATDNN(nn.Module):
    """ECAPA-TDNN over `[B, T, feat_dim]` fbank -> `[B, embedding_dim]`.

    `channels` is the width of the TDNN and SE-Res2Net layers (512 or 1024); `mfa_channels` that of the aggregation
    layer (default `3 * channels`, WeSpeaker: 1536). `kernel_sizes` / `dilations` give the first TDNN layer and the
    SE-Res2Net blocks (one block per entry after the first). `input_norm` normalises each fbank bin over time
    (InstanceNorm, no parameters), as 3D-Speaker's RDINO/SDPN backbones do.
    """

    def __init__(
        self,
        feat_dim: int = 80,
        channels: int = 512,
        embedding_dim: int = 192,
        variant: str = "3dspeaker",
        mfa_channels: int | None = None,
        kernel_sizes: Sequence[int] = (5, 3, 3, 3),
        dilations: Sequence[int] = (1, 2, 3, 4),
        attention_channels: int = 128,
        res2net_scale: int = 8,
        se_channels: int = 128,
        global_context: bool | None = None,
        emb_bn: bool = False,
        input_norm: bool = False,
    ):
        super().__init__()
        if variant not in _VARIANTS:
            raise ConfigError(f"ecapa_tdnn variant must be one of {', '.join(_VARIANTS)}, got {variant!r}")
        if len(kernel_sizes) != len(dilations) or len(kernel_sizes) < 2:
            raise ConfigError("ecapa_tdnn: kernel_sizes and dilations need the same length, at least 2")
        wespeaker = variant == "wespeaker"
        padding_mode = "zeros" if wespeaker else "reflect"
        if mfa_channels is None:
            mfa_channels = 1536 if wespeaker else channels * (len(kernel_sizes) - 1)
        if global_context is None:
            global_context = not wespeaker
        self.feat_dim = feat_dim
        self.embedding_dim = embedding_dim
        self.channels = channels
        self.variant = variant

        self.input_norm = nn.InstanceNorm1d(feat_dim) if input_norm else None
        self.blocks = nn.ModuleList([TDNNBlock(feat_dim, channels, kernel_sizes[0], dilations[0], padding_mode)])
        for k, d in zip(kernel_sizes[1:], dilations[1:]):
            self.blocks.append(SERes2NetBlock(channels, channels, res2net_scale, se_channels, k, d, padding_mode))
        self.mfa = TDNNBlock(channels * (len(kernel_sizes) - 1), mfa_channels, 1, norm=not wespeaker)
        self.asp = AttentiveStatsPool(
            mfa_channels,
            bottleneck_dim=attention_channels,
            global_context=global_context,
            attention_norm=not wespeaker,
            context_unbiased=wespeaker,
            # The references' variance floors; they decide the std of channels that are constant (dead after ReLU).
            eps=1e-7 if wespeaker else 1e-12,
        )
        self.asp_bn = _Norm(mfa_channels * 2)
        self.fc = SameConv1d(mfa_channels * 2, embedding_dim, kernel_size=1)
        self.emb_bn = nn.BatchNorm1d(embedding_dim) if emb_bn else None

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """`[B, T, feat_dim]` fbank (and optional relative `lengths` `[B]`) -> `[B, embedding_dim]`."""
        x = x.transpose(1, 2)
        if self.input_norm is not None:
            x = self.input_norm(x)
        mask = None if lengths is None else relative_length_mask(lengths, x.shape[-1], x.dtype)
        x = self.blocks[0](x)
        outs = []
        for block in self.blocks[1:]:
            x = block(x, mask)
            outs.append(x)
        x = self.mfa(torch.cat(outs, dim=1))
        x = self.asp_bn(self.asp(x, lengths))
        emb = self.fc(x.unsqueeze(-1)).squeeze(-1)
        if self.emb_bn is not None:
            emb = self.emb_bn(emb)
        return emb


@register_model("ecapa_tdnn")
def ecapa_tdnn(
    channels: int = 512,
    feat_dim: int = 80,
    embedding_dim: int = 192,
    variant: str = "3dspeaker",
    **kwargs: object,
) -> ECAPATDNN:
    """ECAPA-TDNN; `channels` 512 or 1024, `variant` `3dspeaker` (default) or `wespeaker`."""
    return ECAPATDNN(feat_dim=feat_dim, channels=channels, embedding_dim=embedding_dim, variant=variant, **kwargs)


# 3D-Speaker's pooling parameters -> the shared AttentiveStatsPool's; every other name is the same.
SPEAKERLAB_RENAMES = (
    ("asp.tdnn.conv.conv.", "asp.linear1."),
    ("asp.tdnn.norm.norm.", "asp.norm."),
    ("asp.conv.conv.", "asp.linear2."),
)


def speakerlab_key_map(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """3D-Speaker `ECAPA_TDNN` state dict -> ours: renames the attentive pooling's keys, drops a `module.` prefix."""
    out = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        for old, new in SPEAKERLAB_RENAMES:
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        out[key] = value
    return out


# ----------------------------------------------------------------------------------------------------------------
# WeSpeaker's checkpoints (`models.convert` dispatches here): our key -> WeSpeaker key, derived from the model so that
# every width and option is covered, and the tensor layout fixes (see convert's docstring).

_WESPEAKER_RULES: tuple[tuple[str, Callable[[re.Match[str]], str]], ...] = (
    (r"blocks\.0\.conv\.conv\.", lambda m: "layer1.conv."),
    (r"blocks\.0\.norm\.norm\.", lambda m: "layer1.bn."),
    (r"blocks\.(\d+)\.tdnn1\.conv\.conv\.", lambda m: f"layer{int(m[1]) + 1}.se_res2block.0.conv."),
    (r"blocks\.(\d+)\.tdnn1\.norm\.norm\.", lambda m: f"layer{int(m[1]) + 1}.se_res2block.0.bn."),
    (
        r"blocks\.(\d+)\.res2net_block\.blocks\.(\d+)\.conv\.conv\.",
        lambda m: f"layer{int(m[1]) + 1}.se_res2block.1.convs.{m[2]}.",
    ),
    (
        r"blocks\.(\d+)\.res2net_block\.blocks\.(\d+)\.norm\.norm\.",
        lambda m: f"layer{int(m[1]) + 1}.se_res2block.1.bns.{m[2]}.",
    ),
    (r"blocks\.(\d+)\.tdnn2\.conv\.conv\.", lambda m: f"layer{int(m[1]) + 1}.se_res2block.2.conv."),
    (r"blocks\.(\d+)\.tdnn2\.norm\.norm\.", lambda m: f"layer{int(m[1]) + 1}.se_res2block.2.bn."),
    (r"blocks\.(\d+)\.se_block\.conv([12])\.conv\.", lambda m: f"layer{int(m[1]) + 1}.se_res2block.3.linear{m[2]}."),
    (r"mfa\.conv\.conv\.", lambda m: "conv."),
    (r"asp\.linear([12])\.", lambda m: f"pool.linear{m[1]}."),
    (r"asp_bn\.norm\.", lambda m: "bn."),
    (r"fc\.conv\.", lambda m: "linear."),
    (r"emb_bn\.", lambda m: "bn2."),
)
# Our Conv1d(kernel 1) weights that are nn.Linear in WeSpeaker.
_WESPEAKER_LINEAR = re.compile(r"(blocks\.\d+\.se_block\.conv[12]\.conv|fc\.conv)\.weight$")
# Tensors whose channel axis is rotated by one Res2Net chunk: (pattern, axis).
_WESPEAKER_ROTATED = (
    (
        re.compile(
            r"blocks\.\d+\.tdnn1\.(conv\.conv\.(weight|bias)|norm\.norm\.(weight|bias|running_mean|running_var))$"
        ),
        0,
    ),
    (re.compile(r"blocks\.\d+\.tdnn2\.conv\.conv\.weight$"), 1),
)


def _wespeaker_key(ours: str) -> str:
    for pattern, repl in _WESPEAKER_RULES:
        m = re.match(pattern, ours)
        if m:
            return repl(m) + ours[m.end() :]
    raise CheckpointError(f"no WeSpeaker name for ECAPA parameter {ours!r} (is this a WeSpeaker-variant model?)")


def _chunk_width(model: nn.Module) -> int:
    ecapa: Any = model  # nn.Module types submodule attributes loosely
    return int(ecapa.channels) // int(ecapa.blocks[1].res2net_block.scale)


def wespeaker_import(
    state_dict: dict[str, torch.Tensor], model: nn.Module
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A WeSpeaker ECAPA checkpoint's tensors under our names and layouts (unknown keys kept, for the fit check),
    and our key -> theirs."""
    if getattr(model, "variant", None) != "wespeaker":
        raise CheckpointError(
            "WeSpeaker ECAPA-TDNN checkpoints need ecapa_tdnn(variant='wespeaker', ...): its padding, MFA layer and "
            "pooling differ from 3D-Speaker's"
        )
    to_ours = {_wespeaker_key(k): k for k in model.state_dict()}
    width = _chunk_width(model)
    out, origin = {}, {}
    for key, value in state_dict.items():
        ours = to_ours.get(key)
        if ours is None:
            out[key] = value  # reported as unexpected by the check
            continue
        out[ours] = _wespeaker_tensor(ours, value, width, inverse=False)
        origin[ours] = key
    return out, origin


def _wespeaker_tensor(ours_key: str, value: torch.Tensor, width: int, inverse: bool) -> torch.Tensor:
    if _WESPEAKER_LINEAR.search(ours_key):
        value = value.squeeze(-1) if inverse else (value.unsqueeze(-1) if value.dim() == 2 else value)
    for pattern, axis in _WESPEAKER_ROTATED:
        if pattern.search(ours_key) and value.dim() > axis:
            value = torch.roll(value, shifts=-width if inverse else width, dims=axis)
    return value


def to_wespeaker_layout(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Our state dict in WeSpeaker's names and layouts (the inverse of `wespeaker_import`)."""
    width = _chunk_width(model)
    return {_wespeaker_key(k): _wespeaker_tensor(k, v, width, inverse=True) for k, v in state_dict.items()}
