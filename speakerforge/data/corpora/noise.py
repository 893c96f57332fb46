"""Augmentation material: synthetic RIRs and noises made locally, and readers for real MUSAN / RIRS_NOISES trees.

Nothing is downloaded. The synthetic builders are deterministic: file `i` depends only on `(seed, i)`, so a larger
`n` adds files without changing the existing ones. Their folders are used as they are by
`speakerforge.data.augment` (`augment.noise_dir`, `augment.rir_dir`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf

from speakerforge.atomic import atomic_path
from speakerforge.data.audio import SAMPLE_RATE, find_audio_files, load_audio, save_audio
from speakerforge.data.augment import NOISE_CATEGORIES, NoiseItem, write_audio_list
from speakerforge.errors import DataError

log = logging.getLogger(__name__)

_DECAY_60DB = 3.0 * math.log(10.0)  # amplitude factor 1e-3 (60 dB) at t = RT60


# --------------------------------------------------------------------------------------------------- RIRs


def synthetic_rir(rng: np.random.Generator, sample_rate: int = SAMPLE_RATE) -> tuple[np.ndarray, float]:
    """One RIR: propagation delay, a direct-path peak, sparse early reflections and an exponential noise tail.

    RT60 is uniform in 0.2-1.0 s and the direct-to-reverberant ratio in -3..10 dB; the direct path stays the
    largest tap (peak 0.9), so aligning on the peak finds it. Returns the RIR and its RT60.
    """
    rt60 = float(rng.uniform(0.2, 1.0))
    delay = int(rng.integers(int(0.002 * sample_rate), int(0.02 * sample_rate)))  # 0.7-7 m of travel
    tail_len = int(rt60 * sample_rate)
    h = np.zeros(delay + tail_len, dtype=np.float64)
    t = np.arange(1, tail_len) / sample_rate  # seconds after the direct path
    tail = rng.standard_normal(tail_len - 1) * np.exp(-_DECAY_60DB * t / rt60)
    drr_db = float(rng.uniform(-3.0, 10.0))
    tail *= math.sqrt(10.0 ** (-drr_db / 10.0) / float(np.sum(tail * tail)))
    h[delay + 1 :] = tail
    for _ in range(int(rng.integers(3, 9))):
        lag = int(rng.integers(int(0.001 * sample_rate), int(0.03 * sample_rate)))
        h[delay + lag] += (
            float(rng.uniform(0.1, 0.5))
            * float(rng.choice([-1.0, 1.0]))
            * math.exp(-_DECAY_60DB * lag / sample_rate / rt60)
        )
    h[delay] = 1.0
    others = np.abs(np.delete(h, delay)).max()
    if others >= 0.8:  # keep the direct path clearly the peak
        h[np.arange(len(h)) != delay] *= 0.8 / others
    return (0.9 * h).astype(np.float32), rt60


def make_synthetic_rirs(out_dir: str | Path, n: int, seed: int = 0, sample_rate: int = SAMPLE_RATE) -> list[Path]:
    """Write `n` synthetic RIRs as float wavs `rir_0000.wav`... into `out_dir`; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _remove_stale(out, "rir_")
    paths = []
    for i in range(n):
        h, _ = synthetic_rir(np.random.default_rng([seed, i]), sample_rate)
        path = out / f"rir_{i:04d}.wav"
        _write_float_wav(path, h, sample_rate)  # 16-bit would zero the last 30 dB of the tail
        paths.append(path)
    log.info("wrote %d synthetic RIRs to %s", n, out)
    return paths


def _write_float_wav(path: Path, wav: np.ndarray, sample_rate: int) -> None:
    with atomic_path(path, durable=False) as tmp:
        sf.write(str(tmp), wav, sample_rate, subtype="FLOAT", format="WAV")


# ------------------------------------------------------------------------------------------------- noises


def _coloured(rng: np.random.Generator, length: int, exponent: float) -> np.ndarray:
    """Gaussian noise with power spectrum 1 / f^exponent (0 white, 1 pink, 2 brown)."""
    white = rng.standard_normal(length)
    if exponent == 0:
        return white
    spectrum = np.fft.rfft(white)
    f = np.arange(len(spectrum), dtype=np.float64)
    f[0] = 1.0
    spectrum /= f ** (exponent / 2.0)
    spectrum[0] = 0.0
    return np.fft.irfft(spectrum, length)


