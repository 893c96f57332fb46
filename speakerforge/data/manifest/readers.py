"""Reading manifests: format detection and one reader per format (Kaldi data dir, 3D-Speaker CSV, JSON Lines),
each reporting a malformed row as `file:line: what`."""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from speakerforge.data.manifest.rows import (
    CSV_HEADER,
    CSV_REQUIRED,
    JSONL_SUFFIXES,
    Report,
    Utterance,
    duplicate_problems,
)
from speakerforge.errors import DataError, where


def manifest_format(path: str | Path) -> str:
    """`kaldi`, `csv` or `jsonl`, from what the path is; DataError for anything else."""
    p = Path(path)
    if p.is_dir():
        return "kaldi"
    suffix = p.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if not p.exists():
        raise DataError(f"{path}: manifest not found")
    raise DataError(
        f"{path}: unknown manifest format '{suffix or p.name}'; expected a Kaldi data dir, "
        "a 3D-Speaker .csv or a .jsonl file"
    )


def _resolved(path: str | Path) -> str:
    p = Path(path)
    return "" if p.is_absolute() else f" (relative to the working directory: {p.resolve()})"


def read_manifest(path: str | Path, problems: list[str] | None = None) -> list[Utterance]:
    """Read any manifest format into utterances.

    Without `problems`, the first malformed row raises DataError (`file:line: what`), and so do duplicate keys.
    With a list, each bad row is skipped and its message appended, so that one run reports everything; errors
    about the whole file (missing, unreadable, unusable header) still raise.
    """
    if not Path(path).exists():
        raise DataError(f"{path}: manifest not found{_resolved(path)}")
    fmt = manifest_format(path)

    def report(src: str, line: int, what: str) -> None:
        message = f"{where(src, line)}: {what}"
        if problems is None:
            raise DataError(message)
        problems.append(message)

    reader = {"kaldi": _read_kaldi, "csv": _read_csv, "jsonl": _read_jsonl}[fmt]
    utts = reader(Path(path), report)
    if problems is None:
        dups = duplicate_problems(utts)
        if dups:
            more = f" (and {len(dups) - 1} more)" if len(dups) > 1 else ""
            raise DataError(dups[0] + more + "; every key must be unique")
    return utts


def _lines(path: Path) -> Iterable[tuple[int, str]]:
    """Non-blank lines with their 1-based numbers; a file that is not UTF-8 text is a DataError."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: spreadsheets start CSV files with a BOM
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise DataError(f"{where(path, line)}: not UTF-8 text; is this really a manifest?") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read manifest ({exc.strerror})") from None
    for number, row in enumerate(text.splitlines(), 1):
        if row.strip():
            yield number, row


def _audio_path(text: str, folder: Path, src: str, line: int, report: Report) -> str | None:
    text = text.strip()
    if not text:
        report(src, line, "empty audio path")
        return None
    if text.endswith("|"):
        report(
            src,
            line,
            "Kaldi pipe commands are not supported (nothing from a manifest is executed); "
            "convert the audio to wav/flac files and list their paths",
        )
        return None
    return os.path.abspath(os.path.join(folder, os.path.expanduser(text)))


def _number(value: object, name: str, src: str, line: int, report: Report) -> tuple[bool, float | None]:
    """(ok, value): empty or None -> (True, None); a finite non-negative number -> (True, x)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return True, None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        report(src, line, f"{name} must be a number of seconds, got {value!r}")
        return False, None
    try:
        x = float(value)
    except ValueError:
        report(src, line, f"{name} must be a number of seconds, got {value!r}")
        return False, None
    if not math.isfinite(x) or x < 0:
        report(src, line, f"{name} must be a finite number of seconds >= 0, got {value!r}")
        return False, None
    return True, x


def _segment_ok(start: float | None, end: float | None, src: str, line: int, report: Report) -> bool:
    if start is not None and end is not None and end <= start:
        report(src, line, f"segment is empty or ends before it starts (start={start:g}, end={end:g})")
        return False
    return True


def _segment_duration(start: float | None, end: float | None, stated: float | None) -> float | None:
    if end is not None:
        return end - (start or 0.0)
    return stated if start is None else None


