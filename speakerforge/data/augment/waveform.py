"""Waveform augmentations: noise mixed at an exact SNR, babble, reverberation with an RIR, speed perturbation;
each random choice drawn from the generator the caller passes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import soxr

from speakerforge.data.audio import SAMPLE_RATE
from speakerforge.errors import DataError

_SILENCE_POWER = 1e-10  # mean square below -100 dBFS counts as silence


def fit_length(noise: np.ndarray, length: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Cut `length` samples of `noise` at a random offset (offset 0 without `rng`), looping a short noise."""
    n = len(noise)
    if n == 0:
        raise DataError("noise signal holds no samples")
    if n >= length:
        offset = int(rng.integers(0, n - length + 1)) if rng is not None else 0
        return noise[offset : offset + length]
    # Shorter than the speech: loop it, starting anywhere inside the first period.
    offset = int(rng.integers(0, n)) if rng is not None else 0
    return np.take(noise, (offset + np.arange(length)) % n)


def _power(x: np.ndarray) -> float:
    return float(np.mean(np.square(x, dtype=np.float64))) if len(x) else 0.0


def _scaled_noise(
    wav: np.ndarray, noise: np.ndarray, snr_db: float, rng: np.random.Generator | None
) -> np.ndarray | None:
    """The noise segment scaled so that power(wav) / power(segment) is `snr_db`; None when either is silent."""
    segment = fit_length(np.asarray(noise, dtype=np.float64), len(wav), rng)
    p_speech, p_noise = _power(wav), _power(segment)
    if p_speech < _SILENCE_POWER or p_noise < _SILENCE_POWER:
        # The SNR of silence is undefined: a silent crop stays silent, a silent noise file adds nothing.
        return None
    return segment * np.sqrt(p_speech / (p_noise * 10.0 ** (snr_db / 10.0)))


def add_noise(wav: np.ndarray, noise: np.ndarray, snr_db: float, rng: np.random.Generator | None = None) -> np.ndarray:
    """Mix `noise` into `wav` at `snr_db` (power ratio over the whole crop); same length, float32."""
    scaled = _scaled_noise(wav, noise, snr_db, rng)
    if scaled is None:
        return np.array(wav, dtype=np.float32)
    return (wav.astype(np.float64) + scaled).astype(np.float32)


def add_babble(
    wav: np.ndarray, talkers: Sequence[np.ndarray], snrs_db: Sequence[float], rng: np.random.Generator | None = None
) -> np.ndarray:
    """Add several speech signals, each at its own SNR against `wav` (Kaldi / VoxCeleb-trainer babble)."""
    if len(talkers) != len(snrs_db):
        raise ValueError(f"{len(talkers)} talkers but {len(snrs_db)} SNRs")
    out = wav.astype(np.float64)
    for talker, snr in zip(talkers, snrs_db):
        scaled = _scaled_noise(wav, talker, snr, rng)
        if scaled is not None:
            out += scaled
    return out.astype(np.float32)


def _fft_size(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def reverberate(wav: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """Convolve with `rir` normalised to unit energy, aligned on its direct-path peak; same length, float32.

    Aligning on the peak (the largest absolute tap) removes the propagation delay, so the speech is not shifted
    against its labels or crop boundaries; a unit-energy RIR keeps the level comparable to the dry signal.
    """
    h = np.asarray(rir, dtype=np.float64)
    energy = float(np.sqrt(np.sum(h * h))) if len(h) else 0.0
    if energy < 1e-8:
        raise DataError("room impulse response is silent (zero energy)")
    h = h / energy
    peak = int(np.argmax(np.abs(h)))
    n = len(wav)
    size = _fft_size(n + len(h) - 1)
    spectrum = np.fft.rfft(np.asarray(wav, dtype=np.float64), size) * np.fft.rfft(h, size)
    full = np.fft.irfft(spectrum, size)
    return full[peak : peak + n].astype(np.float32)


def speed_perturb(wav: np.ndarray, factor: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Play `factor` times faster (pitch and tempo change, like sox `speed`); the length becomes len / factor."""
    if factor <= 0:
        raise ValueError(f"speed factor must be positive, got {factor}")
    if factor == 1.0:
        return np.array(wav, dtype=np.float32)
    # Pretend the samples were taken at sample_rate * factor and resample back to sample_rate.
    out = soxr.resample(np.asarray(wav, dtype=np.float32), sample_rate * factor, sample_rate, quality="HQ")
    return out.astype(np.float32, copy=False)
