"""A synthetic speaker corpus in well under a second, for tests: numpy-only source-filter "speech".

Each speaker has a voice: an F0 level and range, a vocal-tract length (all formants scaled together), personal
formant offsets and bandwidths, a spectral tilt, breathiness, jitter, shimmer and a speaking rate. An utterance is a
random sequence of vowel-like segments (glottal pulse train through formant resonances, shaped in the frequency
domain) with fricative-like noise bursts and pauses between them, plus a little background noise. The content is
random and the voice is fixed, so a tiny model can learn to tell speakers apart. Far easier than real speech: never
report results on it as a headline figure.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from math import comb
from pathlib import Path

import numpy as np
import soundfile as sf

from speakerforge.atomic import atomic_write_bytes, atomic_write_text
from speakerforge.data.manifest import Utterance, write_manifest
from speakerforge.errors import DataError

log = logging.getLogger(__name__)

# Vowel formants F1-F3 in Hz for an adult male voice (Peterson & Barney 1952 averages).
_VOWELS = np.array(
    [
        [270, 2290, 3010],
        [390, 1990, 2550],
        [530, 1840, 2480],
        [660, 1720, 2410],
        [730, 1090, 2440],
        [570, 840, 2410],
        [440, 1020, 2240],
        [300, 870, 2240],
        [640, 1190, 2390],
        [490, 1350, 1690],
    ],
    dtype=np.float64,
)
_BANDWIDTHS = np.array([70.0, 100.0, 140.0, 220.0, 300.0])
_TAIL = 1024  # samples a resonance is allowed to ring past the end of its segment

Trial = tuple[int, str, str]


@dataclass(frozen=True)
class Voice:
    """The parameters that make one synthetic speaker sound like themself."""

    f0: float  # Hz, median pitch
    f0_range: float  # semitones, spread of pitch targets
    tract: float  # formant scale: > 1 is a shorter vocal tract
    formant_bias: np.ndarray  # per-formant multiplicative offsets (F1-F3), personal "accent"
    upper: np.ndarray  # F4, F5 in Hz
    bandwidth: float  # scale of all formant bandwidths
    tilt: float  # source spectral slope exponent (larger: duller voice)
    breath: float  # aspiration noise relative to the pulses
    jitter: float  # relative period perturbation
    shimmer: float  # relative pulse amplitude perturbation
    rate: float  # mean vowel length in seconds


def make_voice(rng: np.random.Generator) -> Voice:
    """Draw one speaker's voice."""
    f0 = float(np.exp(rng.uniform(np.log(85.0), np.log(255.0))))
    # Higher voices tend to have shorter tracts; the spread keeps the two only loosely coupled.
    tract = float(np.clip((f0 / 130.0) ** 0.18 * np.exp(rng.normal(0.0, 0.12)), 0.75, 1.4))
    return Voice(
        f0=f0,
        f0_range=float(rng.uniform(1.0, 4.0)),
        tract=tract,
        formant_bias=np.exp(rng.normal(0.0, 0.08, size=3)),
        upper=np.array([rng.uniform(3200, 3900), rng.uniform(4200, 5000)]) * tract,
        bandwidth=float(rng.uniform(0.8, 1.5)),
        tilt=float(rng.uniform(0.5, 1.3)),
        breath=float(rng.uniform(0.02, 0.25)),
        jitter=float(rng.uniform(0.004, 0.02)),
        shimmer=float(rng.uniform(0.02, 0.1)),
        rate=float(rng.uniform(0.06, 0.13)),
    )