# ---- Kaldi
def _read_kaldi(folder: Path, report: Report) -> list[Utterance]:
    wav_scp = folder / "wav.scp"
    if not wav_scp.is_file():
        raise DataError(f"{wav_scp}: missing; a Kaldi data dir needs wav.scp and utt2spk")
    utt2spk_file = folder / "utt2spk"
    if not utt2spk_file.is_file():
        raise DataError(f"{utt2spk_file}: missing; a Kaldi data dir needs utt2spk (`utt speaker` per line)")
    recordings = _read_wav_scp(wav_scp, folder, report)
    utt2spk = _read_pairs(utt2spk_file, "utterance and speaker", report)
    segments_file = folder / "segments"
    if segments_file.is_file():
        utts = _read_segments(segments_file, recordings, report)
    else:
        utts = [Utterance(key, path, None, source=src, line=line) for key, (path, src, line) in recordings]
    utts = _attach_durations(utts, folder / "utt2dur", report)
    return _attach_speakers(utts, utt2spk, str(utt2spk_file), report)


def _attach_durations(utts: list[Utterance], utt2dur_file: Path, report: Report) -> list[Utterance]:
    """Kaldi's optional `utt2dur` states the length of whole-file utterances (segments carry their own)."""
    if not utt2dur_file.is_file():
        return utts
    src = str(utt2dur_file)
    durations: dict[str, float] = {}
    for key, (text, line) in _read_pairs(utt2dur_file, "utterance and seconds", report).items():
        ok, value = _number(text, "duration", src, line, report)
        if ok and value is not None:
            durations[key] = value
    return [replace(u, duration=durations[u.key]) if u.duration is None and u.key in durations else u for u in utts]


def _read_wav_scp(path: Path, folder: Path, report: Report) -> list[tuple[str, tuple[str, str, int]]]:
    src = str(path)
    out = []
    for line, text in _lines(path):
        parts = text.strip().split(maxsplit=1)
        if len(parts) < 2:
            report(src, line, "expected `key path`, found one field")
            continue
        audio = _audio_path(parts[1], folder, src, line, report)
        if audio is not None:
            out.append((parts[0], (audio, src, line)))
    return out


def _read_pairs(path: Path, what: str, report: Report) -> dict[str, tuple[str, int]]:
    src = str(path)
    out: dict[str, tuple[str, int]] = {}
    for line, text in _lines(path):
        parts = text.split()
        if len(parts) != 2:
            report(src, line, f"expected 2 fields ({what}), found {len(parts)}")
            continue
        if parts[0] in out:
            report(src, line, f"'{parts[0]}' listed twice (first at line {out[parts[0]][1]})")
            continue
        out[parts[0]] = (parts[1], line)
    return out


def _read_segments(path: Path, recordings: list, report: Report) -> list[Utterance]:
    src = str(path)
    by_rec: dict[str, str] = {}
    for key, (audio, rec_src, rec_line) in recordings:
        if key in by_rec:
            report(rec_src, rec_line, f"recording '{key}' listed twice")
        by_rec.setdefault(key, audio)
    out = []
    for line, text in _lines(path):
        parts = text.split()
        if len(parts) != 4:
            report(src, line, f"expected 4 fields `segment recording start end`, found {len(parts)}")
            continue
        seg, rec, start_text, end_text = parts
        ok_start, start = _number(start_text, "start", src, line, report)
        if end_text.strip() == "-1":  # Kaldi: to the end of the recording
            ok_end, end = True, None
        else:
            ok_end, end = _number(end_text, "end", src, line, report)
        if not (ok_start and ok_end) or not _segment_ok(start, end, src, line, report):
            continue
        if end is None and not start:
            start = None  # `0 -1` is the whole file
        audio = by_rec.get(rec)
        if audio is None:
            report(src, line, f"recording '{rec}' is not in wav.scp")
            continue
        out.append(Utterance(seg, audio, None, start, end, _segment_duration(start, end, None), src, line))
    return out


def _attach_speakers(utts: list[Utterance], utt2spk: dict, utt2spk_src: str, report: Report) -> list[Utterance]:
    keys = {u.key for u in utts}
    for key, (_spk, line) in utt2spk.items():
        if key not in keys:
            report(utt2spk_src, line, f"utterance '{key}' has a speaker but no audio (not in wav.scp/segments)")
    out = []
    for u in utts:
        entry = utt2spk.get(u.key)
        if entry is None:
            report(u.source, u.line, f"no speaker for '{u.key}' in utt2spk")
        out.append(replace(u, spk=entry[0] if entry else None))
    return out


