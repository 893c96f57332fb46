"""Waveform and feature augmentation: additive noise, reverberation, speed perturbation, SpecAugment.

Every random choice is drawn from a generator the caller passes in (`numpy.random.Generator` for waveforms,
`torch.Generator` for feature masks), never from global state, so that a resumed run that restores the generator
states reproduces the same augmented samples bit for bit. What is cached (decoded noise and RIR files) never changes
which numbers are drawn.

Policy (3D-Speaker / WeSpeaker): per utterance, with probability `noise_prob` add noise, with `reverb_prob`
reverberate, with `both_prob` reverberate then add noise, otherwise leave it clean. Noise comes from a MUSAN-like bank:
`noise` at 0-15 dB SNR, `music` at 5-15 dB, and babble of 3-7 talkers from `speech`, each talker at 13-20 dB.
Levels are kept as they are (no peak normalisation, no clipping): the features are mean-normalised, so a gain is
irrelevant, and a physical mix keeps the requested SNR exact.
"""

from __future__ import annotations

import csv
import io
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch

from speakerforge.atomic import atomic_write_text
from speakerforge.config import AugmentConfig
from speakerforge.data.audio import AUDIO_SUFFIXES, SAMPLE_RATE, find_audio_files, load_audio, resample
from speakerforge.errors import ConfigError, DataError, where

log = logging.getLogger(__name__)

NOISE_CATEGORIES = ("noise", "music", "speech")
# SNR ranges in dB per category; "speech" files are mixed as babble.
_DEFAULTS = AugmentConfig()  # the config's defaults are the banks' defaults: one schema
DEFAULT_SNR_DB = {
    "noise": (_DEFAULTS.noise_snr[0], _DEFAULTS.noise_snr[1]),
    "music": (_DEFAULTS.music_snr[0], _DEFAULTS.music_snr[1]),
    "speech": (_DEFAULTS.babble_snr[0], _DEFAULTS.babble_snr[1]),
}
DEFAULT_BABBLE_SPEAKERS = (_DEFAULTS.babble_speakers[0], _DEFAULTS.babble_speakers[1])
_SILENCE_POWER = 1e-10  # mean square below -100 dBFS counts as silence


# ----------------------------------------------------------------------------------------------------- mixing


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


# --------------------------------------------------------------------------------------------- SpecAugment


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


# ---------------------------------------------------------------------------------------- lists and banks


@dataclass(frozen=True)
class NoiseItem:
    """One augmentation file and its MUSAN category (`noise`, `music` or `speech`)."""

    path: str
    category: str = "noise"


def write_audio_list(items: Iterable[NoiseItem | str | Path], path: str | Path) -> Path:
    """Write a `path,category` CSV that `NoiseBank.from_path` and `RirBank.from_path` read."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "category"])
    for item in items:
        if not isinstance(item, NoiseItem):
            item = NoiseItem(str(item), "rir")
        writer.writerow([item.path, item.category])
    atomic_write_text(p, buf.getvalue())
    return p


def read_audio_list(path: str | Path, key: str) -> list[NoiseItem]:
    """Read a CSV with a `path` column (and optional `category`); relative paths are taken from the list's folder."""
    p = Path(path)
    with open(p, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or "path" not in reader.fieldnames:
            raise DataError(
                f"{where(p, 1)}: {key}: an audio list needs a CSV header with a 'path' column "
                f"(got {reader.fieldnames}); a folder of audio files works too"
            )
        items = []
        for row in reader:
            text = (row.get("path") or "").strip()
            if not text:
                raise DataError(f"{where(p, reader.line_num)}: {key}: empty path")
            file = Path(text)
            if not file.is_absolute():
                file = p.parent / file
            items.append(NoiseItem(str(file), (row.get("category") or "noise").strip()))
    return items


def _resolve_source(path: str | Path | None, key: str, what: str) -> list[NoiseItem]:
    """Items of a folder (scanned recursively, sorted) or a list file; missing or empty sources name `key`."""
    if path is None or str(path) == "":
        raise ConfigError(f"{key} is not set: give a folder of {what} wav files or a CSV list of them")
    p = Path(path)
    if not p.exists():
        raise DataError(f"{key}: {p} does not exist (expected a folder of {what} wav files or a CSV list)")
    if p.is_dir():
        files = find_audio_files(p)
        if not files:
            raise DataError(
                f"{key}: {p} holds no audio files ({', '.join(AUDIO_SUFFIXES)}); "
                f"`speakerforge.data.corpora.noise` can make synthetic {what} files"
            )
        return [NoiseItem(str(f), _category_of(f, p)) for f in files]
    items = read_audio_list(p, key)
    if not items:
        raise DataError(f"{key}: list {p} holds no entries")
    return items


def _category_of(file: Path, root: Path) -> str:
    """MUSAN layout: the first folder below the root (or the root itself) names the category; else `noise`."""
    parts = file.relative_to(root).parts
    if len(parts) > 1 and parts[0] in NOISE_CATEGORIES:
        return parts[0]
    return root.name if root.name in NOISE_CATEGORIES else "noise"


class _LruCache:
    """Decoded files by index, the least recently used dropped first."""

    def __init__(self, loader: Callable[[int], np.ndarray], max_items: int) -> None:
        self._loader = loader
        self._max = max(0, max_items)
        self._data: OrderedDict[int, np.ndarray] = OrderedDict()

    def __call__(self, index: int) -> np.ndarray:
        if index in self._data:
            self._data.move_to_end(index)
            return self._data[index]
        value = self._loader(index)
        if self._max:
            self._data[index] = value
            if len(self._data) > self._max:
                self._data.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._data)


