"""Tar shards: many utterances per file, read as a stream, so that a million-utterance corpus is a few thousand
sequential reads instead of a million small random ones.

A shard set (`write_shards`, `speakerforge prepare shards`) is a folder with

- `shard-000000.tar` ...: per utterance `KEY.spk` (speaker), `KEY.json` (key, speaker, source manifest, original
  path, segment, sample rate, frames) and the audio `KEY.wav|.flac|...` (as stored, a cut segment, or FLAC);
  WeSpeaker's shard reader reads these tars as they are;
- `shards.list`: one tar per line (relative to the list's folder), WeSpeaker's `shard.list` format;
- `shards.index.jsonl`: one line per tar with its size and its members' keys, speakers, byte offsets and lengths,
  so that a run learns everything it needs at start without opening a tar.

A WeSpeaker `shard.list` (tar paths, members `KEY.wav` + `KEY.spk`) is read too: without an index its tars are
scanned once at start (headers and speaker members only).

The order in which a sharded source is read is a pure function of (seed, epoch) and the reader layout (ranks x
DataLoader workers): each pass over the source visits its shards in a seeded order; an epoch's share of that
stream is split into contiguous runs, one per reader, sized by what each reader's micro-batches draw from the
source; each run goes through a seeded shuffle buffer (`buffer_shuffle`). `data.sampling.MixedSampler` builds the
plan; a reader fetches members by (tar, offset) and reads each tar front to back (`read_member`), so a resumed run
needs nothing beyond (epoch, step).

The package's modules: `index` (the list, the index, `ShardUtterance`), `order` (the streaming order), `reader`
(`TarReader`, decoding members) and `writer` (`write_shards`). The names below are the ones imported from
`speakerforge.data.shards` outside the package.
"""

from speakerforge.data.shards.index import ShardUtterance, is_shard_list, read_shard_list, shard_sizes
from speakerforge.data.shards.order import ReaderLayout, shard_pass
from speakerforge.data.shards.reader import TarReader, load_utterance, shard_tables
from speakerforge.data.shards.writer import write_shards

__all__ = [
    "ReaderLayout",
    "ShardUtterance",
    "TarReader",
    "is_shard_list",
    "load_utterance",
    "read_shard_list",
    "shard_pass",
    "shard_sizes",
    "shard_tables",
    "write_shards",
]
