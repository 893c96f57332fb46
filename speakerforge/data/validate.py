"""`speakerforge validate`: check manifests row by row and report every problem as `file:line: what`.

Fast by default: only audio headers are read, once per file (Kaldi segments and 3D-Speaker chunks share files).
`deep=True` decodes every file as well, to find NaN/inf samples and headers that lie about the length.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from speakerforge.data.audio import audio_info
from speakerforge.data.manifest import Utterance, duplicate_problems, read_manifest
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
            rows = read_manifest(path, problems=report.problems)
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
        facts = cache.get(u.path)
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
