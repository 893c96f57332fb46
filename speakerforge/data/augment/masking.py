"""SpecAugment: frequency-band and time-span masks on features, drawn from a `torch.Generator`."""

from __future__ import annotations

import torch


def _band_mask(batch: int, size: int, num: int, max_width: int, generator: torch.Generator) -> torch.Tensor:
    """[batch, size] bool: `num` bands per row, each of width U{1..max_width} at a uniform start."""
    max_width = min(max_width, size)
    if num <= 0 or max_width <= 0 or size <= 0:
        return torch.zeros(batch, size, dtype=torch.bool)
    device = generator.device
    widths = torch.randint(1, max_width + 1, (batch, num), generator=generator, device=device)
    starts = (torch.rand(batch, num, generator=generator, device=device) * (size - widths + 1)).long()
    pos = torch.arange(size, device=device).view(1, 1, size)
    inside = (pos >= starts.unsqueeze(-1)) & (pos < (starts + widths).unsqueeze(-1))
    return inside.any(dim=1)


def spec_augment(
    feats: torch.Tensor,
    generator: torch.Generator,
    num_freq_masks: int = 2,
    max_freq_width: int = 8,
    num_time_masks: int = 2,
    max_time_width: int = 10,
    fill: str = "zero",
) -> torch.Tensor:
    """Mask frequency bands and time spans of `[T, F]` or `[B, T, F]` features; returns a new tensor.

    Each mask has a width drawn from 1..max_width and a uniform start, independently per utterance. `fill="zero"`
    writes 0, which is the mean for mean-normalised features (the usual place: after normalisation);
    `fill="mean"` writes each utterance's overall mean, for features that are not normalised.
    """
    if feats.dim() not in (2, 3):
        raise ValueError(f"spec_augment expects [T, F] or [B, T, F], got shape {tuple(feats.shape)}")
    if fill not in ("zero", "mean"):
        raise ValueError(f"fill must be 'zero' or 'mean', got {fill!r}")
    x = feats if feats.dim() == 3 else feats.unsqueeze(0)
    b, t, f = x.shape
    freq = _band_mask(b, f, num_freq_masks, max_freq_width, generator).to(x.device)
    time = _band_mask(b, t, num_time_masks, max_time_width, generator).to(x.device)
    mask = freq.unsqueeze(1) | time.unsqueeze(2)
    value = x.mean(dim=(1, 2), keepdim=True) if fill == "mean" else torch.zeros((), dtype=x.dtype, device=x.device)
    out = torch.where(mask, value, x)
    return out if feats.dim() == 3 else out.squeeze(0)