def synthesize(voice: Voice, seconds: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """One utterance of `seconds` by `voice`: float32 in [-1, 1]."""
    n = max(1, int(round(seconds * sample_rate)))
    out = np.zeros(n + _TAIL, dtype=np.float64)
    pos = int(rng.uniform(0.03, 0.12) * sample_rate)
    declination = rng.uniform(1.0, 3.0)  # semitones the pitch falls over the utterance
    while pos < n:
        length = int(np.clip(rng.gamma(6.0, voice.rate / 6.0), 0.05, 0.35) * sample_rate)
        semitones = rng.normal(0.0, voice.f0_range) - declination * pos / n
        f0 = voice.f0 * 2.0 ** (semitones / 12.0)
        glide = 2.0 ** (rng.normal(0.0, 1.0) / 12.0)  # pitch moves within a vowel too
        _add(out, pos, _vowel(voice, _VOWELS[rng.integers(len(_VOWELS))], f0, f0 * glide, length, sample_rate, rng))
        pos += length
        gap = int(rng.uniform(0.02, 0.09) * sample_rate)
        if rng.random() < 0.5:
            _add(out, pos, _fricative(voice, gap, sample_rate, rng))
        pos += gap
    wav = out[:n]
    rms = float(np.sqrt(np.mean(wav**2))) or 1.0
    wav *= rng.uniform(0.04, 0.1) / rms
    wav += rng.normal(0.0, 10.0 ** (-rng.uniform(45.0, 60.0) / 20.0) * 0.07, size=n)  # room and microphone noise
    peak = float(np.max(np.abs(wav)))
    if peak > 0.99:
        wav *= 0.99 / peak
    return wav.astype(np.float32)


def _add(out: np.ndarray, pos: int, seg: np.ndarray) -> None:
    room = out.size - pos
    if room > 0:
        out[pos : pos + min(room, seg.size)] += seg[:room]


def _vowel(
    voice: Voice, formants: np.ndarray, f0_start: float, f0_end: float, length: int, sr: int, rng: np.random.Generator
) -> np.ndarray:
    """A voiced segment: jittered pulse train plus breath noise, filtered by the vowel's resonances."""
    source = np.zeros(length)
    t, pulses = rng.uniform(0.0, sr / f0_start), []
    while t < length:
        pulses.append(int(t))
        f0 = f0_start + (f0_end - f0_start) * t / length
        t += sr / f0 * (1.0 + voice.jitter * rng.normal())
    idx = np.array(pulses, dtype=np.int64)
    source[idx] = 1.0 + voice.shimmer * rng.normal(size=idx.size)
    source += rng.normal(0.0, voice.breath * np.sqrt(f0_start / sr), size=length)
    source *= _ramp(length, int(0.015 * sr))
    centres = np.concatenate([formants * voice.tract * voice.formant_bias, voice.upper])
    nfft = 1 << int(np.ceil(np.log2(length + _TAIL)))
    f = np.fft.rfftfreq(nfft, 1.0 / sr)
    gain = (1.0 + (f / 400.0) ** 2) ** (-voice.tilt / 2.0)
    for fc, bw in zip(centres, _BANDWIDTHS * voice.bandwidth):
        if fc < sr / 2:
            gain *= fc**2 / np.sqrt((fc**2 - f**2) ** 2 + (bw * f) ** 2)
    return np.fft.irfft(np.fft.rfft(source, nfft) * gain, nfft)[: length + _TAIL]


def _fricative(voice: Voice, length: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """An unvoiced consonant: a burst of noise in a high band (higher for shorter tracts)."""
    nfft = 1 << int(np.ceil(np.log2(length + 1)))
    f = np.fft.rfftfreq(nfft, 1.0 / sr)
    centre = min(rng.uniform(2500, 6000) * voice.tract, 0.45 * sr)
    band = np.exp(-0.5 * ((f - centre) / (0.25 * centre)) ** 2)
    noise = np.fft.irfft(np.fft.rfft(rng.normal(size=nfft)) * band, nfft)[:length]
    return noise * _ramp(length, max(1, length // 4)) * rng.uniform(0.02, 0.08)


def _ramp(length: int, fade: int) -> np.ndarray:
    env = np.ones(length)
    fade = min(fade, length // 2)
    if fade > 0:
        ramp = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, fade))
        env[:fade] = ramp
        env[length - fade :] = ramp[::-1]
    return env


# ----------------------------------------------------------------------------------------------------------------
def make_synthetic_corpus(
    out_dir: str | Path,
    n_speakers: int = 8,
    utts_per_speaker: int = 4,
    seconds: float = 2.0,
    sample_rate: int = 16000,
    seed: int = 0,
    prefix: str = "spk",
    manifest_name: str = "manifest.jsonl",
) -> list[Utterance]:
    """Write `out_dir/wav/SPK/SPK-NNN.wav` and `out_dir/<manifest_name>` (JSONL; .csv or a folder name: CSV/Kaldi).

    Deterministic for a seed; speaker i has the same voice whatever `n_speakers` is.
    """
    if n_speakers < 1 or utts_per_speaker < 1 or seconds <= 0 or sample_rate <= 0:
        raise DataError("synthetic corpus: speakers, utterances per speaker, seconds and sample rate must be > 0")
    out = Path(out_dir)
    width = max(2, len(str(n_speakers - 1)))
    utts = []
    for i in range(n_speakers):
        voice = make_voice(np.random.default_rng([seed, i]))
        spk = f"{prefix}{i:0{width}d}"
        for j in range(utts_per_speaker):
            wav = synthesize(voice, seconds, sample_rate, np.random.default_rng([seed, i, j, 1]))
            key = f"{spk}-{j:03d}"
            path = out / "wav" / spk / f"{key}.wav"
            _write_wav(path, wav, sample_rate)
            utts.append(Utterance(key, str(path.absolute()), spk, duration=wav.size / sample_rate))
    write_manifest(utts, out / manifest_name)
    log.info("synthetic corpus: %d speakers x %d utterances x %.1f s in %s", n_speakers, utts_per_speaker, seconds, out)
    return utts


def _write_wav(path: Path, wav: np.ndarray, sample_rate: int) -> None:
    """16-bit PCM through memory and an atomic rename: like `save_audio`, without its per-file disk sync."""
    buf = io.BytesIO()
    sf.write(buf, wav, sample_rate, subtype="PCM_16", format="WAV")
    atomic_write_bytes(path, buf.getvalue(), durable=False)


# ----------------------------------------------------------------------------------------------------------------
# trials
def make_trials(utts: Sequence[Utterance], n: int, seed: int = 0) -> list[Trial]:
    """`n` distinct trials `(label, a, b)`, half target (same speaker), half nontarget; deterministic for a seed.

    When fewer distinct pairs exist than asked for, all of them are used (with a warning).
    """
    by_spk: dict[str, list[str]] = {}
    for u in utts:
        if u.spk is not None:
            by_spk.setdefault(u.spk, []).append(u.key)
    speakers = sorted(by_spk)
    sizes = np.array([len(by_spk[s]) for s in speakers])
    n_target_pairs = int(sum(comb(int(k), 2) for k in sizes))
    n_nontarget_pairs = comb(int(sizes.sum()), 2) - n_target_pairs
    if n_target_pairs == 0 or n_nontarget_pairs == 0:
        raise DataError("trials need at least two speakers and one speaker with two utterances")
    want_t, want_n = min(n // 2, n_target_pairs), min(n - n // 2, n_nontarget_pairs)
    if (want_t, want_n) != (n // 2, n - n // 2):
        log.warning("asked for %d trials; only %d target and %d nontarget pairs exist", n, want_t, want_n)
    rng = np.random.default_rng(seed)
    trials = [(1, a, b) for a, b in _pairs(rng, by_spk, speakers, sizes, want_t, same=True)]
    trials += [(0, a, b) for a, b in _pairs(rng, by_spk, speakers, sizes, want_n, same=False)]
    order = rng.permutation(len(trials))
    return [trials[i] for i in order]


def _pairs(
    rng: np.random.Generator,
    by_spk: dict[str, list[str]],
    speakers: list[str],
    sizes: np.ndarray,
    count: int,
    same: bool,
) -> list[tuple[str, str]]:
    """`count` distinct unordered pairs of keys, from one speaker (`same`) or two; sampled, or enumerated if few."""
    if count == 0:
        return []
    total = (
        sum(comb(int(k), 2) for k in sizes) if same else comb(int(sizes.sum()), 2) - sum(comb(int(k), 2) for k in sizes)
    )
    if 2 * count > total:  # dense: enumerate every pair and choose among them
        everything = _all_pairs(by_spk, speakers, same)
        return [everything[i] for i in sorted(rng.choice(len(everything), count, replace=False))]
    flat = [(key, s) for s in speakers for key in by_spk[s]]
    weights = np.array([comb(int(k), 2) for k in sizes], dtype=np.float64)
    weights /= weights.sum()
    chosen: dict[tuple[str, str], None] = {}
    while len(chosen) < count:
        if same:
            keys = by_spk[speakers[rng.choice(len(speakers), p=weights)]]
            i, j = rng.choice(len(keys), 2, replace=False)
            a, b = keys[i], keys[j]
        else:
            i, j = rng.choice(len(flat), 2, replace=False)
            if flat[i][1] == flat[j][1]:
                continue
            a, b = flat[i][0], flat[j][0]
        if (b, a) not in chosen:
            chosen.setdefault((a, b), None)
    return list(chosen)


def _all_pairs(by_spk: dict[str, list[str]], speakers: list[str], same: bool) -> list[tuple[str, str]]:
    if same:
        return [
            (ks[i], ks[j])
            for s in speakers
            for ks in [by_spk[s]]
            for i in range(len(ks))
            for j in range(i + 1, len(ks))
        ]
    flat = [(key, s) for s in speakers for key in by_spk[s]]
    return [
        (flat[i][0], flat[j][0]) for i in range(len(flat)) for j in range(i + 1, len(flat)) if flat[i][1] != flat[j][1]
    ]


def write_trials(path: str | Path, trials: Sequence[Trial]) -> Path:
    """VoxCeleb-style trial list, `1 enroll test` per line, written atomically."""
    p = Path(path)
    lines = []
    for label, a, b in trials:
        if any(c.isspace() for c in a + b):
            raise DataError(f"{path}: trial keys cannot contain whitespace ({a!r}, {b!r})")
        lines.append(f"{int(label)} {a} {b}\n")
    atomic_write_text(p, "".join(lines))
    return p
