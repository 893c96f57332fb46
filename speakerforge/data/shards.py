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
"""

from __future__ import annotations

import io
import json
import logging
import os
import struct
import tarfile
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf

from speakerforge.atomic import atomic_path, atomic_write_text
from speakerforge.data.audio import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, SAMPLE_RATE, audio_info, load_audio, resample
from speakerforge.data.manifest import Utterance, duplicate_problems, read_manifest
from speakerforge.errors import DataError, where
from speakerforge.progress import progress_bar

log = logging.getLogger(__name__)

LIST_NAME = "shards.list"
INDEX_NAME = "shards.index.jsonl"
SHARD_PATTERN = "shard-{:06d}.tar"
# Members of one utterance a reader keeps in memory while it reads ahead (the shuffle buffer's size).
SHUFFLE_BUFFER = 1000
# Audio member suffixes, WeSpeaker's set (`wespeaker/dataset/processor.py`, AUDIO_FORMAT_SETS) plus sph.
AUDIO_MEMBER_SUFFIXES = ("flac", "mp3", "m4a", "ogg", "opus", "wav", "wma", "sph")


@dataclass(frozen=True)
class ShardUtterance(Utterance):
    """An utterance stored as one member of a tar shard: `path` is the tar, the audio at `offset` (`size` bytes)."""

    member: str = ""
    offset: int = 0
    size: int = 0
    frames: int = 0  # 0: not known (a WeSpeaker shard without our index)
    sample_rate: int = 0

    @property
    def where(self) -> str:
        return f"{self.path}:{self.member}"


# ----------------------------------------------------------------------------------------------------------------
# recognising and reading a shard list
def shard_list_path(path: str | Path) -> Path | None:
    """The shard list `path` names (a list file, or a folder holding `shards.list`), or None for a manifest."""
    p = Path(path)
    if p.is_dir():
        return p / LIST_NAME if (p / LIST_NAME).is_file() and not (p / "wav.scp").exists() else None
    if p.suffix.lower() not in (".list", ".txt") or not p.is_file():
        return None
    with open(p, "rb") as f:
        head = f.read(4096).decode("utf-8", "replace")
    first = next((line.strip() for line in head.splitlines() if line.strip()), "")
    return p if first.lower().endswith(".tar") else None


def is_shard_list(path: str | Path) -> bool:
    """True when `path` is a shard list (ours or WeSpeaker's) rather than a manifest."""
    return shard_list_path(path) is not None


def read_shard_list(path: str | Path) -> list[ShardUtterance]:
    """Every utterance of a shard list, in list order and tar order; from the index when there is one."""
    list_path = shard_list_path(path)
    if list_path is None:
        raise DataError(f"{path}: not a shard list (a text file of .tar paths, or a folder with {LIST_NAME})")
    tars = _list_entries(list_path)
    index = _read_index(list_path.parent / INDEX_NAME)
    utts: list[ShardUtterance] = []
    scanned = 0
    for line, tar in tars:
        entry = index.get(os.path.normpath(tar))
        if entry is not None:
            utts.extend(_from_index(entry, tar, list_path, line))
        else:
            utts.extend(scan_tar(tar, str(list_path), line))
            scanned += 1
    if scanned:
        log.info("%s: scanned %d tar(s) without an index (headers and speaker members only)", list_path, scanned)
    if not utts:
        raise DataError(f"{list_path}: the shards hold no utterances")
    dups = duplicate_problems(utts)
    if dups:
        raise DataError(dups[0] + (f" (and {len(dups) - 1} more)" if len(dups) > 1 else "") + "; keys must be unique")
    return utts


def _list_entries(list_path: Path) -> list[tuple[int, str]]:
    out = []
    for number, raw in enumerate(list_path.read_text(encoding="utf-8-sig").splitlines(), 1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        if "://" in text:
            raise DataError(f"{where(list_path, number)}: {text}: only local (or mounted) tar files can be read")
        tar = os.path.abspath(os.path.join(list_path.parent, os.path.expanduser(text)))
        if not os.path.isfile(tar):
            raise DataError(f"{where(list_path, number)}: shard not found: {tar}")
        out.append((number, tar))
    return out


def _read_index(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    out = {}
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not text.strip():
            continue
        try:
            entry = json.loads(text)
            out[os.path.normpath(os.path.join(path.parent, entry["tar"]))] = entry
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DataError(f"{where(path, number)}: unreadable shard index line; write the shards again") from None
    return out


def _from_index(entry: dict, tar: str, list_path: Path, line: int) -> list[ShardUtterance]:
    size = os.path.getsize(tar)
    if size != entry.get("bytes"):
        raise DataError(
            f"{tar}: {size} bytes, but {list_path.parent / INDEX_NAME} says {entry.get('bytes')}: the shard changed "
            "since it was written; run `speakerforge prepare shards` again"
        )
    src = str(list_path)
    return [
        ShardUtterance(
            key,
            tar,
            spk,
            duration=frames / sr if sr else None,
            source=src,
            line=line,
            member=member,
            offset=offset,
            size=nbytes,
            frames=frames,
            sample_rate=sr,
        )
        for key, spk, member, offset, nbytes, frames, sr in zip(
            entry["keys"],
            entry["spk"],
            entry["members"],
            entry["offsets"],
            entry["sizes"],
            entry["frames"],
            entry["sr"],
        )
    ]


def scan_tar(tar: str, source: str = "", line: int = 0) -> list[ShardUtterance]:
    """The utterances of one tar read from its headers (WeSpeaker layout: `KEY.wav` + `KEY.spk`, grouped by key)."""
    audio: dict[str, tarfile.TarInfo] = {}
    speakers: dict[str, str] = {}
    order: list[str] = []
    try:
        with tarfile.open(tar, mode="r:") as tf:
            for info in tf:
                if not info.isfile() or "." not in info.name:
                    continue
                key, suffix = info.name.rsplit(".", 1)
                suffix = suffix.lower()
                if suffix in AUDIO_MEMBER_SUFFIXES:
                    if key in audio:
                        raise DataError(f"{tar}: two audio members for '{key}'")
                    audio[key] = info
                    order.append(key)
                elif suffix == "spk":
                    f = tf.extractfile(info)
                    speakers[key] = f.read().decode("utf-8").strip() if f is not None else ""
    except (tarfile.TarError, OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{tar}: unreadable tar shard ({exc}); shards must be uncompressed tar files") from None
    return [
        ShardUtterance(
            key,
            tar,
            speakers.get(key) or None,
            source=source,
            line=line,
            member=audio[key].name,
            offset=audio[key].offset_data,
            size=audio[key].size,
        )
        for key in order
    ]


def shard_sizes(utts: Sequence[Utterance]) -> list[int] | None:
    """Utterances per tar, in order (consecutive rows of one tar are one shard); None when not a sharded source."""
    if not utts or not isinstance(utts[0], ShardUtterance):
        return None
    sizes: list[int] = []
    last = None
    for u in utts:
        if u.path != last:
            sizes.append(0)
            last = u.path
        sizes[-1] += 1
    return sizes


# ----------------------------------------------------------------------------------------------------------------
# the order of a sharded source: pure functions of (seed, source, pass / epoch, reader)
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


# ----------------------------------------------------------------------------------------------------------------
# reading members
class TarReader:
    """Fetches members by (tar, offset, size), each tar front to back: asked for a member past what it has read of
    that tar, it reads every member on the way and keeps them (the shuffle buffer asks for them soon). A member it
    no longer holds (a resumed epoch, one evicted) is read with a seek. A few tars stay open at once, since a shuffle
    buffer spans the end of one shard and the start of the next.

    A reader whose run starts inside a tar reads that tar from its start: at most one partial shard per reader and
    epoch is read twice (once by the reader it belongs to).
    """

    def __init__(self, keep: int = 2 * SHUFFLE_BUFFER + 64, open_files: int = 4):
        self.keep = keep
        self.open_files = open_files
        self.files: OrderedDict[str, BinaryIO] = OrderedDict()
        self.frontier: dict[str, int] = {}  # tar -> end of the last member read in order
        self.held: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self.tables: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.members_read = 0
        self.seeks = 0  # reads that jumped backwards (a member read again)

    def add_table(self, tar: str, offsets: np.ndarray, sizes: np.ndarray) -> None:
        """The audio members of `tar` (sorted by offset), so that reading ahead knows where each one is."""
        self.tables[tar] = (offsets, sizes)

    def read(self, tar: str, offset: int, size: int) -> bytes:
        data = self.held.pop((tar, offset), None)
        if data is not None:
            return data
        f = self._file(tar)
        frontier = self.frontier.get(tar, 0)
        if offset < frontier:
            self.seeks += 1
            return self._read_at(f, tar, offset, size)
        offsets, sizes = self.tables.get(tar, (np.zeros(0, np.int64), np.zeros(0, np.int64)))
        lo, hi = np.searchsorted(offsets, [frontier, offset])
        for o, n in zip(offsets[lo:hi].tolist(), sizes[lo:hi].tolist()):  # members between here and the one asked for
            self.held[(tar, o)] = self._read_at(f, tar, o, n)
        while len(self.held) > self.keep:
            self.held.popitem(last=False)
        data = self._read_at(f, tar, offset, size)
        self.frontier[tar] = offset + size
        return data

    def _file(self, tar: str) -> BinaryIO:
        f = self.files.get(tar)
        if f is not None:
            self.files.move_to_end(tar)
            return f
        try:
            f = open(tar, "rb", buffering=1 << 20)
        except OSError as exc:
            raise DataError(f"{tar}: cannot open shard ({exc.strerror})") from None
        self.files[tar] = f
        while len(self.files) > self.open_files:
            self.files.popitem(last=False)[1].close()
        return f

    def _read_at(self, f: BinaryIO, tar: str, offset: int, size: int) -> bytes:
        if f.tell() != offset:
            f.seek(offset)
        data = f.read(size)
        if len(data) != size:
            raise DataError(f"{tar}: shard truncated at byte {offset + len(data)}")
        self.members_read += 1
        return data

    def close(self) -> None:
        for f in self.files.values():
            f.close()
        self.files.clear()


_READERS: dict[int, TarReader] = {}


def _reader() -> TarReader:
    """This process's reader (a DataLoader worker is a forked process: it must not share its parent's file offset)."""
    pid = os.getpid()
    reader = _READERS.get(pid)
    if reader is None:
        _READERS.clear()
        reader = _READERS[pid] = TarReader()
    return reader


Tables = dict[str, tuple[np.ndarray, np.ndarray]]


def shard_tables(sources: Sequence[object]) -> Tables:
    """Where the audio members of each tar of these sources (`Source`s or lists of utterances) lie (offsets, sizes;
    sorted), for reading ahead."""
    by_tar: dict[str, list[tuple[int, int]]] = {}
    for src in sources:
        utts: Sequence[Utterance] = getattr(src, "utts", src)  # type: ignore[arg-type]
        if not utts or not isinstance(utts[0], ShardUtterance):
            continue
        for u in utts:
            if isinstance(u, ShardUtterance):
                by_tar.setdefault(u.path, []).append((u.offset, u.size))
    out: Tables = {}
    for tar, members in by_tar.items():
        arr = np.asarray(sorted(members), dtype=np.int64)
        out[tar] = (arr[:, 0].copy(), arr[:, 1].copy())
    return out


def _pcm16_wav(data: bytes) -> tuple[np.ndarray, int] | None:
    """(float32 samples `[frames, channels]`, rate) of a 16-bit PCM WAV, as libsndfile gives them (x / 32768), read
    with numpy: soundfile's file-like reading costs more than the rest of a member's path. None for anything else."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    pos, fmt = 12, None
    while pos + 8 <= len(data):
        chunk, size = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], "little")
        body = pos + 8
        if chunk == b"fmt ":
            if size < 16:
                return None
            tag, channels, rate = struct.unpack_from("<HHI", data, body)
            bits = struct.unpack_from("<H", data, body + 14)[0]
            if tag == 0xFFFE and size >= 26:  # WAVE_FORMAT_EXTENSIBLE: the sub-format's first two bytes
                tag = struct.unpack_from("<H", data, body + 24)[0]
            if tag != 1 or bits != 16 or channels < 1:
                return None
            fmt = (channels, rate)
        elif chunk == b"data":
            if fmt is None:
                return None
            frames = (min(len(data), body + size) - body) // (2 * fmt[0])
            pcm = np.frombuffer(data, dtype="<i2", count=frames * fmt[0], offset=body).reshape(frames, fmt[0])
            return pcm.astype(np.float32) * np.float32(1.0 / 32768), fmt[1]
        pos = body + size + (size & 1)
    return None


def decode_audio_bytes(data: bytes, name: str, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode one audio member to mono float32 at `sample_rate` (the same result `load_audio` gives for the file)."""
    try:
        fast = _pcm16_wav(data)
        if fast is not None:
            wav, sr = fast
        else:
            with sf.SoundFile(io.BytesIO(data)) as f:
                sr = int(f.samplerate)
                wav = f.read(dtype="float32", always_2d=True)
    except Exception as exc:
        raise DataError(f"{name}: cannot decode audio ({str(exc).strip().splitlines()[-1]})") from None
    if not MIN_SAMPLE_RATE <= sr <= MAX_SAMPLE_RATE:
        raise DataError(f"{name}: the header states a sample rate of {sr} Hz (corrupt member?)")
    if wav.shape[0] == 0:
        raise DataError(f"{name}: audio member holds no samples")
    mono = wav.mean(axis=1) if wav.shape[1] > 1 else wav[:, 0]
    if not np.isfinite(mono).all():
        raise DataError(f"{name}: audio holds NaN or infinite samples")
    return resample(np.ascontiguousarray(mono, dtype=np.float32), sr, sample_rate)


def read_member_bytes(utt: ShardUtterance) -> bytes:
    """The stored bytes of one shard member."""
    return _reader().read(utt.path, utt.offset, utt.size)


def load_utterance(utt: Utterance, sample_rate: int = SAMPLE_RATE, tables: Tables | None = None) -> np.ndarray:
    """The audio of one manifest row or shard member, mono float32 at `sample_rate` (`tables`: `shard_tables` of
    the sources, so that a reader reads each tar front to back)."""
    if isinstance(utt, ShardUtterance):
        reader = _reader()
        if utt.path not in reader.tables:
            table = (tables or {}).get(utt.path)
            reader.add_table(utt.path, *(table or (np.asarray([utt.offset]), np.asarray([utt.size]))))
        return decode_audio_bytes(reader.read(utt.path, utt.offset, utt.size), utt.where, sample_rate)
    return load_audio(utt.path, utt.start, utt.end, sample_rate)


# ----------------------------------------------------------------------------------------------------------------
# writing
@dataclass
class ShardSummary:
    """What `write_shards` wrote."""

    folder: Path
    shards: int
    utterances: int
    speakers: int
    bytes: int

    def line(self) -> str:
        return (
            f"shards: {self.utterances} utterances, {self.speakers} speakers in {self.shards} tar(s), "
            f"{self.bytes / 2**20:.1f} MiB -> {self.folder / LIST_NAME}"
        )


def write_shards(
    manifests: Sequence[str | Path],
    out: str | Path,
    utts_per_shard: int = 1000,
    flac: bool = False,
    seed: int = 0,
    shuffle: bool = True,
) -> ShardSummary:
    """Pack the utterances of `manifests` into tar shards with a shard list and an index (see the module doc).

    Utterances are shuffled (seeded) before packing, as WeSpeaker does, so that each shard holds many speakers and
    a streaming reader's batches are mixed. Whole files are stored byte for byte (`flac`: re-encoded to FLAC);
    segments are cut and stored as WAV (or FLAC) with the source's sample format.
    """
    if utts_per_shard < 1:
        raise DataError(f"--utts-per-shard must be >= 1, got {utts_per_shard}")
    utts: list[Utterance] = []
    for m in manifests:
        utts.extend(read_manifest(m))
    dups = duplicate_problems(utts)
    if dups:
        raise DataError(dups[0] + "; keys must be unique across the manifests packed together")
    if not utts:
        raise DataError("no utterances to pack")
    order = np.random.default_rng([int(seed), 6]).permutation(len(utts)) if shuffle else np.arange(len(utts))
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    index_lines, names, total = [], [], 0
    chunks = [order[i : i + utts_per_shard] for i in range(0, len(order), utts_per_shard)]
    bar = progress_bar(total=len(utts), desc="shards", unit="utt", disable=None, leave=False, mininterval=1)
    for n, chunk in enumerate(chunks):
        name = SHARD_PATTERN.format(n)
        entry = _write_tar(folder / name, [utts[i] for i in chunk], flac)
        index_lines.append(json.dumps(entry, ensure_ascii=False))
        names.append(name)
        total += entry["bytes"]
        bar.update(len(chunk))
    bar.close()
    stale = {p.name for p in folder.glob("shard-*.tar")} - set(names)
    for name in sorted(stale):  # from an earlier, larger packing into the same folder
        (folder / name).unlink()
    atomic_write_text(folder / INDEX_NAME, "".join(line + "\n" for line in index_lines))
    atomic_write_text(folder / LIST_NAME, "".join(name + "\n" for name in names))
    speakers = len({u.spk for u in utts if u.spk is not None})
    return ShardSummary(folder, len(names), len(utts), speakers, total)


def _member_audio(u: Utterance, flac: bool) -> tuple[bytes, str, int, int]:
    """(bytes, suffix, frames, sample rate) of one utterance's audio member."""
    info = audio_info(u.path)
    suffix = Path(u.path).suffix.lower().lstrip(".")
    if not u.is_segment and not flac and suffix in AUDIO_MEMBER_SUFFIXES:
        return Path(u.path).read_bytes(), suffix, info.frames, info.sample_rate
    with sf.SoundFile(u.path) as f:
        sr, subtype = int(f.samplerate), f.subtype
        first = int(round(u.start * sr)) if u.start else 0
        if first >= info.frames:
            raise DataError(f"{u.where}: the segment starts at {u.start:g} s, past the end of {u.path}")
        f.seek(first)
        count = -1 if u.end is None else max(0, int(round(u.end * sr)) - first)
        is_float = subtype.startswith(("FLOAT", "DOUBLE"))
        data = f.read(count, dtype="float64" if is_float else "int32", always_2d=True)
    if data.shape[0] == 0:
        raise DataError(f"{u.where}: the segment holds no samples")
    buf = io.BytesIO()
    if flac:
        out_subtype = "PCM_16" if subtype in ("PCM_16", "PCM_S8", "PCM_U8", "ULAW", "ALAW") else "PCM_24"
        sf.write(buf, data, sr, format="FLAC", subtype=out_subtype)
        suffix = "flac"
    else:
        wav_subtypes = ("PCM_16", "PCM_24", "PCM_32", "PCM_U8", "FLOAT", "DOUBLE", "ULAW", "ALAW")
        sf.write(buf, data, sr, format="WAV", subtype=subtype if subtype in wav_subtypes else "PCM_16")
        suffix = "wav"
    return buf.getvalue(), suffix, int(data.shape[0]), sr


def _write_tar(path: Path, utts: list[Utterance], flac: bool) -> dict:
    entry: dict[str, list] = {k: [] for k in ("keys", "spk", "members", "offsets", "sizes", "frames", "sr")}
    with atomic_path(path) as tmp, tarfile.open(tmp, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for u in utts:
            data, suffix, frames, sr = _member_audio(u, flac)
            meta = {
                "key": u.key,
                "spk": u.spk,
                "source": u.source,
                "path": u.path,
                "start": u.start,
                "end": u.end,
                "sample_rate": sr,
                "frames": frames,
            }
            if u.spk is not None:
                _add(tf, f"{u.key}.spk", u.spk.encode("utf-8"))
            _add(tf, f"{u.key}.json", json.dumps(meta, ensure_ascii=False).encode("utf-8"))
            member = f"{u.key}.{suffix}"
            offset = _add(tf, member, data)
            for k, v in zip(entry, (u.key, u.spk, member, offset, len(data), frames, sr)):
                entry[k].append(v)
    return {"tar": path.name, "bytes": path.stat().st_size, **entry}


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> int:
    """Append one member; returns the byte offset of its data."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    header = len(info.tobuf(tf.format, tf.encoding, tf.errors))
    start = tf.offset
    tf.addfile(info, io.BytesIO(data))
    return start + header
