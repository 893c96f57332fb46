"""Kaldi-compatible log-mel filterbank features in pure torch, batched; utterance mean normalisation.

The numbers are those of Kaldi `compute-fbank-feats`, `kaldi-native-fbank` and
`torchaudio.compliance.kaldi.fbank` with: povey window, pre-emphasis 0.97, per-frame DC offset removal,
`snip_edges=True`, power spectrum of a zero-padded FFT (next power of two), Kaldi mel banks
(mel = 1127 ln(1 + f / 700), 20 Hz to Nyquist), no energy coefficient, and log with a floor at the float32
epsilon.

Input convention: waveforms are float in [-1, 1], what `speakerforge.data.audio.load_audio` returns. Kaldi and its
reimplementations are fed int16-scale samples, so `fbank` multiplies by 32768 internally (folded into its matrices,
not a separate pass) and returns their numbers (to float32 rounding, see below). Any other scale would only add a
constant to every log-mel value (2 ln scale), which utterance mean normalisation removes anyway. `dither` is likewise
in int16 units, as in Kaldi (dither=1.0 is one least significant bit).

How it is computed: the per-frame steps after DC removal (pre-emphasis, window, zero padding, DFT) are linear, so
they are folded, in float64, into one real DFT basis `[window, fft_size]` (real | imaginary parts); a frame's
spectrum is then one matrix product, and the power spectrum meets the mel matrix in a second one. Folding the
pre-emphasis into the float64-built basis is what keeps the low bins accurate in float32: pre-emphasis cuts them by
up to 30 dB, and any path that applies it (or the FFT) in float32 first carries rounding error of the unfiltered
signal's size into them. `torch.fft.rfft` with elementwise pre-emphasis and window does fewer flops and ran ~1.5-2.5x
faster (`bench/fbank.py --with-rfft`), but puts bins lying 25+ nats below their frame's peak up to 2e-2 away from a
float64 computation on real speech, and even with exact pre-emphasis a float32 transform of the emphasised frame
stayed 2-40x further off than the folded matmul. The matmul stays within ~1e-4 (median) and 2e-3 (worst) over 251
LibriSpeech utterances, closer than kaldi-native-fbank itself (median 5e-4, worst 1.3e-2, float32 FFT). It ran
~1.4-1.9x faster per CPU-second than kaldi-native-fbank on a shared 2-core machine, and exports to ONNX as plain
MatMul nodes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any, cast

import torch
from torch import Tensor, nn

INT16_SCALE = 32768.0
PREEMPHASIS = 0.97
POVEY_EXPONENT = 0.85
LOW_FREQ = 20.0
# Kaldi floors mel energies at FLT_EPSILON before the log, whatever the compute dtype.
LOG_FLOOR = torch.finfo(torch.float32).eps


@dataclass(frozen=True)
class FbankConfig:
    """Feature settings; the defaults are the speaker-verification standard (80 bins, 25 ms / 10 ms, 16 kHz)."""

    sample_rate: int = 16000
    num_mel_bins: int = 80
    frame_length: float = 25.0  # ms
    frame_shift: float = 10.0  # ms
    dither: float = 0.0  # int16 units; applied by `Fbank` in training mode only
    mean_norm: bool = False  # subtract the utterance mean (used by `Fbank` only)


def frame_sizes(
    sample_rate: int = 16000, frame_length: float = 25.0, frame_shift: float = 10.0
) -> tuple[int, int, int]:
    """Window, shift and padded FFT size in samples, rounded the way Kaldi rounds them."""
    window = int(sample_rate * 0.001 * frame_length)
    shift = int(sample_rate * 0.001 * frame_shift)
    if window < 2 or shift < 1:
        raise ValueError(
            f"frame_length={frame_length} ms and frame_shift={frame_shift} ms at {sample_rate} Hz give "
            f"a window of {window} and a shift of {shift} samples; need at least 2 and 1"
        )
    return window, shift, 1 << (window - 1).bit_length()


def num_frames(
    num_samples: int | Tensor,
    sample_rate: int = 16000,
    frame_length: float = 25.0,
    frame_shift: float = 10.0,
) -> int | Tensor:
    """Frames Kaldi makes from `num_samples` with snip_edges=True (0 when shorter than one window); int or tensor."""
    window, shift, _ = frame_sizes(sample_rate, frame_length, frame_shift)
    if isinstance(num_samples, Tensor):
        return torch.where(num_samples >= window, torch.div(num_samples - window, shift, rounding_mode="floor") + 1, 0)
    return 0 if num_samples < window else (num_samples - window) // shift + 1


def povey_window(size: int) -> Tensor:
    """Kaldi's povey window (a Hann window to the power 0.85), float64."""
    return window_function("povey", size)