# ---- CSV (3D-Speaker)
def _csv_fields(text: str) -> list[str]:
    """One CSV line's fields; `csv.Error` (a field over the csv module's limit, a stray NUL) for the caller to name."""
    return next(csv.reader([text], skipinitialspace=True), [])


def _read_csv(path: Path, report: Report) -> list[Utterance]:
    src, folder = str(path), path.parent
    rows = list(_lines(path))
    if not rows:
        raise DataError(f"{where(path, 1)}: empty manifest; expected the header {','.join(CSV_HEADER)}")
    header_line, header_text = rows[0]
    try:
        header = [h.strip() for h in _csv_fields(header_text)]
    except csv.Error as exc:
        raise DataError(f"{where(path, header_line)}: unreadable CSV header ({exc})") from None
    missing = [c for c in CSV_REQUIRED if c not in header]
    if missing:
        raise DataError(
            f"{where(path, header_line)}: header lacks column(s) {', '.join(missing)}; "
            f"a 3D-Speaker CSV starts with {','.join(CSV_HEADER)}"
        )
    col = {name: i for i, name in enumerate(header)}
    out = []
    for line, text in rows[1:]:
        try:
            fields = _csv_fields(text)
        except csv.Error as exc:  # e.g. a field over the csv module's 131,072-character limit
            report(src, line, f"unreadable CSV row ({exc})")
            continue
        if len(fields) != len(header):
            report(src, line, f"{len(fields)} fields but the header has {len(header)} ({','.join(header)})")
            continue
        get = lambda name, fields=fields: fields[col[name]].strip() if name in col else ""  # noqa: E731
        key = get("ID")
        if not key:
            report(src, line, "empty ID")
            continue
        ok_d, dur = _number(get("dur"), "dur", src, line, report)
        ok_s, start = _number(get("start"), "start", src, line, report)
        ok_e, end = _number(get("stop"), "stop", src, line, report)
        if not (ok_d and ok_s and ok_e) or not _segment_ok(start, end, src, line, report):
            continue
        audio = _audio_path(get("path"), folder, src, line, report)
        if audio is None:
            continue
        # 3D-Speaker's `dur` is the whole file's length; the segment is [start, stop).
        out.append(Utterance(key, audio, get("spk") or None, start, end, _segment_duration(start, end, dur), src, line))
    return out


# ---- JSON Lines
def _read_jsonl(path: Path, report: Report) -> list[Utterance]:
    src, folder = str(path), path.parent
    out = []
    for line, text in _lines(path):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            if line == 1 and text.lstrip().startswith("["):
                raise DataError(
                    f"{where(path, line)}: a JSON array; expected JSON Lines, one object per line "
                    '({"key": ..., "wav": ..., "spk": ...})'
                ) from None
            report(src, line, f"bad JSON ({exc.msg} at column {exc.colno})")
            continue
        if not isinstance(obj, dict):
            report(src, line, f"expected a JSON object, got {type(obj).__name__}")
            continue
        missing = [k for k in ("key", "wav") if not isinstance(obj.get(k), str) or not obj.get(k)]
        if missing:
            report(
                src,
                line,
                f"missing or empty field(s) {', '.join(missing)}; "
                'each line needs {"key": ..., "wav": ..., "spk": ...}',
            )
            continue
        spk = obj.get("spk")
        if isinstance(spk, bool) or (spk is not None and not isinstance(spk, (str, int))):
            report(src, line, f"spk must be a string, got {spk!r}")
            continue
        ok_s, start = _number(obj.get("start"), "start", src, line, report)
        ok_e, end = _number(obj.get("end"), "end", src, line, report)
        ok_d, dur = _number(obj.get("dur"), "dur", src, line, report)
        if not (ok_s and ok_e and ok_d) or not _segment_ok(start, end, src, line, report):
            continue
        audio = _audio_path(obj["wav"], folder, src, line, report)
        if audio is None:
            continue
        duration = dur if dur is not None else _segment_duration(start, end, None)
        out.append(
            Utterance(obj["key"], audio, None if spk in (None, "") else str(spk), start, end, duration, src, line)
        )
    return out
