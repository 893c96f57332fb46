"""Trial lists and score files: the text formats users bring, read strictly, errors at `file:line`.

Trials (one format per file, decided by its first line):
  * VoxCeleb: `1 enroll test` / `0 enroll test`
  * Kaldi:    `enroll test target` / `enroll test nontarget`
  * 3D-Speaker: `enroll test 1` / `enroll test 0`
  * unlabeled: `enroll test`
Scores: `enroll test score [label]`, label `target|nontarget|1|0` (all lines labelled, or none).
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from speakerforge.errors import DataError, where

log = logging.getLogger(__name__)

_WORD_LABELS = {"target": 1, "nontarget": 0}
_DIGIT_LABELS = {"1": 1, "0": 0}
_ANY_LABELS = {**_WORD_LABELS, **_DIGIT_LABELS}

FORMAT_HELP = (
    "expected `1 enroll test` / `0 enroll test` (VoxCeleb), `enroll test target|nontarget` (Kaldi), "
    "`enroll test 1|0`, or unlabeled `enroll test`"
)


@dataclass
class Trials:
    """Enroll/test key pairs, with 0/1 labels when the list has them."""

    enroll: list[str]
    test: list[str]
    labels: np.ndarray | None  # int8, 1 = target
    source: str = "<memory>"
    format: str = "unlabeled"

    def __len__(self) -> int:
        return len(self.enroll)

    def __post_init__(self) -> None:
        if len(self.enroll) != len(self.test):
            raise ValueError("enroll and test lists differ in length")
        if self.labels is not None:
            self.labels = np.asarray(self.labels, dtype=np.int8)
            if self.labels.shape != (len(self.enroll),):
                raise ValueError("labels must have one entry per trial")


@dataclass
class Scores:
    """Scored trials as read from a score file (or produced by `score_trials`)."""

    enroll: list[str]
    test: list[str]
    scores: np.ndarray  # float64
    labels: np.ndarray | None  # int8, 1 = target
    source: str = "<memory>"
    line_numbers: np.ndarray | None = None  # line of each trial in `source`, for error messages

    def __len__(self) -> int:
        return len(self.enroll)

    def describe(self, i: int) -> str:
        """Name trial i for a message: its keys and, when read from a file, `file:line`."""
        pos = where(self.source, int(self.line_numbers[i])) if self.line_numbers is not None else f"trial {i + 1}"
        return f"{self.enroll[i]} {self.test[i]} ({pos})"


_CHUNK_LINES = 1 << 18

# format -> (tokens per line, enroll column, test column, label column, label words)
_TRIAL_LAYOUTS: dict[str, tuple[int, int, int, int | None, dict[str, int] | None]] = {
    "voxceleb": (3, 1, 2, 0, _DIGIT_LABELS),
    "kaldi": (3, 0, 1, 2, _WORD_LABELS),
    "enroll-test-digit": (3, 0, 1, 2, _DIGIT_LABELS),
    "unlabeled": (2, 0, 1, None, None),
}


def _row_chunks(path: str | Path, what: str) -> Iterator[tuple[np.ndarray, list[list[str]]]]:
    """Non-blank lines, split, in chunks: (line numbers, token lists). Missing or empty files are errors."""
    p = Path(path)
    if p.is_dir():
        raise DataError(f"{path}: is a directory; expected a {what} file")
    if not p.is_file():
        raise DataError(f"{path}: {what} file not found")
    seen = 0
    start = 0
    try:
        with open(p, encoding="utf-8-sig") as fh:  # -sig: strip the BOM some editors write
            while lines := list(itertools.islice(fh, _CHUNK_LINES)):
                rows = [line.split() for line in lines]
                if all(rows):
                    numbers = np.arange(start + 1, start + 1 + len(rows))
                else:
                    keep = [i for i, r in enumerate(rows) if r]
                    rows = [rows[i] for i in keep]
                    numbers = start + 1 + np.asarray(keep, dtype=np.int64)
                start += len(lines)
                if rows:
                    seen += len(rows)
                    yield numbers, rows
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a UTF-8 text file ({exc.reason}); expected a {what} list") from None
    if not seen:
        expected = FORMAT_HELP if what == "trials" else "expected lines `enroll test score [label]`"
        raise DataError(f"{path}: {what} file is empty; {expected}")


def _columns(rows: list[list[str]], width: int, bad_line: Callable[[int], DataError]) -> list[tuple[str, ...]]:
    """Columns of rows that all have `width` tokens; otherwise the error for the first row that does not."""
    if all(len(r) == width for r in rows):
        return list(zip(*rows))
    raise bad_line(next(i for i, r in enumerate(rows) if len(r) != width))


def _map_labels(column: tuple[str, ...], words: dict[str, int], bad_line: Callable[[int], DataError]) -> np.ndarray:
    try:
        return np.fromiter(map(words.__getitem__, column), dtype=np.int8, count=len(column))
    except KeyError:
        raise bad_line(next(i for i, w in enumerate(column) if w not in words)) from None


def _detect_format(tokens: list[str]) -> str | None:
    if len(tokens) == 2:
        return "unlabeled"
    if len(tokens) == 3:
        if tokens[2] in _WORD_LABELS:
            return "kaldi"
        if tokens[0] in _DIGIT_LABELS:
            return "voxceleb"
        if tokens[2] in _DIGIT_LABELS:
            return "enroll-test-digit"
    return None


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Millions of small token lists trigger the cyclic GC over and over (3x the parse time); none form cycles."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def read_trials(path: str | Path) -> Trials:
    """Read a trial list in any of the supported formats (see module docstring)."""
    with _gc_paused():
        return _read_trials(path)


def read_scores(path: str | Path) -> Scores:
    """Read `enroll test score [label]` lines; scores may be any float text, including nan/inf (checked later)."""
    with _gc_paused():
        return _read_scores(path)


def _read_trials(path: str | Path) -> Trials:
    enroll: list[str] = []
    test: list[str] = []
    labels: list[np.ndarray] = []
    fmt = first_line = None
    for numbers, rows in _row_chunks(path, "trials"):
        if fmt is None:
            first_line, fmt = int(numbers[0]), _detect_format(rows[0])
            if fmt is None:
                raise DataError(
                    f"{where(path, first_line)}: cannot read trial line {' '.join(rows[0])[:80]!r}; {FORMAT_HELP}"
                )
            width, e_col, t_col, l_col, words = _TRIAL_LAYOUTS[fmt]

        def bad_line(i: int, numbers=numbers, rows=rows, fmt=fmt, first_line=first_line) -> DataError:
            return DataError(
                f"{where(path, int(numbers[i]))}: malformed trial line {' '.join(rows[i])[:80]!r}; the "
                f"file started in {fmt} format ({where(path, first_line)}); {FORMAT_HELP}"
            )

        cols = _columns(rows, width, bad_line)
        if l_col is not None:
            labels.append(_map_labels(cols[l_col], words or {}, bad_line))
        enroll.extend(cols[e_col])
        test.extend(cols[t_col])
    lab = np.concatenate(labels) if labels else None
    log.info("%s: %d trials (%s format%s)", path, len(enroll), fmt, "" if lab is None else f", {int(lab.sum())} target")
    return Trials(enroll, test, lab, source=str(path), format=fmt or "")


def _read_scores(path: str | Path) -> Scores:
    enroll: list[str] = []
    test: list[str] = []
    values: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    lines: list[np.ndarray] = []
    width = first_line = None
    for numbers, rows in _row_chunks(path, "scores"):
        if width is None:
            first_line, width = int(numbers[0]), len(rows[0])
            expect = "`enroll test score label`" if width == 4 else "`enroll test score`"

        def bad_line(i: int, numbers=numbers, rows=rows, expect=expect, first_line=first_line) -> DataError:
            return DataError(
                f"{where(path, int(numbers[i]))}: malformed score line {' '.join(rows[i])[:80]!r}; "
                f"expected {expect} like the first line ({where(path, first_line)}); label is "
                "target|nontarget|1|0"
            )

        if width not in (3, 4):
            raise bad_line(0)
        cols = _columns(rows, width, bad_line)
        try:
            values.append(np.array(cols[2], dtype=np.float64))
        except ValueError:
            raise bad_line(next(i for i, v in enumerate(cols[2]) if not _is_float(v))) from None
        if width == 4:
            labels.append(_map_labels(cols[3], _ANY_LABELS, bad_line))
        enroll.extend(cols[0])
        test.extend(cols[1])
        lines.append(numbers)
    return Scores(
        enroll,
        test,
        np.concatenate(values),
        np.concatenate(labels) if labels else None,
        source=str(path),
        line_numbers=np.concatenate(lines),
    )


def _is_float(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def align_scores(scores: Scores, trials: Trials) -> Scores:
    """The scores of `trials`, in trial order, labelled from the trial list.

    The trial list defines what is evaluated: every trial needs a score, and scored pairs that are not in the list
    are left out (so scores of VoxCeleb1-O can be evaluated on its cleaned subset).
    """
    if trials.labels is None:
        raise DataError(
            f"{trials.source}: trial list has no labels ({trials.format} format); evaluation needs "
            "`1 enroll test` / `enroll test target` style lines"
        )
    if scores.enroll == trials.enroll and scores.test == trials.test:  # the usual case: scored from this list
        out = Scores(scores.enroll, scores.test, scores.scores, trials.labels, scores.source, scores.line_numbers)
        _warn_on_label_changes(scores.labels, out)
        return out
    row_of = {pair: i for i, pair in enumerate(zip(scores.enroll, scores.test))}
    if len(row_of) != len(scores):
        dup = next(i for i, pair in enumerate(zip(scores.enroll, scores.test)) if row_of[pair] != i)
        raise DataError(f"{scores.source}: pair scored more than once: {scores.describe(dup)}")
    rows = [row_of.get(pair, -1) for pair in zip(trials.enroll, trials.test)]
    missing = [i for i, r in enumerate(rows) if r < 0]
    if missing:
        first = ", ".join(f"{trials.enroll[i]} {trials.test[i]}" for i in missing[:3])
        raise DataError(
            f"{len(missing)} of {len(trials)} trials in {trials.source} have no score in {scores.source} "
            f"(first: {first}); score them with the same trial list"
        )
    if len(scores) > len(trials):
        log.info(
            "%s: %d scored pairs are not in %s and are left out",
            scores.source,
            len(scores) - len(trials),
            trials.source,
        )
    idx = np.asarray(rows, dtype=np.int64)
    lines = scores.line_numbers[idx] if scores.line_numbers is not None else None
    out = Scores(list(trials.enroll), list(trials.test), scores.scores[idx], trials.labels, scores.source, lines)
    _warn_on_label_changes(None if scores.labels is None else scores.labels[idx], out)
    return out


def _warn_on_label_changes(old: np.ndarray | None, aligned: Scores) -> None:
    if old is None:
        return
    changed = np.flatnonzero(old != aligned.labels)
    if changed.size:
        log.warning(
            "%d labels in %s differ from the trial list, which wins (first: %s)",
            changed.size,
            aligned.source,
            aligned.describe(int(changed[0])),
        )


def write_scores(
    fh: IO[str], enroll: list[str], test: list[str], scores: np.ndarray, labels: np.ndarray | None, precision: int = 6
) -> None:
    """Write `enroll test score [target|nontarget]` lines to an open text file."""
    fmt = f"{{:.{precision}f}}"
    names = ("nontarget", "target")
    chunk = 1 << 16
    for start in range(0, len(enroll), chunk):
        stop = min(start + chunk, len(enroll))
        vals = [fmt.format(v) for v in scores[start:stop].tolist()]
        if labels is None:
            lines = [f"{e} {t} {v}\n" for e, t, v in zip(enroll[start:stop], test[start:stop], vals)]
        else:
            lines = [
                f"{e} {t} {v} {names[lab]}\n"
                for e, t, v, lab in zip(enroll[start:stop], test[start:stop], vals, labels[start:stop].tolist())
            ]
        fh.writelines(lines)
