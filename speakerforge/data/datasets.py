"""Training examples: fixed-length random crops with speed perturbation and waveform augmentation.

An example is a chain of small steps, as WeSpeaker's processors: `example_rng` -> `pick_speed` -> `read_example`
-> `apply_speed` -> `random_crop` -> augment; the speaker crops here and the SSL views (`ssl_views`) share them.
Every random choice of an example comes from an RNG seeded by (seed, epoch, position in the epoch plan), so an
example is the same whichever worker builds it and whether or not the run was resumed in between.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from speakerforge.data.audio import SAMPLE_RATE
from speakerforge.data.sampling import Draw, Source, SpeakerIndex
from speakerforge.data.shards.reader import load_utterance, shard_tables
from speakerforge.errors import DataError


def example_rng(seed: int, epoch: int, position: int) -> np.random.Generator:
    """The RNG of one training example."""
    return np.random.default_rng([int(seed), 3, int(epoch), int(position)])


def pick_speed(speeds: list[float], rng: np.random.Generator) -> float:
    """One speed for the whole utterance (uniform over `speeds`; no draw when there is one)."""
    return speeds[int(rng.integers(len(speeds)))] if len(speeds) > 1 else speeds[0]


def read_example(src: Source, draw: Draw, sample_rate: int, tables: Any) -> np.ndarray:
    """The drawn utterance's samples; audio that fails to decode only now (NaN samples, a file changed since the
    header check) is named by its manifest row."""
    utt = src.utts[draw.item]
    try:
        return load_utterance(utt, sample_rate, tables)
    except DataError as exc:
        raise DataError(f"{utt.where}: {exc}") from None


def apply_speed(wav: np.ndarray, speed: float) -> np.ndarray:
    """Speed perturbation (resampling: pitch and tempo), or the waveform itself at speed 1."""
    if speed == 1.0:
        return wav
    from speakerforge.data.augment import speed_perturb

    return speed_perturb(wav, speed)


def random_crop(wav: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """A random window of `length` samples; shorter audio is repeated to length (as 3D-Speaker/WeSpeaker do)."""
    if len(wav) < length:
        reps = -(-length // len(wav))
        wav = np.tile(wav, reps)
    start = int(rng.integers(0, len(wav) - length + 1))
    return wav[start : start + length]


class CropDataset(torch.utils.data.Dataset):
    """Map-style dataset indexed by `(epoch, Draw)`; returns (waveform, class id, source id)."""

    def __init__(
        self,
        sources: list[Source],
        speakers: SpeakerIndex,
        crop_seconds: float,
        seed: int,
        augment: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
        speeds: list[float] | None = None,
        sample_rate: int = SAMPLE_RATE,
    ):
        self.sources = sources
        self.speakers = speakers
        self.crop = int(round(crop_seconds * sample_rate))
        self.seed = seed
        self.augment = augment
        self.speeds = list(speeds or speakers.speeds)  # this stage's speeds, a subset of the label space's
        self.sample_rate = sample_rate
        self.tables = shard_tables(sources)  # where sharded sources' members lie, for reading tars in order

    def __len__(self) -> int:
        return sum(len(s.utts) for s in self.sources)

    def __getitem__(self, index: tuple[int, Draw]) -> tuple[np.ndarray, int, int]:
        epoch, draw = index
        rng = example_rng(self.seed, epoch, draw.position)
        src = self.sources[draw.source]
        speed = pick_speed(self.speeds, rng)
        wav = apply_speed(read_example(src, draw, self.sample_rate, self.tables), speed)
        wav = random_crop(wav, self.crop, rng)
        if self.augment is not None:
            wav = self.augment(wav, rng)
        label = self.speakers.class_of(src.name, src.utts[draw.item].spk, self.speakers.speeds.index(speed))
        return np.ascontiguousarray(wav, dtype=np.float32), label, draw.source


def collate_crops(batch: list[tuple[np.ndarray, int, int]]) -> dict[str, Any]:
    """Stack equal-length crops; features are computed batched on the training device afterwards."""
    wavs = torch.from_numpy(np.stack([b[0] for b in batch]))
    labels = torch.tensor([b[1] for b in batch], dtype=torch.long)
    sources = torch.tensor([b[2] for b in batch], dtype=torch.long)
    return {"wav": wavs, "label": labels, "source": sources}
