"""`speakerforge validate`: check manifests row by row and report every problem as `file:line: what`.

Fast by default: only audio headers are read, once per file (Kaldi segments and 3D-Speaker chunks share files).
`deep=True` decodes every file as well, to find NaN/inf samples and headers that lie about the length.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from speakerforge.atomic import atomic_write_text
from speakerforge.data.audio import audio_info
from speakerforge.data.manifest import Utterance, duplicate_problems, read_manifest
from speakerforge.data.shards.index import ShardUtterance, is_shard_list, read_shard_list
from speakerforge.data.shards.reader import decode_audio_bytes, read_member_bytes
from speakerforge.errors import DataError
from speakerforge.progress import progress_bar

log = logging.getLogger(__name__)

# A segment may overshoot the end of its file by this much (rounding in the tool that wrote it) before it counts.
END_TOLERANCE = 0.02
# A stated whole-file duration may differ from the header by this much.
DURATION_TOLERANCE = 0.05
_DEEP_BLOCK = 1 << 16


@dataclass
class ValidationReport:
    """What `validate_manifests` found: counts and one `file:line: what` string per problem."""

    manifests: list[str] = field(default_factory=list)
    rows: int = 0
    speakers: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """One line: manifests, rows, speakers, hours, problems."""
        return (
            f"{_count(len(self.manifests), 'manifest')}, {_count(self.rows, 'row')}, "
            f"{_count(self.speakers, 'speaker')}, {self.seconds / 3600:.2f} hours, "
            f"{_count(len(self.problems), 'problem')}"
        )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


@dataclass(frozen=True)
class _FileFacts:
    """What we know about one audio file, or why it is unusable."""

    duration: float = 0.0
    error: str | None = None


def validate_manifests(paths: Sequence[str | Path], deep: bool = False) -> ValidationReport:
    """Parse every manifest (collecting, not stopping at, bad rows) and check every row's audio."""
    report = ValidationReport(manifests=[str(p) for p in paths])
    utts: list[Utterance] = []
    for path in paths:
        try:
            rows = read_shard_list(path) if is_shard_list(path) else read_manifest(path, problems=report.problems)
        except DataError as exc:  # the whole manifest is unusable (missing, unreadable, bad header)
            report.problems.append(str(exc))
            continue
        if not rows and not any(p.startswith(str(path)) for p in report.problems):
            report.problems.append(f"{path}: manifest holds no rows")
        utts.extend(rows)
    report.problems.extend(duplicate_problems(utts))
    report.rows = len(utts)
    report.speakers = len({u.spk for u in utts if u.spk is not None})
    cache: dict[str, _FileFacts] = {}
    for u in progress_bar(utts, desc="validate", unit="row", disable=None, leave=False, mininterval=0.5):
        facts = cache.get(u.path) if not isinstance(u, ShardUtterance) else _inspect_member(u, deep)
        if facts is None:
            facts = cache[u.path] = _inspect(u.path, deep)
        problems = list(_row_problems(u, facts))
        report.problems.extend(f"{u.where}: {what}" for what in problems)
        if facts.error is None:
            report.seconds += _seconds(u, facts.duration)
    return report


def _row_problems(u: Utterance, facts: _FileFacts) -> Iterable[str]:
    if u.spk is None:
        yield f"no speaker for '{u.key}'"
    if facts.error is not None:
        yield facts.error
        return
    length = facts.duration
    if length <= 0:
        yield f"{u.path}: audio holds no samples"
        return
    if u.start is not None and u.start >= length:
        yield f"segment '{u.key}' starts at {u.start:g} s, past the end of {u.path} ({length:g} s)"
    elif u.end is not None and u.end > length + END_TOLERANCE:
        yield f"segment '{u.key}' ends at {u.end:g} s, past the end of {u.path} ({length:g} s)"
    if u.duration is not None and u.duration <= 0:
        yield f"duration of '{u.key}' is {u.duration:g} s; it must be > 0"
    elif not u.is_segment and u.duration is not None and abs(u.duration - length) > DURATION_TOLERANCE:
        yield f"manifest says '{u.key}' lasts {u.duration:g} s but {u.path} holds {length:g} s"


def _seconds(u: Utterance, length: float) -> float:
    end = length if u.end is None else min(u.end, length)
    return max(0.0, end - (u.start or 0.0))


def _inspect(path: str, deep: bool) -> _FileFacts:
    try:
        info = audio_info(path)
    except DataError as exc:
        return _FileFacts(error=str(exc))
    if not deep:
        return _FileFacts(duration=info.duration)
    return _decode_all(path, info.frames, info.sample_rate)


def _inspect_member(u: ShardUtterance, deep: bool) -> _FileFacts:
    """A shard member: its index entry, or (no index, or `deep`) its bytes decoded from the tar."""
    if u.frames > 0 and u.sample_rate > 0 and not deep:
        return _FileFacts(duration=u.frames / u.sample_rate)
    try:
        data = read_member_bytes(u)
        if not deep:
            return _FileFacts(duration=float(sf.info(io.BytesIO(data)).duration))
        wav = decode_audio_bytes(data, u.where, sample_rate=u.sample_rate or 16000)
    except DataError as exc:
        return _FileFacts(error=str(exc))
    except Exception as exc:  # soundfile's own error types
        return _FileFacts(error=f"{u.where}: cannot decode audio ({str(exc).strip().splitlines()[-1]})")
    if u.frames and u.sample_rate and len(wav) != u.frames:
        return _FileFacts(
            error=f"{u.where}: the shard index says {u.frames} frames but the member decodes to {len(wav)}"
        )
    return _FileFacts(duration=len(wav) / (u.sample_rate or 16000))