WINDOWS = ("povey", "hamming", "hanning", "rectangular")


def window_function(kind: str, size: int) -> Tensor:
    """Kaldi's analysis windows, float64: speaker models use `povey`, FunASR's ASR releases `hamming`."""
    n = torch.arange(size, dtype=torch.float64)
    a = 2 * math.pi / (size - 1)
    if kind == "povey":
        return (0.5 - 0.5 * torch.cos(a * n)) ** POVEY_EXPONENT
    if kind == "hamming":
        return 0.54 - 0.46 * torch.cos(a * n)
    if kind == "hanning":
        return 0.5 - 0.5 * torch.cos(a * n)
    if kind == "rectangular":
        return torch.ones(size, dtype=torch.float64)
    raise ValueError(f"window {kind!r}: choose from {', '.join(WINDOWS)}")


def _mel(freq: Tensor) -> Tensor:
    return 1127.0 * torch.log1p(freq / 700.0)


def mel_banks(
    num_mel_bins: int, fft_size: int, sample_rate: int, low_freq: float = LOW_FREQ, high_freq: float | None = None
) -> Tensor:
    """Kaldi's triangular mel filters on FFT bins `0 .. fft_size/2 - 1` (Kaldi gives the Nyquist bin no weight).

    Returns float64 `[fft_size // 2, num_mel_bins]`.
    """
    high_freq = sample_rate / 2 if high_freq is None else high_freq
    if not 0.0 <= low_freq < high_freq <= sample_rate / 2:
        raise ValueError(f"mel range {low_freq}..{high_freq} Hz does not fit {sample_rate} Hz audio")
    mel_low, mel_high = (
        _mel(torch.tensor(low_freq, dtype=torch.float64)),
        _mel(torch.tensor(high_freq, dtype=torch.float64)),
    )
    delta = (mel_high - mel_low) / (num_mel_bins + 1)
    left = mel_low + delta * torch.arange(num_mel_bins, dtype=torch.float64)
    center, right = left + delta, left + 2 * delta
    mel = _mel(torch.arange(fft_size // 2, dtype=torch.float64) * (sample_rate / fft_size))[:, None]
    rising, falling = (mel - left) / (center - left), (right - mel) / (right - center)
    weights = torch.where(mel <= center, rising, falling)
    return torch.where((mel > left) & (mel < right), weights, torch.zeros_like(weights))


def dft_basis(
    window: int,
    fft_size: int,
    preemphasis: float = PREEMPHASIS,
    scale: float = INT16_SCALE,
    window_kind: str = "povey",
) -> Tensor:
    """Matrix `[window, 2 * (fft_size // 2)]` mapping a zero-mean frame to the real and imaginary parts of its spectrum.

    It folds, in order: scaling to int16 range, pre-emphasis, the analysis window and the zero-padded DFT, so
    `(frame - frame.mean()) @ basis` equals Kaldi's FFT of the processed frame (bins 0 .. fft_size/2 - 1). float64.
    """
    n = torch.arange(window, dtype=torch.float64)
    k = torch.arange(fft_size // 2, dtype=torch.float64)
    angle = 2 * math.pi * torch.outer(n, k) / fft_size
    basis = window_function(window_kind, window)[:, None] * torch.cat([torch.cos(angle), -torch.sin(angle)], dim=1)
    # Pre-emphasis y[i] = x[i] - a x[i-1], y[0] = x[0] - a x[0] is a matrix P (y = P x); the frame meets P^T basis,
    # whose row j is basis[j] - a basis[j+1] (and row 0 loses a further a basis[0]).
    folded = basis.clone()
    folded[:-1] -= preemphasis * basis[1:]
    folded[0] -= preemphasis * basis[0]
    return folded * scale


@lru_cache(maxsize=32)
def _matrices(
    sample_rate: int,
    num_mel_bins: int,
    frame_length: float,
    frame_shift: float,
    device: torch.device,
    dtype: torch.dtype,
    window_kind: str = "povey",
) -> tuple[int, int, Tensor, Tensor]:
    """(window, shift, DFT basis, mel matrix), built once per setting, device and dtype."""
    window, shift, fft_size = frame_sizes(sample_rate, frame_length, frame_shift)
    basis = dft_basis(window, fft_size, window_kind=window_kind)
    mel = mel_banks(num_mel_bins, fft_size, sample_rate)
    return window, shift, basis.to(device, dtype).contiguous(), mel.to(device, dtype).contiguous()


def _frames(wave: Tensor, window: int, shift: int) -> Tensor:
    """`[..., T] -> [..., frames, window]` (snip_edges): a strided view, or an index gather inside an export.

    The TorchScript ONNX exporter cannot export `unfold` over a dynamic length; a gather exports with both exporters
    but is ~15x slower than the view in eager mode, so it is used only while exporting (same values either way).
    """
    if torch.onnx.is_in_onnx_export() or torch.jit.is_tracing():
        count = (wave.shape[-1] - window) // shift + 1
        index = torch.arange(count, device=wave.device)[:, None] * shift + torch.arange(window, device=wave.device)
        return wave[..., index]
    return wave.unfold(-1, window, shift)


def _log_mel(
    wave: Tensor,
    window: int,
    shift: int,
    basis: Tensor,
    mel: Tensor,
    dither: float = 0.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Shared core of `fbank` and `Fbank`: `[..., T]` float -> `[..., frames, bins]`; T must hold one window."""
    frames = _frames(wave, window, shift)
    if dither != 0.0:
        # Kaldi draws fresh noise for every frame, overlapping samples included; the basis holds the int16 scale.
        noise = torch.randn(frames.shape, generator=generator, device=frames.device, dtype=frames.dtype)
        frames = frames + noise * (dither / INT16_SCALE)
    # DC removal stays outside the basis: folded in, a near-silent frame on an offset would lose its few significant
    # float32 digits to cancellation (0.01 off in log energy on real LibriSpeech silences).
    spectrum = (frames - frames.mean(dim=-1, keepdim=True)) @ basis
    bins = mel.shape[0]
    power = spectrum[..., :bins].square() + spectrum[..., bins:].square()
    return (power @ mel).clamp_min(LOG_FLOOR).log()


def _check_waveform(waveform: Tensor) -> Tensor:
    if not isinstance(waveform, Tensor):
        raise TypeError(f"fbank expects a torch.Tensor waveform, got {type(waveform).__name__}")
    if not waveform.is_floating_point():
        raise TypeError(f"fbank expects float samples in [-1, 1] (int16 / 32768), got dtype {waveform.dtype}")
    if waveform.dim() not in (1, 2):
        raise ValueError(f"fbank expects a waveform [T] or a batch [B, T], got shape {tuple(waveform.shape)}")
    return waveform if waveform.dtype == torch.float64 else waveform.float()


def fbank(
    waveform: Tensor,
    sample_rate: int = 16000,
    num_mel_bins: int = 80,
    frame_length: float = 25.0,
    frame_shift: float = 10.0,
    dither: float = 0.0,
    *,
    generator: torch.Generator | None = None,
    window: str = "povey",
) -> Tensor:
    """Kaldi log-mel fbank of a float waveform in [-1, 1]: `[T] -> [frames, bins]`, `[B, T] -> [B, frames, bins]`.

    `dither` is Gaussian noise in int16 units drawn from `generator` (for reproducible training); 0 at test time.
    `window` is Kaldi's `window_type` (`WINDOWS`). Computes in float64 when given float64, else float32.
    """
    wave = _check_waveform(waveform)
    size, shift, basis, mel = _matrices(
        sample_rate, num_mel_bins, float(frame_length), float(frame_shift), wave.device, wave.dtype, window
    )
    if wave.shape[-1] < size:
        return wave.new_zeros(*wave.shape[:-1], 0, num_mel_bins)
    # Always float32/64, also inside a training step's autocast: in float16 the int16-scaled power spectrum
    # overflows (65504) and the log turns it into inf, so every fp16 step on a GPU had a NaN loss.
    with torch.autocast(wave.device.type, enabled=False):
        return _log_mel(wave, size, shift, basis, mel, dither, generator)


def mean_normalize(feats: Tensor, lengths: Tensor | None = None) -> Tensor:
    """Subtract the utterance mean over time from `[T, F]` or `[B, T, F]`.

    With `lengths` (`[B]` valid frame counts of a padded batch) each mean covers only the valid frames, and the
    padded frames come back as zeros.
    """
    if feats.dim() not in (2, 3):
        raise ValueError(f"mean_normalize expects [T, F] or [B, T, F], got shape {tuple(feats.shape)}")
    if lengths is None:
        return feats - feats.mean(dim=-2, keepdim=True)
    if feats.dim() != 3 or lengths.shape != feats.shape[:1]:
        raise ValueError(f"lengths {tuple(lengths.shape)} needs a batch [B, T, F], got {tuple(feats.shape)}")
    valid = torch.arange(feats.shape[1], device=feats.device)[None, :] < lengths.to(feats.device)[:, None]
    valid = valid.unsqueeze(-1).to(feats.dtype)
    mean = (feats * valid).sum(dim=1, keepdim=True) / lengths.to(feats.device, feats.dtype).clamp_min(1)[:, None, None]
    return (feats - mean) * valid


def variance_normalize(feats: Tensor, eps: float = 1e-7) -> Tensor:
    """Divide `[T, F]` or `[B, T, F]` by each bin's standard deviation over time (unbiased, `eps` inside the root):
    after `mean_normalize`, the per-utterance, per-bin normalisation of Hugging Face's `SeamlessM4TFeatureExtractor`
    (W2V-BERT 2.0's features). A single frame has no spread and is left as it is (its mean-normalised value is 0)."""
    if feats.shape[-2] < 2:
        return feats
    return feats / torch.sqrt(feats.var(dim=-2, keepdim=True, unbiased=True) + eps)


FEATURE_KINDS = ("kaldi", "tfmel")


@dataclass(frozen=True)
class FeatureSpec:
    """The features a model reads: Kaldi fbank (`kind="kaldi"`) or WeSpeaker's TF-style log mel (`"tfmel"`,
    `speakerforge.data.tfmel`, ReDimNet2's), then (with `mean_norm`) utterance mean normalisation and (with
    `var_norm`, W2V-BERT's) division by each bin's standard deviation.

    The one description of a model's input: built from the config when training (`from_config`), stored in the
    model file and ONNX metadata (`to_meta`), read back at inference (`from_meta`, defaults filled in), and applied
    by calling it, so a model is always used with the features it was trained on. It also owns the frame geometry
    (`num_frames`, `frame_span`), which differs between the kinds."""

    num_mel_bins: int = 80
    frame_length: float = 25.0  # ms
    frame_shift: float = 10.0  # ms
    mean_norm: bool = True
    kind: str = "kaldi"
    var_norm: bool = False

    def __post_init__(self) -> None:
        if self.kind not in FEATURE_KINDS:
            raise ValueError(f"feature kind {self.kind!r}: choose from {', '.join(FEATURE_KINDS)}")
        if self.var_norm and not self.mean_norm:
            raise ValueError("features.var_norm normalises the variance after the mean: set mean_norm true as well")

    def __call__(
        self, waves: Tensor, dither: float = 0.0, generator: torch.Generator | None = None, sample_rate: int = 16000
    ) -> Tensor:
        """`[T]` or `[B, T]` float waveforms in [-1, 1] -> `[frames, bins]` or `[B, frames, bins]`."""
        if self.kind == "tfmel":
            from speakerforge.data.tfmel import tf_log_mel

            if dither:
                raise ValueError("dither is a Kaldi fbank setting; the tfmel features take none")
            feats = tf_log_mel(waves, self.num_mel_bins, sample_rate, self.frame_length, self.frame_shift)
        else:
            feats = fbank(
                waves,
                sample_rate,
                num_mel_bins=self.num_mel_bins,
                frame_length=self.frame_length,
                frame_shift=self.frame_shift,
                dither=dither,
                generator=generator,
            )
        feats = mean_normalize(feats) if self.mean_norm else feats
        return variance_normalize(feats) if self.var_norm else feats

    def num_frames(self, num_samples: int, sample_rate: int = 16000) -> int:
        """Frames computed from `num_samples` samples."""
        if self.kind == "tfmel":
            from speakerforge.data.tfmel import tf_num_frames

            return tf_num_frames(num_samples, sample_rate, self.frame_length, self.frame_shift)
        return int(num_frames(num_samples, sample_rate, self.frame_length, self.frame_shift))

    def frame_span(self, frames: int, sample_rate: int = 16000) -> int:
        """The fewest samples that give `frames` frames (at least one)."""
        window, shift, _ = frame_sizes(sample_rate, self.frame_length, self.frame_shift)
        padding = 2 * (shift // 2) if self.kind == "tfmel" else 0
        return max(1, window - padding + (max(frames, 1) - 1) * shift)

    def to_meta(self) -> dict[str, Any]:
        """The JSON form stored with a model (`features` in its metadata); `kind` only when not Kaldi's and
        `var_norm` only when set, so the metadata of every fbank model is what it always was."""
        meta: dict[str, Any] = {
            "num_mel_bins": self.num_mel_bins,
            "frame_length": self.frame_length,
            "frame_shift": self.frame_shift,
            "mean_norm": self.mean_norm,
        }
        if self.kind != "kaldi":
            meta["kind"] = self.kind
        if self.var_norm:
            meta["var_norm"] = True
        return meta

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any] | None) -> FeatureSpec:
        """From stored metadata; missing keys take the defaults, training-only keys (dither) are ignored."""
        given = dict(meta or {})
        base = cls()
        return cls(
            num_mel_bins=int(given.get("num_mel_bins", base.num_mel_bins)),
            frame_length=float(given.get("frame_length", base.frame_length)),
            frame_shift=float(given.get("frame_shift", base.frame_shift)),
            mean_norm=bool(given.get("mean_norm", base.mean_norm)),
            kind=str(given.get("kind", base.kind)),
            var_norm=bool(given.get("var_norm", base.var_norm)),
        )

    @classmethod
    def from_config(cls, features: Any) -> FeatureSpec:
        """From a config's `features` section (these attributes; `kind` and `var_norm` optional)."""
        return cls(
            int(features.num_mel_bins),
            float(features.frame_length),
            float(features.frame_shift),
            bool(features.mean_norm),
            str(getattr(features, "kind", "kaldi")),
            bool(getattr(features, "var_norm", False)),
        )


class Fbank(nn.Module):
    """`fbank` as a module `[B, T] -> [B, frames, bins]`, for models that take waveforms (and ONNX graphs).

    Dither is applied in training mode only, so an exported (eval) graph is deterministic. Both ONNX exporters work
    with dynamic batch and time axes (the time axis needs at least one window), e.g.::

        torch.onnx.export(Fbank(mean_norm=True).eval(), (wave,), "fbank.onnx", dynamo=False,
                          input_names=["wave"], output_names=["feats"],
                          dynamic_axes={"wave": {0: "batch", 1: "time"}, "feats": {0: "batch", 1: "frames"}})
        batch, time = torch.export.Dim("batch"), torch.export.Dim("time", min=400)
        torch.onnx.export(Fbank(mean_norm=True).eval(), (wave,), "fbank.onnx", dynamo=True,
                          input_names=["wave"], output_names=["feats"], dynamic_shapes=({0: batch, 1: time},))
    """

    def __init__(self, config: FbankConfig | None = None, **kwargs: object) -> None:
        super().__init__()
        self.config = FbankConfig(**{**(asdict(config) if config else {}), **kwargs})
        c = self.config
        window, shift, basis, mel = _matrices(
            c.sample_rate,
            c.num_mel_bins,
            float(c.frame_length),
            float(c.frame_shift),
            torch.device("cpu"),
            torch.float32,
        )
        self.window, self.shift = window, shift
        # Not persistent: rebuilt from the config, so checkpoints stay free of constants.
        self.register_buffer("basis", basis.clone(), persistent=False)
        self.register_buffer("mel", mel.clone(), persistent=False)

    def forward(self, waveform: Tensor, generator: torch.Generator | None = None) -> Tensor:
        basis, mel = cast(Tensor, self.basis), cast(Tensor, self.mel)  # buffers: nn.Module types them loosely
        wave = _check_waveform(waveform).to(basis.dtype)
        exporting = torch.onnx.is_in_onnx_export() or torch.jit.is_tracing()
        if not exporting and wave.shape[-1] < self.window:
            raise ValueError(f"waveform of {wave.shape[-1]} samples is shorter than one {self.window}-sample window")
        dither = self.config.dither if self.training else 0.0
        feats = _log_mel(wave, self.window, self.shift, basis, mel, dither, generator)
        return feats - feats.mean(dim=-2, keepdim=True) if self.config.mean_norm else feats

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in asdict(self.config).items())
