"""The TF-style log mel of WeSpeaker's `tfmel` frontend (`wespeaker/frontend/tfmel.py`, from PalabraAI/redimnet2),
what its ReDimNet2 releases were trained on. Not Kaldi's fbank: the signal is standardised (zero mean, unit
variance) per utterance, pre-emphasised (0.97, the first sample against the second), framed with half a shift of
zero padding at both ends (no snip_edges), Hamming-windowed, transformed (bins 0 .. n_fft/2 - 1, no DC removal),
and meets TensorFlow's mel matrix (HTK mel, 20-7600 Hz, bin centres spaced as `linspace(0, sr/2, n_fft/2)`); power
and mel energies are clipped to [1e-8, 1e8], and the log of `mel + 1e-8` is
mean-normalised over time (`FeatureSpec.mean_norm`).

It is one `FeatureSpec` kind (`kind="tfmel"`), so training, inference and model files carry it like the fbank.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["tf_log_mel", "tf_num_frames", "tf_mel_matrix"]

EPS = 1e-8
PREEMPHASIS = 0.97
LOW_FREQ, HIGH_FREQ = 20.0, 7600.0


def _hz2mel(hz: Any) -> Any:
    return 2595.0 * np.log10(1.0 + hz / 700.0)


def tf_mel_matrix(num_mel_bins: int, bins: int, sample_rate: int = 16000) -> Tensor:
    """`[bins, num_mel_bins]` float32: WeSpeaker's `get_filterbanks(nfilt, nfft=bins)` (row 0, DC, has no weight)."""
    edges = np.linspace(_hz2mel(np.float64(LOW_FREQ)), _hz2mel(np.float64(HIGH_FREQ)), num_mel_bins + 2)
    lower, center, upper = edges[None, :-2], edges[None, 1:-1], edges[None, 2:]
    mel = _hz2mel(np.linspace(0, sample_rate // 2, bins))[1:, None]
    weights = np.maximum(0.0, np.minimum((mel - lower) / (center - lower), (upper - mel) / (upper - center)))
    return torch.from_numpy(np.vstack([np.zeros((1, num_mel_bins)), weights]).astype(np.float32))


def _sizes(sample_rate: int, frame_length: float, frame_shift: float) -> tuple[int, int, int]:
    window, shift = int(sample_rate * 0.001 * frame_length), int(sample_rate * 0.001 * frame_shift)
    return window, shift, 1 << (window - 1).bit_length()


def tf_num_frames(
    num_samples: int, sample_rate: int = 16000, frame_length: float = 25.0, frame_shift: float = 10.0
) -> int:
    """Frames of `num_samples` samples: half a shift of padding at each end, then whole windows."""
    window, shift, _ = _sizes(sample_rate, frame_length, frame_shift)
    padded = num_samples + 2 * (shift // 2)
    return 0 if padded < window else (padded - window) // shift + 1


@lru_cache(maxsize=8)
def _matrices(
    sample_rate: int, num_mel_bins: int, frame_length: float, frame_shift: float, device: torch.device
) -> tuple[int, int, Tensor, Tensor]:
    window, shift, fft_size = _sizes(sample_rate, frame_length, frame_shift)
    bins = fft_size // 2
    n = torch.arange(window, dtype=torch.float64)
    angle = 2 * math.pi * torch.outer(n, torch.arange(bins, dtype=torch.float64)) / fft_size
    hamming = 0.54 - 0.46 * torch.cos(2 * math.pi * n / (window - 1))
    basis = (hamming[:, None] * torch.cat([torch.cos(angle), torch.sin(angle)], dim=1)).float()
    return window, shift, basis.to(device), tf_mel_matrix(num_mel_bins, bins, sample_rate).to(device)


def tf_log_mel(
    wave: Tensor,
    num_mel_bins: int = 72,
    sample_rate: int = 16000,
    frame_length: float = 25.0,
    frame_shift: float = 10.0,
) -> Tensor:
    """`[T]` or `[B, T]` float waveform -> log mel `[frames, bins]` / `[B, frames, bins]` (the frontend's mean
    normalisation over time is `FeatureSpec.mean_norm`)."""
    x = wave.float()
    x = (x - x.mean(dim=-1, keepdim=True)) / (x.std(dim=-1, keepdim=True, correction=0) + EPS)
    x = torch.cat([x[..., :1] - PREEMPHASIS * x[..., 1:2], x[..., 1:] - PREEMPHASIS * x[..., :-1]], dim=-1)
    window, shift, basis, mel = _matrices(sample_rate, num_mel_bins, float(frame_length), float(frame_shift), x.device)
    pad = shift // 2
    if x.shape[-1] + 2 * pad < window:
        return x.new_zeros(*x.shape[:-1], 0, num_mel_bins)
    frames = torch.nn.functional.pad(x, (pad, pad)).unfold(-1, window, shift)
    with torch.autocast(x.device.type, enabled=False):
        spectrum = frames @ basis
        bins = mel.shape[0]
        power = (spectrum[..., :bins].square() + spectrum[..., bins:].square()).clamp(EPS, 1 / EPS)
        return ((power @ mel).clamp(EPS, 1 / EPS) + EPS).log()
