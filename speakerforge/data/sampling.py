"""Several training sources mixed at sample level by weight, with speaker namespaces and an exact, resumable order.

The order of an epoch is a pure function of (seed, epoch), so resuming needs only (epoch, position): no sampler
state can be lost, and every rank of a distributed run computes the same plan and takes its own slice. A sharded
source (`data.shards`) is read as a stream: its items in the plan also depend on the reader layout (ranks x
DataLoader workers), so that each reader reads its own contiguous run of shards.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from speakerforge.data.manifest import Utterance, read_manifest
from speakerforge.data.shards.index import is_shard_list, read_shard_list
from speakerforge.data.shards.order import ReaderLayout, assign_stream, shard_stream
from speakerforge.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class Source:
    """One manifest with its weight and speaker namespace."""

    name: str
    path: str
    weight: float
    utts: list[Utterance] = field(default_factory=list)


@dataclass(frozen=True)
class Draw:
    """One sample of an epoch plan: which source and item, and its position (seeds its augmentation RNG)."""

    source: int
    item: int
    position: int


# File names that say nothing about the data (what `prepare` writes): such a source is named after its folder.
GENERIC_MANIFEST_STEMS = ("manifest", "train", "data", "wav", "all", "shards", "shard")


def default_source_name(path: str | Path) -> str:
    """`data/libri/manifest.jsonl` -> `libri`; `data/cv-fa.csv` -> `cv-fa`; a Kaldi folder -> its name."""
    p = Path(str(path).rstrip("/"))
    if p.stem.lower() in GENERIC_MANIFEST_STEMS and p.parent.name:
        return p.parent.name
    return p.stem or "data"


def load_sources(specs: list[tuple[str, float, str]], need_speakers: bool = True) -> list[Source]:
    """Read each `(path, weight, name)`; empty or missing sources are errors naming the source."""
    sources: list[Source] = []
    names: set[str] = set()
    for path, weight, name in specs:
        if not Path(path).exists():
            raise DataError(
                f"{path}: data source not found (check data.sources / --data; relative paths resolve against the "
                f"working directory: {Path(path).resolve()})"
            )
        if weight <= 0:
            raise DataError(f"{path}: data source weight must be > 0, got {weight}")
        utts: list[Utterance] = list(read_shard_list(path)) if is_shard_list(path) else read_manifest(path)
        if not utts:
            raise DataError(f"{path}: data source holds no utterances")
        if need_speakers:
            missing = [u for u in utts if not u.spk]
            if missing:
                u = missing[0]
                raise DataError(
                    f"{u.source}:{u.line}: utterance {u.key!r} has no speaker label "
                    f"({len(missing)} such rows); supervised training needs one for every row"
                )
        base = name or default_source_name(path)
        unique, k = base, 2
        while unique in names:
            unique, k = f"{base}{k}", k + 1
        names.add(unique)
        sources.append(Source(unique, str(path), float(weight), utts))
    return sources


def speed_label(spk_index: int, speed_index: int, num_speakers: int) -> int:
    """Class index of a speaker at a perturbed speed: each speed is a new set of `num_speakers` classes.

    Speed index 0 is the original speed and keeps the label (3D-Speaker `SpkLabelEncoder`, WeSpeaker).
    """
    if not 0 <= spk_index < num_speakers:
        raise ValueError(f"speaker index {spk_index} outside [0, {num_speakers})")
    if speed_index < 0:
        raise ValueError(f"speed index must be >= 0, got {speed_index}")
    return spk_index + speed_index * num_speakers


class SpeakerIndex:
    """Maps (source, speaker, speed) to a class id. Each speed other than 1.0 makes new classes, as in 3D-Speaker."""

    def __init__(self, sources: list[Source], shared_speakers: bool = False, speeds: list[float] | None = None):
        self.shared = shared_speakers
        self.speeds = list(speeds or [1.0])
        labels = sorted({self._label(s.name, u.spk) for s in sources for u in s.utts})
        self.base = {lab: i for i, lab in enumerate(labels)}
        self.names = labels

    def _label(self, source: str, spk: str | None) -> str:
        return str(spk) if self.shared else f"{source}/{spk}"

    @property
    def num_base(self) -> int:
        return len(self.base)

    @property
    def num_classes(self) -> int:
        return len(self.base) * len(self.speeds)

    def class_of(self, source: str, spk: str | None, speed_index: int = 0) -> int:
        return speed_label(self.base[self._label(source, spk)], speed_index, len(self.base))


class MixedSampler:
    """Epoch plans mixing sources by weight x size; each source walks its own endless sequence of permutations."""

    def __init__(
        self,
        sizes: list[int],
        weights: list[float],
        seed: int,
        samples_per_epoch: int = 0,
        shards: dict[int, list[int]] | None = None,
        layout: ReaderLayout | None = None,
    ):
        """`shards`: source index -> utterances per shard, for sources read as a stream; `layout`: who reads what."""
        if not sizes or min(sizes) <= 0:
            raise DataError("every data source must hold at least one utterance")
        self.sizes = list(sizes)
        self.seed = int(seed)
        mass = np.asarray(weights, dtype=np.float64) * np.asarray(sizes, dtype=np.float64)
        total = int(samples_per_epoch) or int(sum(sizes))
        raw = total * mass / mass.sum()
        counts = np.floor(raw).astype(np.int64)
        for i in np.argsort(-(raw - counts))[: total - int(counts.sum())]:  # largest remainders
            counts[i] += 1
        self.counts = [int(c) for c in counts]
        self.shards = dict(shards or {})
        self.layout = layout

    @property
    def epoch_size(self) -> int:
        return int(sum(self.counts))

    def _stream(self, source: int, start: int, count: int) -> np.ndarray:
        """Items `start .. start+count` of source's stream: concatenated seeded permutations."""
        n = self.sizes[source]
        out = np.empty(count, dtype=np.int64)
        pos = 0
        while pos < count:
            cycle, offset = divmod(start + pos, n)
            perm = np.random.default_rng([self.seed, 1, source, cycle]).permutation(n)
            take = min(n - offset, count - pos)
            out[pos : pos + take] = perm[offset : offset + take]
            pos += take
        return out

    def epoch_plan(self, epoch: int) -> list[Draw]:
        """The full ordered list of draws of `epoch`."""
        src = np.concatenate([np.full(c, s, dtype=np.int64) for s, c in enumerate(self.counts)])
        items = np.concatenate(
            [
                np.zeros(c, np.int64) if s in self.shards else self._stream(s, epoch * c, c)
                for s, c in enumerate(self.counts)
            ]
        )
        order = np.random.default_rng([self.seed, 2, epoch]).permutation(len(src))
        src, items = src[order], items[order]
        for s in self.shards:
            self._stream_items(epoch, s, src, items)
        return [Draw(int(a), int(b), i) for i, (a, b) in enumerate(zip(src.tolist(), items.tolist()))]

    def _stream_items(self, epoch: int, source: int, src: np.ndarray, items: np.ndarray) -> None:
        """Give a sharded source's draws their items: each reader a contiguous run of the source's stream, shuffled
        through its buffer, in the order the reader builds its micro-batches (positions past the last full batch
        are read by nobody)."""
        layout = self.layout or ReaderLayout(batch_size=len(src))
        used = len(src) // layout.batch_size * layout.batch_size
        positions = np.flatnonzero(src[:used] == source)
        readers = layout.reader_of(positions)
        by_reader = np.argsort(readers, kind="stable")
        count = self.counts[source]
        stream = shard_stream(self.shards[source], self.seed, source, epoch * count, count)
        items[positions[by_reader]] = assign_stream(
            readers[by_reader], layout.readers, stream, self.seed, epoch, source
        )

    def batches(
        self, epoch: int, batch_size: int, start_batch: int = 0, rank: int = 0, world_size: int = 1
    ) -> list[list[Draw]]:
        """Full global batches of the epoch from `start_batch` on; rank r keeps its contiguous slice of each."""
        plan = self.epoch_plan(epoch)
        n = len(plan) // batch_size
        per_rank = batch_size // world_size
        out = []
        for b in range(start_batch, n):
            chunk = plan[b * batch_size : (b + 1) * batch_size]
            out.append(chunk[rank * per_rank : (rank + 1) * per_rank])
        return out

    def batches_per_epoch(self, batch_size: int) -> int:
        return self.epoch_size // batch_size
