"""FunASR's `WavFrontend`: Kaldi fbank with FunASR's settings, low frame rate stacking, global CMVN from `am.mvn`.

- fbank: the Kaldi recipe of `speakerforge.data.features` (pre-emphasis 0.97, DC removal, snip edges, power
  spectrum, Kaldi mel banks, log floored at the float32 epsilon) with the config's `window` (FunASR's releases use
  `hamming`, speaker models Kaldi's `povey`), on int16-scale samples; `dither` (int16 units) only in training mode;
- LFR: `lfr_m` frames stacked every `lfr_n`, `(lfr_m - 1) // 2` copies of the first frame in front and the last
  frame repeated past the end, ceil(T / lfr_n) outputs;
- CMVN: `(x + shift) * scale` with the `<AddShift>` and `<Rescale>` vectors of `am.mvn` (Kaldi nnet1 text).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn
from torch import Tensor

from speakerforge.data.features import WINDOWS, fbank
from speakerforge.errors import ConfigError, DataError


def apply_lfr(feats: Tensor, m: int, n: int) -> Tensor:
    """`[T, F]` -> `[ceil(T / n), m * F]` (see the module docstring)."""
    t = feats.shape[0]
    left = (m - 1) // 2
    out_t = math.ceil(t / n)
    idx = torch.arange(out_t)[:, None] * n + torch.arange(m)[None, :] - left
    return feats[idx.clamp(0, t - 1)].reshape(out_t, m * feats.shape[1])


def read_am_mvn(path: str | Path) -> Tensor:
    """`[2, D]` (shift, scale) from a Kaldi nnet1 `am.mvn`."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    found: dict[str, list[float]] = {}
    for i, line in enumerate(lines[:-1]):
        head = line.split()[:1]
        nxt = lines[i + 1].split()
        if head and head[0] in ("<AddShift>", "<Rescale>") and nxt[:1] == ["<LearnRateCoef>"]:
            found[head[0]] = [float(v) for v in nxt[3:-1]]
    if set(found) != {"<AddShift>", "<Rescale>"} or len(found["<AddShift>"]) != len(found["<Rescale>"]):
        raise DataError(f"{path}: not a FunASR am.mvn (needs <AddShift> and <Rescale> vectors of one size)")
    return torch.tensor([found["<AddShift>"], found["<Rescale>"]], dtype=torch.float32)


def write_am_mvn(path: str | Path, cmvn: Tensor) -> None:
    """Write `[2, D]` (shift, scale) as FunASR's `am.mvn`."""
    from speakerforge.atomic import atomic_write_text

    d = cmvn.shape[1]

    def vec(v: Tensor) -> str:
        return " ".join(f"{float(x):.8g}" for x in v)

    text = (
        f"<Nnet>\n<Splice> {d} {d}\n[ 0 ]\n<AddShift> {d} {d}\n<LearnRateCoef> 0 [ {vec(cmvn[0])} ]\n"
        f"<Rescale> {d} {d}\n<LearnRateCoef> 0 [ {vec(cmvn[1])} ]\n</Nnet>\n"
    )
    atomic_write_text(path, text)


