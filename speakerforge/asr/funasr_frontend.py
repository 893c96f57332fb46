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
from pathlib import Path

import torch
import torch.nn as nn
from torch import Tensor

from speakerforge.data.features import INT16_SCALE, LOG_FLOOR, PREEMPHASIS, frame_sizes, mel_banks, povey_window
from speakerforge.errors import ConfigError, DataError

WINDOWS = ("hamming", "hanning", "povey", "rectangular")


def window_function(kind: str, size: int) -> Tensor:
    """Kaldi's analysis windows, float64."""
    n = torch.arange(size, dtype=torch.float64)
    a = 2 * math.pi / (size - 1)
    if kind == "hamming":
        return 0.54 - 0.46 * torch.cos(a * n)
    if kind == "hanning":
        return 0.5 - 0.5 * torch.cos(a * n)
    if kind == "povey":
        return povey_window(size)
    if kind == "rectangular":
        return torch.ones(size, dtype=torch.float64)
    raise ConfigError(f"frontend window {kind!r}: choose from {', '.join(WINDOWS)}")


def kaldi_fbank(
    wave: Tensor,
    num_mel_bins: int = 80,
    frame_length: float = 25.0,
    frame_shift: float = 10.0,
    window: str = "hamming",
    sample_rate: int = 16000,
    dither: float = 0.0,
) -> Tensor:
    """`[T]` float waveform in [-1, 1] -> `[frames, num_mel_bins]` Kaldi log-mel (no energy, snip edges).

    Pre-emphasis, window and DFT are folded into one float64-built basis, as `speakerforge.data.features` does."""
    size, shift, fft = frame_sizes(sample_rate, frame_length, frame_shift)
    if wave.shape[-1] < size:
        return wave.new_zeros(0, num_mel_bins)
    n = torch.arange(size, dtype=torch.float64)
    j = torch.arange(fft // 2, dtype=torch.float64)
    angle = 2 * math.pi * n[:, None] * j[None, :] / fft
    dft = window_function(window, size)[:, None] * torch.cat([torch.cos(angle), -torch.sin(angle)], dim=1)
    emph = torch.eye(size, dtype=torch.float64)  # y[i] = x[i] - 0.97 x[i-1], y[0] = x[0] - 0.97 x[0] (Kaldi)
    emph[torch.arange(1, size), torch.arange(size - 1)] = -PREEMPHASIS
    emph[0, 0] -= PREEMPHASIS
    basis = (INT16_SCALE * emph.T @ dft).to(wave.dtype)
    mel = mel_banks(num_mel_bins, fft, sample_rate).to(wave.dtype)
    frames = wave.float().unfold(-1, size, shift)
    if dither:
        frames = frames + torch.randn_like(frames) * (dither / INT16_SCALE)
    spectrum = (frames - frames.mean(-1, keepdim=True)) @ basis
    bins = fft // 2
    power = spectrum[..., :bins].square() + spectrum[..., bins:].square()
    return (power @ mel).clamp_min(LOG_FLOOR).log()


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
        window_function(window, 4)  # validates the name
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
        x = kaldi_fbank(wave, self.n_mels, self.frame_length, self.frame_shift, self.window, self.fs, dither)
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
