"""The manifest row, `Utterance`, and what every manifest format shares: the CSV columns, the JSON Lines suffixes,
the problem callback of the readers and duplicate-key messages."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from speakerforge.errors import where

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
