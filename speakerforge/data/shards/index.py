"""What a shard set holds, learnt without reading audio: the shard list, its index, or (for a WeSpeaker list
without one) each tar's headers. The layout itself is described in `speakerforge.data.shards`."""

from __future__ import annotations

import json
import logging
import os
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from speakerforge.data.manifest import Utterance, duplicate_problems
from speakerforge.errors import DataError, where

log = logging.getLogger(__name__)

LIST_NAME = "shards.list"
INDEX_NAME = "shards.index.jsonl"
SHARD_PATTERN = "shard-{:06d}.tar"
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