def _hum(rng: np.random.Generator, length: int, sample_rate: int) -> np.ndarray:
    """Mains hum: 50 or 60 Hz and harmonics with random amplitudes and phases, over a faint noise floor."""
    f0 = float(rng.choice([50.0, 60.0])) * float(rng.uniform(0.995, 1.005))
    t = np.arange(length) / sample_rate
    out = np.zeros(length)
    for k in range(1, 9):
        out += rng.uniform(0.2, 1.0) / k * np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi))
    return out + 0.01 * rng.standard_normal(length)


def _music(rng: np.random.Generator, length: int, sample_rate: int) -> np.ndarray:
    """Plucked notes and chords (harmonic tones with decaying envelopes): a stand-in for MUSAN music."""
    out = np.zeros(length)
    pos = 0
    while pos < length:
        dur = int(rng.uniform(0.15, 0.6) * sample_rate)
        t = np.arange(min(dur * 2, length - pos)) / sample_rate
        envelope = np.exp(-t * rng.uniform(3.0, 12.0))
        for _ in range(int(rng.integers(1, 4))):
            freq = 440.0 * 2.0 ** ((int(rng.integers(48, 85)) - 69) / 12.0)
            for k in range(1, 5):
                if k * freq < sample_rate / 2:
                    out[pos : pos + len(t)] += envelope * np.sin(2 * np.pi * k * freq * t) / k**1.5
        pos += dur
    return out


_NOISE_KINDS: dict[str, tuple[str, Callable[[np.random.Generator, int, int], np.ndarray]]] = {
    "white": ("noise", lambda rng, n, sr: _coloured(rng, n, 0.0)),
    "pink": ("noise", lambda rng, n, sr: _coloured(rng, n, 1.0)),
    "brown": ("noise", lambda rng, n, sr: _coloured(rng, n, 2.0)),
    "hum": ("noise", _hum),
    "music": ("music", _music),
}


