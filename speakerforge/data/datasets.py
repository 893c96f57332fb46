"""Training examples: fixed-length random crops with speed perturbation and waveform augmentation.

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
        utt = src.utts[draw.item]
        speed = self.speeds[int(rng.integers(len(self.speeds)))] if len(self.speeds) > 1 else self.speeds[0]
        speed_index = self.speakers.speeds.index(speed)
        try:
            wav = load_utterance(utt, self.sample_rate, self.tables)
        except DataError as exc:  # decoded only now (NaN samples, a file changed since the header check)
            raise DataError(f"{utt.where}: {exc}") from None
        if speed != 1.0:
            from speakerforge.data.augment import speed_perturb

            wav = speed_perturb(wav, speed)
        wav = random_crop(wav, self.crop, rng)
        if self.augment is not None:
            wav = self.augment(wav, rng)
        label = self.speakers.class_of(src.name, utt.spk, speed_index)
        return np.ascontiguousarray(wav, dtype=np.float32), label, draw.source


def collate_crops(batch: list[tuple[np.ndarray, int, int]]) -> dict[str, Any]:
    """Stack equal-length crops; features are computed batched on the training device afterwards."""
    wavs = torch.from_numpy(np.stack([b[0] for b in batch]))
    labels = torch.tensor([b[1] for b in batch], dtype=torch.long)
    sources = torch.tensor([b[2] for b in batch], dtype=torch.long)
    return {"wav": wavs, "label": labels, "source": sources}
