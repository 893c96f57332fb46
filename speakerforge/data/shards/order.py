"""The order in which a sharded source is read: pure functions of (seed, source, pass / epoch, reader), so that a
resumed run rebuilds any epoch's plan from (epoch, step) alone."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Members of one utterance a reader keeps in memory while it reads ahead (the shuffle buffer's size).
SHUFFLE_BUFFER = 1000


def shard_pass(sizes: Sequence[int], seed: int, source: int, pass_index: int) -> np.ndarray:
    """Item indices of one pass over a source: its shards in a seeded order, each shard's members in tar order."""
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    order = np.random.default_rng([int(seed), 4, int(source), int(pass_index)]).permutation(len(sizes))
    return np.concatenate([np.arange(starts[k], starts[k] + sizes[k], dtype=np.int64) for k in order])


def shard_stream(sizes: Sequence[int], seed: int, source: int, start: int, count: int) -> np.ndarray:
    """Items `start .. start+count` of the source's endless stream of passes."""
    total = int(sum(sizes))
    out = np.empty(count, dtype=np.int64)
    pos = 0
    while pos < count:
        p, offset = divmod(start + pos, total)
        items = shard_pass(sizes, seed, source, p)
        take = min(total - offset, count - pos)
        out[pos : pos + take] = items[offset : offset + take]
        pos += take
    return out


def buffer_shuffle(items: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A streaming shuffle: hold `size` items, emit a random one as each new item arrives, then the rest shuffled.

    An item is emitted at most `size` items after it was read, so a reader never holds more than `size` members.
    """
    n = len(items)
    if n <= 1 or size <= 1:
        return items.copy()
    out = np.empty(n, dtype=items.dtype)
    buf = list(items[: min(size, n)])
    picks = rng.integers(0, len(buf), size=max(0, n - len(buf)))
    k = 0
    for x, j in zip(items[len(buf) :], picks):
        out[k] = buf[j]
        buf[j] = x
        k += 1
    out[k:] = np.asarray(buf, dtype=items.dtype)[rng.permutation(len(buf))]
    return out


@dataclass(frozen=True)
class ReaderLayout:
    """Which reader (rank x DataLoader worker) builds each position of an epoch plan.

    Global batch `b` is split into ranks' slices, each slice into micro-batches; a rank's micro-batch `j` of the
    epoch goes to DataLoader worker `j % workers` (the DataLoader hands batches out round robin).
    """

    batch_size: int  # the global batch of one optimizer step
    world_size: int = 1
    micro_batch: int = 0  # per rank and forward pass; 0: the whole rank slice
    workers: int = 0  # DataLoader workers per rank (0: the rank's own process reads)

    @property
    def readers(self) -> int:
        return self.world_size * max(1, self.workers)

    def reader_of(self, positions: np.ndarray) -> np.ndarray:
        per_rank = self.batch_size // self.world_size
        micro = self.micro_batch or per_rank
        per_step = max(1, per_rank // micro)
        b, within = np.divmod(positions, self.batch_size)
        rank, in_rank = np.divmod(within, per_rank)
        rank = np.minimum(rank, self.world_size - 1)
        j = b * per_step + np.minimum(in_rank // micro, per_step - 1)
        return rank * max(1, self.workers) + j % max(1, self.workers)


def assign_stream(
    readers: np.ndarray,
    n_readers: int,
    stream: np.ndarray,
    seed: int,
    epoch: int,
    source: int,
    buffer: int = SHUFFLE_BUFFER,
) -> np.ndarray:
    """Items for draws listed reader by reader (`readers` sorted, in emission order within a reader): each reader
    takes the next contiguous run of `stream`, as long as its demand, through its own shuffle buffer."""
    out = np.empty(len(readers), dtype=np.int64)
    counts = np.bincount(readers, minlength=n_readers)
    at = 0
    for r, c in enumerate(counts):
        if not c:
            continue
        rng = np.random.default_rng([int(seed), 5, int(epoch), int(source), r])
        out[at : at + c] = buffer_shuffle(stream[at : at + c], buffer, rng)
        at += c
    return out
