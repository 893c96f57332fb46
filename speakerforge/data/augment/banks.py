"""Augmentation material: noise and RIR files from a folder (MUSAN layout) or a CSV list, decoded on first use
and kept in an LRU cache."""

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

from speakerforge.atomic import atomic_write_text
from speakerforge.config import AugmentConfig
from speakerforge.data.audio import AUDIO_SUFFIXES, SAMPLE_RATE, find_audio_files, load_audio, resample
from speakerforge.data.augment.waveform import add_babble, add_noise, reverberate
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
