"""Reading shard members: each tar front to back through a per-process `TarReader`, and decoding a member's bytes
to the same samples `load_audio` gives for the file."""

from __future__ import annotations

import io
import os
import struct
from collections import OrderedDict
from collections.abc import Sequence
from typing import BinaryIO

import numpy as np
import soundfile as sf

from speakerforge.data.audio import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, SAMPLE_RATE, load_audio, resample
from speakerforge.data.manifest import Utterance
from speakerforge.data.shards.index import ShardUtterance
from speakerforge.data.shards.order import SHUFFLE_BUFFER
from speakerforge.errors import DataError


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
