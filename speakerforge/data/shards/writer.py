"""Writing a shard set (`speakerforge prepare shards`): tars, the shard list and the index."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from speakerforge.atomic import atomic_path, atomic_write_text
from speakerforge.data.audio import audio_info
from speakerforge.data.manifest import Utterance, duplicate_problems, read_manifest
from speakerforge.data.shards.index import AUDIO_MEMBER_SUFFIXES, INDEX_NAME, LIST_NAME, SHARD_PATTERN
from speakerforge.errors import DataError
from speakerforge.progress import progress_bar


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
