"""Temporal pooling layers shared by every embedding model: frame-level features in, one vector out.

All layers take `[B, C, T]` (TDNN-style) or `[B, C, F, T]` (2D-CNN style, flattened to `[B, C*F, T]`), pool over
the last (time) axis and return `[B, n_stats * D]` where `D` is the flattened channel count. `n_stats` is an
attribute of every layer, so a model sizes its embedding layer as `pool.n_stats * in_dim`.

Which layer reproduces which reference:

- `TemporalStatsPool()` -- WeSpeaker / 3D-Speaker `TSTP` (ResNet, ERes2Net): mean and `sqrt(var + 1e-8)`.
- `TemporalStatsPool(eps=0.0)` -- CAM++'s `StatsPool`: mean and plain standard deviation.
- `TemporalStatsPool(use_std=False)` / `(use_mean=False)` -- `TAP` / `TSDP`.
- `AttentiveStatsPool(in_dim)` -- WeSpeaker / 3D-Speaker `ASTP` (parameters `linear1`, `linear2`).
- `AttentiveStatsPool(in_dim, global_context=True, attention_norm=True, context_unbiased=False)` -- SpeechBrain /
  3D-Speaker ECAPA-TDNN `AttentiveStatisticsPooling`, with its `tdnn.conv.conv`, `tdnn.norm.norm` and `conv.conv`
  parameters renamed to `linear1`, `norm`, `linear2`.

All variances are unbiased unless said otherwise, as in the references.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from speakerforge.errors import ConfigError

__all__ = ["TemporalStatsPool", "AttentiveStatsPool", "build_pooling", "POOLING_ALIASES"]


def _flatten_to_3d(x: torch.Tensor) -> torch.Tensor:
    """`[B, C, F, T]` -> `[B, C*F, T]`; 3D input passes through."""
    if x.dim() == 4:
        return x.reshape(x.shape[0], x.shape[1] * x.shape[2], x.shape[3])
    if x.dim() != 3:
        raise ValueError(f"pooling expects [B, C, T] or [B, C, F, T], got shape {tuple(x.shape)}")
    return x


class TemporalStatsPool(nn.Module):
    """Mean and/or standard deviation over time (x-vector statistics pooling, `TSTP`); no parameters.

    `eps` is added to the variance before the square root (WeSpeaker uses 1e-8 so that the gradient stays finite on
    constant input; CAM++ uses none: `eps=0.0`). The output is `[mean, std]` concatenated along the feature axis.
    """

    def __init__(self, use_mean: bool = True, use_std: bool = True, eps: float = 1e-8, unbiased: bool = True):
        super().__init__()
        if not (use_mean or use_std):
            raise ConfigError("TemporalStatsPool needs at least one of use_mean, use_std")
        self.use_mean = use_mean
        self.use_std = use_std
        self.eps = eps
        self.unbiased = unbiased
        self.n_stats = int(use_mean) + int(use_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _flatten_to_3d(x)
        stats = []
        if self.use_std:
            var, mean = torch.var_mean(x, dim=-1, correction=int(self.unbiased))
            std = torch.sqrt(var + self.eps) if self.eps else torch.sqrt(var)
            if self.use_mean:
                stats.append(mean)
            stats.append(std)
        else:
            stats.append(x.mean(dim=-1))
        return stats[0] if len(stats) == 1 else torch.cat(stats, dim=1)

    def extra_repr(self) -> str:
        return f"use_mean={self.use_mean}, use_std={self.use_std}, eps={self.eps}, unbiased={self.unbiased}"


class AttentiveStatsPool(nn.Module):
    """Attentive statistics pooling (`ASTP` / ECAPA's ASP): attention-weighted mean and std, per channel.

    The attention is `linear2(tanh(a))` with `a = linear1(h)` (WeSpeaker), or `a = norm(relu(linear1(h)))` when
    `attention_norm` (SpeechBrain's TDNN block), softmax over time. `h` is the input, or with `global_context` the
    input concatenated with its utterance mean and std (unbiased if `context_unbiased`, as in WeSpeaker; biased in
    SpeechBrain).

    Without `attention_tanh` the attention is `linear2(norm(relu(linear1(h))))` (WeSpeaker's `ASP` of its
    SimAM-ResNets, registered as `ASP`: no tanh, variance floor 1e-5).

    `lengths` (optional, `[B]`, relative lengths in (0, 1] as in SpeechBrain) masks padded frames out of the
    statistics and the attention.
    """

    def __init__(
        self,
        in_dim: int,
        bottleneck_dim: int = 128,
        global_context: bool = False,
        attention_norm: bool = False,
        context_unbiased: bool = True,
        eps: float = 1e-10,
        attention_tanh: bool = True,
    ):
        super().__init__()
        self.in_dim = in_dim
        self.attention_tanh = attention_tanh
        self.global_context = global_context
        self.context_unbiased = context_unbiased
        self.eps = eps
        self.n_stats = 2
        # Conv1d with kernel 1 rather than Linear, so that [B, C, T] needs no transposes (and keys match WeSpeaker).
        self.linear1 = nn.Conv1d(in_dim * 3 if global_context else in_dim, bottleneck_dim, kernel_size=1)
        self.norm = nn.BatchNorm1d(bottleneck_dim) if attention_norm else None
        self.linear2 = nn.Conv1d(bottleneck_dim, in_dim, kernel_size=1)

    # The softmax over time cancels linear2's bias (a per-channel constant), so it never trains. It stays so that
    # released checkpoints load as they are; the update-integrity check reads this and does not report it.
    cancelled_parameters = ("linear2.bias",)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        x = _flatten_to_3d(x)
        mask = None if lengths is None else _length_mask(lengths, x.shape[-1], x.dtype)  # [B, 1, T]
        if self.global_context:
            mean, std = _masked_mean_std(x, mask, unbiased=self.context_unbiased, eps=self.eps)
            t = x.shape[-1]
            h = torch.cat([x, mean.unsqueeze(-1).expand(-1, -1, t), std.unsqueeze(-1).expand(-1, -1, t)], dim=1)
        else:
            h = x
        a = self.linear1(h)
        if self.norm is not None:
            a = self.norm(torch.relu(a))
        logits = self.linear2(torch.tanh(a) if self.attention_tanh else a)
        if mask is not None:
            logits = logits.masked_fill(mask == 0, float("-inf"))
        alpha = torch.softmax(logits, dim=-1)
        mean = torch.sum(alpha * x, dim=-1)
        var = torch.sum(alpha * (x - mean.unsqueeze(-1)).pow(2), dim=-1)
        return torch.cat([mean, torch.sqrt(var.clamp(min=self.eps))], dim=1)


def _length_mask(lengths: torch.Tensor, max_len: int, dtype: torch.dtype) -> torch.Tensor:
    """Relative lengths `[B]` -> `[B, 1, T]` mask of valid frames (SpeechBrain's convention)."""
    frames = torch.arange(max_len, device=lengths.device, dtype=lengths.dtype)
    return (frames.unsqueeze(0) < (lengths * max_len).unsqueeze(1)).to(dtype).unsqueeze(1)


def _masked_mean_std(
    x: torch.Tensor, mask: torch.Tensor | None, unbiased: bool, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    if mask is None:
        var, mean = torch.var_mean(x, dim=-1, correction=int(unbiased))
    else:
        count = mask.sum(dim=-1)
        mean = (x * mask).sum(dim=-1) / count
        sq = ((x - mean.unsqueeze(-1)).pow(2) * mask).sum(dim=-1)
        var = sq / (count - 1).clamp(min=1) if unbiased else sq / count
    return mean, torch.sqrt(var.clamp(min=eps))


# WeSpeaker / 3D-Speaker `pooling_func` names -> (class, fixed kwargs); lets configs keep the names users know.
POOLING_ALIASES: dict[str, tuple[type[nn.Module], dict[str, Any]]] = {
    "TSTP": (TemporalStatsPool, {}),
    "TSTP_WS": (TemporalStatsPool, {"eps": 1e-7}),  # WeSpeaker's TSTP: variance floor 1e-7 (3D-Speaker's: 1e-8)
    "TAP": (TemporalStatsPool, {"use_std": False}),
    "TSDP": (TemporalStatsPool, {"use_mean": False}),
    "ASTP": (AttentiveStatsPool, {}),
    "ASP": (AttentiveStatsPool, {"attention_norm": True, "attention_tanh": False, "eps": 1e-5}),
}


def build_pooling(name: str, in_dim: int, **kwargs: Any) -> nn.Module:
    """Pooling layer by its WeSpeaker / 3D-Speaker name (`TSTP`, `TSTP_WS`, `TAP`, `TSDP`, `ASTP`, `ASP`, any
    case); `in_dim` = flattened channel count of its input."""
    name = name.upper()
    if name not in POOLING_ALIASES:
        raise ConfigError(f"unknown pooling {name!r}; known: {', '.join(POOLING_ALIASES)}")
    cls, fixed = POOLING_ALIASES[name]
    if cls is AttentiveStatsPool:
        return cls(in_dim, **fixed, **kwargs)
    return cls(**fixed, **kwargs)