def _decode_all(path: str, header_frames: int, sample_rate: int) -> _FileFacts:
    """Decode in blocks (bounded memory) and check every sample is finite and the true length."""
    frames = 0
    try:
        with sf.SoundFile(path) as f:
            for block in f.blocks(blocksize=_DEEP_BLOCK, dtype="float32", always_2d=True):
                finite = np.isfinite(block).all(axis=1)
                if not finite.all():
                    at = (frames + int(np.argmin(finite))) / sample_rate
                    return _FileFacts(error=f"{path}: audio holds NaN or infinite samples (first at {at:.3f} s)")
                frames += block.shape[0]
    except Exception as exc:  # soundfile raises several types for corrupt data
        text = str(exc).strip().splitlines()
        return _FileFacts(
            error=f"{path}: decoding failed after {frames / sample_rate:.3f} s "
            f"({text[-1] if text else type(exc).__name__})"
        )
    if frames == 0:
        return _FileFacts(error=f"{path}: audio holds no samples")
    if frames != header_frames:
        return _FileFacts(
            error=f"{path}: header says {header_frames} frames but the file decodes to {frames}; re-encode it"
        )
    return _FileFacts(duration=frames / sample_rate)


# ----------------------------------------------------------------------------------------------------------------
# the start-of-training check: each audio file opened once, and not again while its manifest is unchanged
BadRow = tuple[int, str, str]  # (row index in its source, `file:line`, what)
_CHECKS_VERSION = 1


def manifest_signature(path: str | Path) -> list[list]:
    """(name, size, mtime_ns) of the file(s) a manifest or shard list is read from: changes when it is rewritten."""
    p = Path(path)
    files = sorted(f for f in p.iterdir() if f.is_file()) if p.is_dir() else [p]
    if p.suffix.lower() in (".list", ".txt") and (p.parent / "shards.index.jsonl").is_file():
        files.append(p.parent / "shards.index.jsonl")
    out = []
    for f in files:
        st = f.stat()
        out.append([f.name, st.st_size, st.st_mtime_ns])
    return out


def check_training_rows(
    sources: Sequence[tuple[str, Sequence[Utterance]]], record: str | Path | None = None
) -> list[list[BadRow]]:
    """The rows of each `(manifest path, utterances)` that training cannot read: audio missing, undecodable header,
    no samples, or a segment starting past the end. Each file's header is read once (rows sharing a file share
    it); shard members are judged from the shard index without opening anything.

    `record` (a JSON file) keeps the verdict per manifest: while a manifest's files are unchanged, a later start
    (a resume) re-reads only the rows found bad before, so a million-row run opens nothing at a resume.
    """
    saved = _read_record(record)
    out: list[list[BadRow]] = []
    facts: dict[str, _FileFacts | tuple[int, int]] = {}
    for path, utts in sources:
        signature = manifest_signature(path)
        prior = saved.get(str(path))
        if prior and prior.get("signature") == signature and prior.get("rows") == len(utts):
            rows: Iterable[int] = [int(b[0]) for b in prior.get("bad", []) if int(b[0]) < len(utts)]
            reused = True
        else:
            rows = range(len(utts))
            reused = False
        bad: list[BadRow] = []
        for i in progress_bar(rows, desc=f"checking {path}", disable=reused or None, leave=False, mininterval=2):
            u = utts[i]
            if isinstance(u, ShardUtterance):
                what = None if u.frames > 0 or not u.sample_rate else f"{u.where}: no samples"
            else:
                what = _training_row_problem(u, facts)
            if what is not None:
                bad.append((i, f"{u.source}:{u.line}", what))
        if reused:
            log.info(
                "%s: audio checked at an earlier start and unchanged since; re-checked %d bad row(s)", path, len(bad)
            )
        saved[str(path)] = {"signature": signature, "rows": len(utts), "bad": [list(b) for b in bad]}
        out.append(bad)
    if record is not None:
        atomic_write_text(record, json.dumps({"version": _CHECKS_VERSION, "sources": saved}) + "\n")
    return out


def _training_row_problem(u: Utterance, facts: dict) -> str | None:
    known = facts.get(u.path)
    if known is None:
        try:
            info = audio_info(u.path)
            known = facts[u.path] = (info.frames, info.sample_rate)
        except DataError as exc:
            known = facts[u.path] = _FileFacts(error=str(exc))
    if isinstance(known, _FileFacts):
        return known.error
    frames, sr = known
    if frames <= 0:
        return f"{u.path}: no samples"
    duration = frames / sr if sr else 0.0
    if u.start is not None and u.start >= duration:
        return f"{u.path}: the segment starts at {u.start:g} s, at or past the end of the file ({duration:.3f} s)"
    return None


def _read_record(record: str | Path | None) -> dict:
    if record is None or not Path(record).is_file():
        return {}
    try:
        data = json.loads(Path(record).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # a cache: unreadable means check again
    if (
        not isinstance(data, dict)
        or data.get("version") != _CHECKS_VERSION
        or not isinstance(data.get("sources"), dict)
    ):
        return {}
    return data["sources"]