def _at_level(wav: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Scale to a random RMS of -30..-15 dBFS with the peak below 0.99 (the SNR sets the final level anyway)."""
    rms = float(np.sqrt(np.mean(wav * wav))) or 1.0
    wav = wav * (10.0 ** (rng.uniform(-30.0, -15.0) / 20.0) / rms)
    peak = float(np.abs(wav).max())
    return (wav * (0.99 / peak) if peak > 0.99 else wav).astype(np.float32)


def make_noise_bank(
    out_dir: str | Path,
    n: int,
    seed: int = 0,
    speech_manifest: str | Path | None = None,
    duration: float = 4.0,
    num_speech: int | None = None,
    sample_rate: int = SAMPLE_RATE,
) -> list[NoiseItem]:
    """Write a MUSAN-shaped bank: `noise/` (white, pink, brown, hum), `music/`, and with a manifest `speech/`.

    The `n` noise files cycle through the kinds. With `speech_manifest`, `num_speech` (default `n`) utterances
    are cut to `duration` seconds into `speech/`; the noise bank mixes 3-7 of them into babble at run time.
    """
    out = Path(out_dir)
    kinds = list(_NOISE_KINDS)
    length = int(round(duration * sample_rate))
    for category in NOISE_CATEGORIES:
        _remove_stale(out / category, "")
    items = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        category, make = _NOISE_KINDS[kind]
        rng = np.random.default_rng([seed, i])
        path = out / category / f"{kind}_{i:04d}.wav"
        save_audio(path, _at_level(make(rng, length, sample_rate), rng), sample_rate)
        items.append(NoiseItem(str(path), category))
    if speech_manifest is not None:
        items += _write_speech_clips(
            out / "speech", speech_manifest, num_speech if num_speech is not None else n, seed, length, sample_rate
        )
    log.info("wrote %d augmentation files to %s", len(items), out)
    return items


def _write_speech_clips(
    out: Path, manifest: str | Path, count: int, seed: int, length: int, sample_rate: int
) -> list[NoiseItem]:
    from speakerforge.data.manifest import read_manifest  # imported late: data.manifest is optional for the rest

    utterances = list(read_manifest(manifest))
    if not utterances:
        raise DataError(f"{manifest}: manifest holds no utterances to make babble from")
    rng = np.random.default_rng([seed, 1 << 20])
    order = rng.permutation(len(utterances))[:count]
    items = []
    for j, index in enumerate(order):
        utt = utterances[int(index)]
        wav = load_audio(utt.path, utt.start, utt.end, sample_rate)
        if len(wav) > length:
            offset = int(rng.integers(0, len(wav) - length + 1))
            wav = wav[offset : offset + length]
        path = out / f"speech_{j:04d}.wav"
        save_audio(path, wav, sample_rate)
        items.append(NoiseItem(str(path), "speech"))
    return items


def _remove_stale(folder: Path, prefix: str) -> None:
    """Drop files an earlier, larger build left behind, so the folder holds exactly this build."""
    if not folder.is_dir():
        return
    names = (prefix,) if prefix else tuple(f"{k}_" for k in _NOISE_KINDS) + ("speech_",)
    for f in folder.glob("*.wav"):
        if f.name.startswith(names):
            f.unlink()


# ------------------------------------------------------------------------------------- real corpora layouts


def prepare_musan(src: str | Path) -> list[NoiseItem]:
    """List a MUSAN tree (`musan/{noise,music,speech}/<source>/*.wav`) with each file's category."""
    root = Path(src)
    if (root / "musan").is_dir():
        root = root / "musan"
    if not root.is_dir():
        raise DataError(f"{src}: MUSAN folder not found")
    items = [
        NoiseItem(str(f.resolve()), c)
        for c in NOISE_CATEGORIES
        if (root / c).is_dir()
        for f in find_audio_files(root / c)
    ]
    if not items:
        raise DataError(
            f"{src}: no audio under noise/, music/ or speech/ (expected the MUSAN layout "
            "musan/{noise,music,speech}/<source>/*.wav)"
        )
    return items


def prepare_rirs(src: str | Path) -> list[Path]:
    """List the RIRs of a RIRS_NOISES tree: `simulated_rirs/**` and the real RIRs named in `real_rirs_*/rir_list`.

    The isotropic and point-source noises of that corpus are left out: they are noises, not impulse responses.
    """
    root = Path(src)
    if (root / "RIRS_NOISES").is_dir():
        root = root / "RIRS_NOISES"
    if not root.is_dir():
        raise DataError(f"{src}: RIRS_NOISES folder not found")
    paths = find_audio_files(root / "simulated_rirs") if (root / "simulated_rirs").is_dir() else []
    real = root / "real_rirs_isotropic_noises"
    if real.is_dir():
        paths += _real_rirs(real)
    if not paths:
        raise DataError(
            f"{src}: no RIRs under simulated_rirs/ or real_rirs_isotropic_noises/ (expected the "
            "RIRS_NOISES layout of OpenSLR 28)"
        )
    return [p.resolve() for p in paths]


def _real_rirs(folder: Path) -> list[Path]:
    """Files of `folder` listed in its Kaldi `rir_list` (`--rir-id ID --room-id R path`), else those not noises."""
    files = find_audio_files(folder)
    rir_list = folder / "rir_list"
    if not rir_list.is_file():
        return [f for f in files if "noise" not in f.name.lower()]
    names = {line.split()[-1].rsplit("/", 1)[-1] for line in rir_list.read_text().splitlines() if line.strip()}
    return [f for f in files if f.name in names]


def prepare(kind: str, src: str | Path, out: str | Path) -> Path:
    """`prepare musan|rirs SRC --out DIR`: write `DIR/musan.csv` or `DIR/rirs.csv` for `augment.*_dir`."""
    if kind == "musan":
        return write_audio_list(prepare_musan(src), Path(out) / "musan.csv")
    if kind == "rirs":
        return write_audio_list(prepare_rirs(src), Path(out) / "rirs.csv")
    raise DataError(f"prepare: unknown augmentation corpus {kind!r}, expected 'musan' or 'rirs'")


def make_augmentation_set(
    out_dir: str | Path,
    noises: int = 40,
    rirs: int = 40,
    seed: int = 0,
    speech_manifest: str | Path | None = None,
    duration: float = 4.0,
) -> dict[str, list[Path]]:
    """`prepare noise --out DIR`: synthetic `DIR/musan/{noise,music[,speech]}` and `DIR/rirs/`, the two folders the
    shipped configs name (`augment.noise_dir: data/musan`, `augment.rir_dir: data/rirs` with `--out data`).

    A stand-in for MUSAN and RIRS_NOISES where they cannot be downloaded; with `speech_manifest`, babble is made
    from real speech of that manifest. Deterministic per `seed`.
    """
    if noises < 1 and rirs < 1:
        raise DataError("prepare noise: nothing to make (--noises and --rirs are both 0)")
    if not math.isfinite(duration) or duration <= 0:
        raise DataError(f"prepare noise: --seconds must be a positive number of seconds (got {duration})")
    out = Path(out_dir)
    made: dict[str, list[Path]] = {"musan": [], "rirs": []}
    if noises > 0:
        items = make_noise_bank(out / "musan", noises, seed, speech_manifest, duration)
        made["musan"] = [Path(i.path) for i in items]
    if rirs > 0:
        made["rirs"] = make_synthetic_rirs(out / "rirs", rirs, seed)
    return made
