"""Samples/s of the shard reader against the per-file reader on this machine: the same utterances, the same run.

A generated corpus (`--utts` files of `--seconds` s) is packed into shards (`--utts-per-shard`); each reader then
builds the same number of examples, in the order training would ask for them:

- `read`: fetch and decode each utterance in a one-epoch plan (per file: one open per utterance; shards: each tar
  read front to back through the shuffle buffer);
- `loader`: the training dataset (crop, labels) through a DataLoader with `--workers` workers and batches of 32.

Each is measured with the files in the page cache (`warm`) and after asking the kernel to drop them
(`posix_fadvise(DONTNEED)`: `cold`, the closest this machine gets to network storage).

    .venv/bin/python bench/data.py [--utts 2000] [--seconds 2] [--utts-per-shard 250] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def drop_cache(paths: list[str]) -> None:
    """Ask the kernel to forget these files' cached pages (no root needed; clean pages only)."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def bench_read(source, plan) -> float:
    from speakerforge.data.shards import load_utterance, shard_tables

    tables = shard_tables([source])
    t = time.perf_counter()
    for d in plan:
        load_utterance(source.utts[d.item], tables=tables)
    return len(plan) / (time.perf_counter() - t)


def bench_loader(source, sampler, workers: int, batch: int = 32) -> float:
    import torch

    from speakerforge.data.datasets import CropDataset, collate_crops
    from speakerforge.data.sampling import SpeakerIndex

    dataset = CropDataset([source], SpeakerIndex([source]), crop_seconds=1.0, seed=0)
    micro = [[(0, d) for d in b] for b in sampler.batches(0, batch)]
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=micro, num_workers=workers, collate_fn=collate_crops)
    t = time.perf_counter()
    n = sum(len(b["label"]) for b in loader)
    return n / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--utts", type=int, default=2000)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--utts-per-shard", type=int, default=250)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()

    from speakerforge.data.corpora.synthetic import make_synthetic_corpus
    from speakerforge.data.sampling import MixedSampler, load_sources
    from speakerforge.data.shards import ReaderLayout, shard_sizes, write_shards

    root = a.out or Path(tempfile.mkdtemp(prefix="sf-bench-data-"))
    manifest = root / "corpus" / "train.jsonl"
    if not manifest.is_file():
        speakers = max(2, a.utts // 25)
        make_synthetic_corpus(
            root / "corpus", speakers, a.utts // speakers, seconds=a.seconds, manifest_name="train.jsonl"
        )
    if not (root / "shards" / "shards.list").is_file():
        write_shards([manifest], root / "shards", utts_per_shard=a.utts_per_shard)
    files, shards = load_sources([(str(manifest), 1.0, "files"), (str(root / "shards"), 1.0, "shards")])
    n = len(files.utts)
    print(f"{n} utterances of {a.seconds:g} s: {len(shard_sizes(shards.utts) or [])} shards; workers={a.workers}")
    file_sampler = MixedSampler([n], [1.0], seed=0)
    layout = ReaderLayout(batch_size=32, workers=a.workers)
    shard_sampler = MixedSampler([n], [1.0], seed=0, shards={0: shard_sizes(shards.utts) or []}, layout=layout)
    one_reader = MixedSampler([n], [1.0], seed=0, shards={0: shard_sizes(shards.utts) or []})
    all_files = sorted({u.path for u in files.utts}) + sorted({u.path for u in shards.utts})
    rows = []
    for cache in ("warm", "cold"):
        for what in ("read", "loader"):
            rates = {}
            for name, src, sampler in (("files", files, file_sampler), ("shards", shards, shard_sampler)):
                if cache == "cold":
                    drop_cache(all_files)
                else:  # warm: read once first
                    bench_read(src, (one_reader if name == "shards" else file_sampler).epoch_plan(0))
                if what == "read":
                    plan = (one_reader if name == "shards" else file_sampler).epoch_plan(0)
                    rates[name] = bench_read(src, plan)
                else:
                    rates[name] = bench_loader(src, sampler, a.workers)
            rows.append((cache, what, rates["files"], rates["shards"]))
    print(f"{'cache':6s} {'path':7s} {'per-file/s':>11s} {'shards/s':>9s} {'ratio':>6s}")
    for cache, what, f, s in rows:
        print(f"{cache:6s} {what:7s} {f:11.0f} {s:9.0f} {s / f:6.2f}")


if __name__ == "__main__":
    main()
