"""Multi-crop views of one unlabelled utterance for self-supervised training (DINO/RDINO, SDPN).

An example is `n_global` crops of `global_seconds` and `n_local` crops of `local_seconds` from one utterance, each
crop at its own random position and augmented independently (noise / reverberation through the waveform augmenter).
Speed perturbation, when configured, is drawn once per utterance and applied to every crop: a speed change shifts
the pitch, so views at different speeds would teach the model to ignore part of the voice (supervised recipes count
each speed as a new speaker for the same reason). SpecAugment is applied later, on features (`PretrainTrainer`).

Every random choice comes from `example_rng(seed, epoch, position)`, so an example is identical whichever worker builds
it and whether or not the run was resumed. Crops of one kind have equal length, so a batch stacks to
`global [B, n_global, samples]` and `local [B, n_local, samples]`. Speaker labels are never read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from speakerforge.data.audio import SAMPLE_RATE
from speakerforge.data.datasets import apply_speed, example_rng, pick_speed, random_crop, read_example
from speakerforge.data.sampling import Draw, Source
from speakerforge.data.shards.reader import shard_tables

Augment = Callable[[np.ndarray, np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class CropSpec:
    """How many crops of which length."""

    count: int
    seconds: float

    def samples(self, sample_rate: int = SAMPLE_RATE) -> int:
        return int(round(self.seconds * sample_rate))


def draw_crops(wav: np.ndarray, spec: CropSpec, rng: np.random.Generator, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """`[count, samples]` crops at independent random positions (short audio is repeated to length)."""
    length = spec.samples(sample_rate)
    out = np.empty((spec.count, length), dtype=np.float32)
    for i in range(spec.count):
        out[i] = random_crop(wav, length, rng)
    return out


def augment_crops(crops: np.ndarray, augment: Augment | None, rng: np.random.Generator) -> np.ndarray:
    """Each crop augmented on its own draw (or returned unchanged without an augmenter)."""
    if augment is None:
        return crops
    return np.stack([np.asarray(augment(c, rng), dtype=np.float32) for c in crops]) if len(crops) else crops


class MultiCropDataset(torch.utils.data.Dataset):
    """Map-style dataset indexed by `(epoch, Draw)`; returns `(global crops, local crops, source id)`."""

    def __init__(
        self,
        sources: list[Source],
        global_crops: CropSpec,
        local_crops: CropSpec,
        seed: int,
        augment: Augment | None = None,
        speeds: list[float] | None = None,
        sample_rate: int = SAMPLE_RATE,
    ):
        if global_crops.count < 1:
            raise ValueError("at least one global crop is needed")
        self.sources = sources
        self.global_crops = global_crops
        self.local_crops = local_crops
        self.seed = seed
        self.augment = augment
        self.speeds = list(speeds or [1.0])
        self.sample_rate = sample_rate
        self.tables = shard_tables(sources)  # where sharded sources' members lie, for reading tars in order

    def __len__(self) -> int:
        return sum(len(s.utts) for s in self.sources)

    def __getitem__(self, index: tuple[int, Draw]) -> tuple[np.ndarray, np.ndarray, int]:
        epoch, draw = index
        rng = example_rng(self.seed, epoch, draw.position)
        wav = read_example(self.sources[draw.source], draw, self.sample_rate, self.tables)
        wav = apply_speed(wav, pick_speed(self.speeds, rng))
        glob = draw_crops(wav, self.global_crops, rng, self.sample_rate)
        loc = draw_crops(wav, self.local_crops, rng, self.sample_rate)
        glob = augment_crops(glob, self.augment, rng)
        loc = augment_crops(loc, self.augment, rng)
        return glob, loc, draw.source


def collate_views(batch: list[tuple[np.ndarray, np.ndarray, int]]) -> dict[str, Any]:
    """Stack examples: `global [B, n_global, samples]`, `local [B, n_local, samples]`, `source [B]`."""
    return {
        "global": torch.from_numpy(np.stack([b[0] for b in batch])),
        "local": torch.from_numpy(np.stack([b[1] for b in batch])),
        "source": torch.tensor([b[2] for b in batch], dtype=torch.long),
    }