class NoiseBank:
    """Noise files by category, decoded on first use and kept in an LRU cache of `cache_size` files."""

    def __init__(
        self,
        items: Sequence[NoiseItem],
        snr_db: dict[str, tuple[float, float]] | None = None,
        babble_speakers: tuple[int, int] = DEFAULT_BABBLE_SPEAKERS,
        cache_size: int = 64,
        key: str = "augment.noise_dir",
    ) -> None:
        if not items:
            raise DataError(f"{key}: no noise files")
        self.items = list(items)
        self.key = key
        self.snr_db = dict(DEFAULT_SNR_DB if snr_db is None else snr_db)
        self.babble_speakers = babble_speakers
        self._by_category: dict[str, list[int]] = {}
        for i, item in enumerate(self.items):
            if item.category not in NOISE_CATEGORIES:
                raise DataError(
                    f"{key}: {item.path}: unknown noise category {item.category!r}, "
                    f"expected one of {', '.join(NOISE_CATEGORIES)}"
                )
            self._by_category.setdefault(item.category, []).append(i)
        self.load = _LruCache(self._decode, cache_size)
        log.info("noise bank: %s", ", ".join(f"{c} {len(v)}" for c, v in sorted(self._by_category.items())))

    @classmethod
    def from_path(cls, path: str | Path | None, key: str = "augment.noise_dir", **kwargs) -> NoiseBank:
        """From a folder (MUSAN `noise/ music/ speech/` subfolders optional) or a `path,category` CSV list."""
        return cls(_resolve_source(path, key, "noise"), key=key, **kwargs)

    @property
    def categories(self) -> tuple[str, ...]:
        """Categories present, in the fixed order noise, music, speech."""
        return tuple(c for c in NOISE_CATEGORIES if c in self._by_category)

    def __len__(self) -> int:
        return len(self.items)

    def _decode(self, index: int) -> np.ndarray:
        return load_audio(self.items[index].path)

    def pick(self, category: str, rng: np.random.Generator) -> np.ndarray:
        """One random file of `category`, decoded."""
        indices = self._by_category[category]
        return self.load(indices[int(rng.integers(len(indices)))])

    def add_random(self, wav: np.ndarray, rng: np.random.Generator, category: str | None = None) -> np.ndarray:
        """Add a random category's noise at a random SNR of that category's range (speech becomes babble)."""
        if category is None:
            cats = self.categories
            category = cats[int(rng.integers(len(cats)))]
        elif category not in self._by_category:
            raise DataError(f"{self.key}: no {category!r} files in the noise bank (have {', '.join(self.categories)})")
        low, high = self.snr_db[category]
        if category != "speech":
            noise = self.pick(category, rng)
            return add_noise(wav, noise, float(rng.uniform(low, high)), rng)
        indices = self._by_category["speech"]
        k = int(rng.integers(self.babble_speakers[0], self.babble_speakers[1] + 1))
        chosen = rng.choice(len(indices), size=k, replace=k > len(indices))
        snrs = rng.uniform(low, high, size=k)
        talkers = [self.load(indices[int(j)]) for j in chosen]
        return add_babble(wav, talkers, snrs.tolist(), rng)