class WavFrontend(nn.Module):
    """Waveforms -> padded LFR + CMVN features `[B, T, n_mels * lfr_m]` and their lengths."""

    def __init__(
        self,
        cmvn: Tensor | None = None,
        fs: int = 16000,
        window: str = "hamming",
        n_mels: int = 80,
        frame_length: float = 25,
        frame_shift: float = 10,
        lfr_m: int = 1,
        lfr_n: int = 1,
        dither: float = 1.0,
        snip_edges: bool = True,
        upsacle_samples: bool = True,
    ):
        super().__init__()
        if window not in WINDOWS:
            raise ConfigError(f"frontend_conf.window {window!r}: choose from {', '.join(WINDOWS)}")
        if not snip_edges or not upsacle_samples:
            raise ConfigError("frontend_conf: only snip_edges: true and upsacle_samples: true are supported")
        if cmvn is not None and cmvn.shape[1] < n_mels * lfr_m:
            raise ConfigError(f"am.mvn holds {cmvn.shape[1]} values; the frontend gives {n_mels * lfr_m}")
        self.fs, self.window, self.n_mels = fs, window, n_mels
        self.frame_length, self.frame_shift = float(frame_length), float(frame_shift)
        self.lfr_m, self.lfr_n, self.dither = lfr_m, lfr_n, dither
        self.cmvn = cmvn

    def output_size(self) -> int:
        return self.n_mels * self.lfr_m

    def features(self, wave: Tensor) -> Tensor:
        """One `[T]` waveform -> `[frames, n_mels * lfr_m]`."""
        dither = self.dither if self.training else 0.0
        x = fbank(wave, self.fs, self.n_mels, self.frame_length, self.frame_shift, dither, window=self.window)
        if x.shape[0] == 0:
            raise DataError(
                f"an utterance of {wave.shape[-1]} samples is shorter than one {self.frame_length} ms frame"
            )
        if self.lfr_m != 1 or self.lfr_n != 1:
            x = apply_lfr(x, self.lfr_m, self.lfr_n)
        if self.cmvn is not None:
            d = x.shape[1]
            x = (x + self.cmvn[0, :d]) * self.cmvn[1, :d]
        return x

    def forward(self, waves: list[Tensor]) -> tuple[Tensor, Tensor]:
        feats = [self.features(w) for w in waves]
        lengths = torch.tensor([f.shape[0] for f in feats])
        return nn.utils.rnn.pad_sequence(feats, batch_first=True), lengths


class SpecAugLFR(nn.Module):
    """FunASR's `SpecAugLFR` on LFR features `[B, T, F]` in training: `num_freq_mask` frequency bands masked at
    the same place in each of the `lfr_rate + 1` stacked frames, then `num_time_mask` runs of frames; widths from
    `[low, high)`, positions and widths drawn from torch's generator in FunASR's order (so a seed gives FunASR's
    masks). Time warping is not supported."""

    def __init__(
        self,
        apply_time_warp: bool = True,
        time_warp_window: int = 5,
        time_warp_mode: str = "bicubic",
        apply_freq_mask: bool = True,
        freq_mask_width_range: Sequence[int] = (0, 20),
        num_freq_mask: int = 2,
        lfr_rate: int = 0,
        apply_time_mask: bool = True,
        time_mask_width_range: Sequence[int] | None = None,
        time_mask_width_ratio_range: Sequence[float] | None = None,
        num_time_mask: int = 2,
    ):
        super().__init__()
        if apply_time_warp:
            raise ConfigError("specaug_conf.apply_time_warp: true is not supported (FunASR's releases set false)")
        if apply_time_mask and time_mask_width_range is None:
            raise ConfigError("specaug_conf: only time_mask_width_range is supported for the time mask")
        self.freq = (tuple(freq_mask_width_range), num_freq_mask, lfr_rate + 1) if apply_freq_mask else None
        self.time = (tuple(time_mask_width_range or (0, 1)), num_time_mask) if apply_time_mask else None

    def forward(self, x: Tensor) -> Tensor:
        if self.freq is not None:
            (lo, hi), n, lfr = self.freq
            x = _mask_lfr(x, 2, lo, hi, n, lfr)
        if self.time is not None:
            (lo, hi), n = self.time
            x = _mask_lfr(x, 1, lo, hi, n, 1)
        return x


def _mask_lfr(x: Tensor, dim: int, lo: int, hi: int, num: int, lfr: int) -> Tensor:
    """FunASR's `mask_along_axis_lfr` (zeros): `num` runs along `dim`, repeated in each of `lfr` stacked blocks."""
    b = x.shape[0]
    d = x.shape[dim] // lfr
    length = torch.randint(lo, hi, (b, num), device=x.device).unsqueeze(2).repeat(1, lfr, 1)
    pos = torch.randint(0, max(1, d - int(length.max())), (b, num), device=x.device).unsqueeze(2)
    pos = torch.cat([pos + d * i for i in range(lfr)], dim=1)
    aran = torch.arange(x.shape[dim], device=x.device)[None, None, :]
    mask = ((pos <= aran) & (aran < pos + length)).any(dim=1)
    return x.masked_fill(mask.unsqueeze(2) if dim == 1 else mask.unsqueeze(1), 0.0)
