"""Manifests: one `Utterance` record read from 3D-Speaker CSV, Kaldi data dirs and JSON Lines, and written back.

Formats (autodetected by `read_manifest`):

- a directory: Kaldi data dir with `wav.scp` (`key path`), `utt2spk` (`key spk`) and optional `segments`
  (`seg rec start end`, seconds, `end` -1 = to the end of the file). Pipe commands (`... |`) are refused, never run.
- `.csv`: 3D-Speaker, header `ID,dur,path,start,stop,spk`. As written by 3D-Speaker's `prepare_data_csv.py`,
  `start`/`stop` are seconds and `dur` is the duration of the whole file, so a row's segment length is
  `stop - start`; empty `start`/`stop` mean the whole file.
- `.jsonl` / `.json`: one object per line, `{"key", "wav", "spk"}` with optional `start`, `end`, `dur` (seconds).

Relative audio paths resolve against the manifest's folder (the data dir itself for Kaldi).
Every malformed row is reported as `file:line: what`; `read_manifest` raises at the first one unless given a
`problems` list to collect them into (what `validate` does).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from speakerforge.atomic import atomic_write_text
from speakerforge.errors import DataError, where

log = logging.getLogger(__name__)

CSV_HEADER = ("ID", "dur", "path", "start", "stop", "spk")
CSV_REQUIRED = ("ID", "path", "spk")
JSONL_SUFFIXES = (".jsonl", ".json")


@dataclass(frozen=True)
class Utterance:
    """One row of any manifest: a whole file or a `[start, end)` segment of it."""

    key: str
    path: str  # absolute path after resolving against the manifest's folder
    spk: str | None
    start: float | None = None  # seconds into the file
    end: float | None = None
    duration: float | None = None  # seconds of the segment when the manifest states it (CSV dur, segments)
    source: str = ""  # manifest path (for messages)
    line: int = 0  # 1-based line in the file that defined it (for messages)

    @property
    def where(self) -> str:
        """`file:line` of the row that defined this utterance (its key when it was built in code)."""
        return where(self.source, self.line or None) if self.source else f"utterance '{self.key}'"

    @property
    def is_segment(self) -> bool:
        return self.start is not None or self.end is not None


Report = Callable[[str, int, str], None]


# ----------------------------------------------------------------------------------------------------------------
# reading
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


def duplicate_problems(utts: Iterable[Utterance], seen: dict[str, Utterance] | None = None) -> list[str]:
    """`file:line: duplicate ID` messages naming both rows; pass `seen` to check across several manifests."""
    seen = {} if seen is None else seen
    out = []
    for u in utts:
        first = seen.get(u.key)
        if first is None:
            seen[u.key] = u
        else:
            out.append(f"{u.where}: duplicate ID '{u.key}' (first defined at {first.where})")
    return out


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


# ----------------------------------------------------------------------------------------------------------------
# writing
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