def load_rir(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """First channel of an RIR file at `sample_rate` (downmixing would smear the per-microphone delays)."""
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises several types
        raise DataError(
            f"{path}: cannot read room impulse response ({str(exc).strip() or type(exc).__name__})"
        ) from None
    if data.shape[0] == 0:
        raise DataError(f"{path}: room impulse response holds no samples")
    return resample(np.ascontiguousarray(data[:, 0]), int(sr), sample_rate)


class RirBank:
    """Room impulse responses, decoded on first use and kept in an LRU cache of `cache_size` files."""

    def __init__(self, paths: Sequence[str | Path], cache_size: int = 256, key: str = "augment.rir_dir") -> None:
        if not paths:
            raise DataError(f"{key}: no room impulse responses")
        self.paths = [str(p) for p in paths]
        self.key = key
        self.load = _LruCache(lambda i: load_rir(self.paths[i]), cache_size)

    @classmethod
    def from_path(cls, path: str | Path | None, key: str = "augment.rir_dir", **kwargs) -> RirBank:
        """From a folder of RIR files (searched recursively) or a CSV list with a `path` column."""
        return cls([item.path for item in _resolve_source(path, key, "RIR")], key=key, **kwargs)

    def __len__(self) -> int:
        return len(self.paths)

    def pick(self, rng: np.random.Generator) -> np.ndarray:
        """One random RIR, decoded."""
        return self.load(int(rng.integers(len(self.paths))))

    def reverberate_random(self, wav: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Reverberate with a random RIR of the bank."""
        return reverberate(wav, self.pick(rng))


# ----------------------------------------------------------------------------------------------- composition


def check_augment(config: AugmentConfig, prefix: str = "augment") -> None:
    """ConfigError naming `prefix.key` for settings that each pass their declared range but not together."""
    for name in ("noise_prob", "reverb_prob", "both_prob"):
        value = getattr(config, name)
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{prefix}.{name}={value}: a probability must lie in [0, 1]")
    total = config.noise_prob + config.reverb_prob + config.both_prob
    if total > 1.0 + 1e-9:
        raise ConfigError(
            f"{prefix}.noise_prob + reverb_prob + both_prob = {total:g} > 1: they are exclusive choices per utterance"
        )
    if config.enabled:
        if not config.noise_dir and (config.noise_prob > 0 or config.both_prob > 0):
            raise ConfigError(
                f"{prefix}.noise_dir is not set but {prefix}.noise_prob={config.noise_prob} / "
                f"both_prob={config.both_prob}: set the folder or make those probabilities 0"
            )
        if not config.rir_dir and (config.reverb_prob > 0 or config.both_prob > 0):
            raise ConfigError(
                f"{prefix}.rir_dir is not set but {prefix}.reverb_prob={config.reverb_prob} / "
                f"both_prob={config.both_prob}: set the folder or make those probabilities 0"
            )
    for name in ("noise_snr", "music_snr", "babble_snr", "babble_speakers"):
        pair = list(getattr(config, name))
        if len(pair) != 2:
            raise ConfigError(f"{prefix}.{name}={pair}: give two numbers, [low, high]")
        if pair[0] > pair[1]:
            raise ConfigError(f"{prefix}.{name}={pair}: low must not exceed high")
    if config.babble_speakers[0] < 1:
        raise ConfigError(f"{prefix}.babble_speakers must be at least 1, got {config.babble_speakers}")


class Augmenter:
    """Applies the configured policy; `augmenter(wav, rng)` is a pure function of `wav` and the rng state."""

    def __init__(self, config: AugmentConfig, prefix: str = "augment") -> None:
        check_augment(config, prefix)
        self.config = config
        self.noise: NoiseBank | None = None
        self.rirs: RirBank | None = None
        if config.noise_dir:
            snr = {
                "noise": tuple(config.noise_snr),
                "music": tuple(config.music_snr),
                "speech": tuple(config.babble_snr),
            }
            self.noise = NoiseBank.from_path(
                config.noise_dir,
                key=f"{prefix}.noise_dir",
                snr_db=snr,
                babble_speakers=(config.babble_speakers[0], config.babble_speakers[1]),
                cache_size=config.cache_size,
            )
        if config.rir_dir:
            self.rirs = RirBank.from_path(config.rir_dir, key=f"{prefix}.rir_dir", cache_size=config.cache_size)
        if not config.enabled:
            log.info("augmentation off: neither %s.noise_dir nor %s.rir_dir is set", prefix, prefix)

    def __call__(self, wav: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Clean, noisy, reverberant or both, drawn once per call; same length, float32."""
        c = self.config
        if not c.enabled:
            return np.asarray(wav, dtype=np.float32)
        u = float(rng.random())
        if u < c.noise_prob:
            return self.noise.add_random(wav, rng)
        if u < c.noise_prob + c.reverb_prob:
            return self.rirs.reverberate_random(wav, rng)
        if u < c.noise_prob + c.reverb_prob + c.both_prob:
            return self.noise.add_random(self.rirs.reverberate_random(wav, rng), rng)
        return np.asarray(wav, dtype=np.float32)
