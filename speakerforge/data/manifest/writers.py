"""Writing manifests (CSV, JSON Lines, Kaldi data dir), atomically, with audio paths relative to the manifest's
folder where they lie inside it."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

from speakerforge.atomic import atomic_write_text
from speakerforge.data.manifest.rows import CSV_HEADER, JSONL_SUFFIXES, Utterance
from speakerforge.errors import DataError


def write_manifest(utts: Sequence[Utterance], path: str | Path) -> Path:
    """Write `.csv`, `.jsonl`/`.json`, or (any other path) a Kaldi data dir; atomically, file by file.

    Audio paths inside the manifest's folder are written relative to it, so the folder can be moved as a whole.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".csv":
        atomic_write_text(p, _csv_text(utts, p.parent))
    elif suffix in JSONL_SUFFIXES:
        atomic_write_text(p, _jsonl_text(utts, p.parent))
    elif suffix and not p.is_dir():
        raise DataError(
            f"{path}: cannot tell the manifest format from '{suffix}'; "
            "use .csv, .jsonl, or a folder name for a Kaldi data dir"
        )
    else:
        _write_kaldi(utts, p)
    return p


def _rel(audio: str, folder: Path) -> str:
    folder_abs = os.path.abspath(folder)
    audio_abs = os.path.abspath(audio)
    if os.path.commonpath([folder_abs, audio_abs]) == folder_abs:
        return os.path.relpath(audio_abs, folder_abs)
    return audio_abs


def _num(x: float | None) -> str:
    return "" if x is None else repr(round(float(x), 6))


def _csv_text(utts: Sequence[Utterance], folder: Path) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_HEADER)
    for u in utts:
        w.writerow([u.key, _num(u.duration), _rel(u.path, folder), _num(u.start), _num(u.end), u.spk or ""])
    return buf.getvalue()


def _jsonl_text(utts: Sequence[Utterance], folder: Path) -> str:
    lines = []
    for u in utts:
        obj: dict[str, object] = {"key": u.key, "wav": _rel(u.path, folder), "spk": u.spk}
        for name, value in (("start", u.start), ("end", u.end), ("dur", u.duration)):
            if value is not None:
                obj[name] = round(float(value), 6)
        lines.append(json.dumps(obj, ensure_ascii=False))
    return "".join(line + "\n" for line in lines)


def _write_kaldi(utts: Sequence[Utterance], folder: Path) -> None:
    for u in utts:
        for name, value in (("key", u.key), ("speaker", u.spk or "")):
            if any(c.isspace() for c in value):
                raise DataError(
                    f"{u.where}: {name} {value!r} contains whitespace, "
                    "which a Kaldi data dir cannot hold; write .jsonl or .csv instead"
                )
    ordered = sorted(utts, key=lambda u: u.key)
    # Kaldi wants a speaker for every utterance; an unknown one becomes the utterance itself (Kaldi's convention).
    utt2spk = [(u.key, u.spk or u.key) for u in ordered]
    spk2utt: dict[str, list[str]] = {}
    for key, spk in utt2spk:
        spk2utt.setdefault(spk, []).append(key)
    files = {
        "utt2spk": "".join(f"{k} {s}\n" for k, s in utt2spk),
        "spk2utt": "".join(f"{s} {' '.join(keys)}\n" for s, keys in sorted(spk2utt.items())),
    }
    if all(u.duration is not None for u in ordered):
        files["utt2dur"] = "".join(f"{u.key} {_num(u.duration)}\n" for u in ordered)
    elif (folder / "utt2dur").exists():
        (folder / "utt2dur").unlink()
    if any(u.is_segment for u in ordered):
        rec_of = _recording_ids(ordered)
        files["wav.scp"] = "".join(
            f"{rec} {_rel(path, folder)}\n" for path, rec in sorted(rec_of.items(), key=lambda kv: kv[1])
        )
        files["segments"] = "".join(
            f"{u.key} {rec_of[u.path]} {_num(u.start or 0.0)} {_num(u.end) if u.end is not None else '-1'}\n"
            for u in ordered
        )
    else:
        files["wav.scp"] = "".join(f"{u.key} {_rel(u.path, folder)}\n" for u in ordered)
        stale = folder / "segments"
        if stale.exists():  # a segments file from an earlier write would redefine every utterance
            stale.unlink()
    for name, text in files.items():
        atomic_write_text(folder / name, text)


def _recording_ids(utts: Sequence[Utterance]) -> dict[str, str]:
    """One recording id per audio file, from the file's stem, made unique."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for u in utts:
        if u.path in out:
            continue
        stem = "".join("_" if c.isspace() else c for c in Path(u.path).stem) or "rec"
        rec, n = stem, 1
        while rec in used:
            n += 1
            rec = f"{stem}-{n}"
        used.add(rec)
        out[u.path] = rec
    return out
