"""Trial lists and score files: the text formats users bring, read strictly, errors at `file:line`.

Trials (one format per file, decided by its first line):
  * VoxCeleb: `1 enroll test` / `0 enroll test`
  * Kaldi:    `enroll test target` / `enroll test nontarget`
  * 3D-Speaker: `enroll test 1` / `enroll test 0`
  * unlabeled: `enroll test`
Scores: `enroll test score [label]`, label `target|nontarget|1|0` (all lines labelled, or none).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from speakerforge.errors import DataError, where

log = logging.getLogger(__name__)

_WORD_LABELS = {"target": 1, "nontarget": 0}
_DIGIT_LABELS = {"1": 1, "0": 0}
_ANY_LABELS = {**_WORD_LABELS, **_DIGIT_LABELS}

FORMAT_HELP = ("expected `1 enroll test` / `0 enroll test` (VoxCeleb), `enroll test target|nontarget` (Kaldi), "
               "`enroll test 1|0`, or unlabeled `enroll test`")


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
    line_numbers: list[int] | None = None  # line of each trial in `source`, for error messages

    def __len__(self) -> int:
        return len(self.enroll)

    def describe(self, i: int) -> str:
        """Name trial i for a message: its keys and, when read from a file, `file:line`."""
        pos = where(self.source, self.line_numbers[i]) if self.line_numbers is not None else f"trial {i + 1}"
        return f"{self.enroll[i]} {self.test[i]} ({pos})"


def _read_lines(path: str | Path, what: str) -> list[tuple[int, list[str]]]:
    """Non-blank lines as (line number, tokens); missing or empty files are errors."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{path}: {what} file not found")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a UTF-8 text file ({exc.reason} at byte {exc.start}); expected a {what} list")
    rows = [(n, line.split()) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not rows:
        raise DataError(f"{path}: {what} file is empty; {FORMAT_HELP if what == 'trials' else 'expected lines `enroll test score [label]`'}")
    return rows


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


def read_trials(path: str | Path) -> Trials:
    """Read a trial list in any of the supported formats (see module docstring)."""
    rows = _read_lines(path, "trials")
    first_line, first = rows[0]
    fmt = _detect_format(first)
    if fmt is None:
        raise DataError(f"{where(path, first_line)}: cannot read trial line {' '.join(first)[:80]!r}; {FORMAT_HELP}")
    enroll: list[str] = []
    test: list[str] = []
    labels: list[int] = []
    for n, tok in rows:
        try:
            if fmt == "voxceleb" and len(tok) == 3:
                labels.append(_DIGIT_LABELS[tok[0]])
                e, t = tok[1], tok[2]
            elif fmt == "kaldi" and len(tok) == 3:
                labels.append(_WORD_LABELS[tok[2]])
                e, t = tok[0], tok[1]
            elif fmt == "enroll-test-digit" and len(tok) == 3:
                labels.append(_DIGIT_LABELS[tok[2]])
                e, t = tok[0], tok[1]
            elif fmt == "unlabeled" and len(tok) == 2:
                e, t = tok
            else:
                raise KeyError
        except KeyError:
            raise DataError(f"{where(path, n)}: malformed trial line {' '.join(tok)[:80]!r}; the file started in "
                            f"{fmt} format ({where(path, first_line)}); {FORMAT_HELP}") from None
        enroll.append(e)
        test.append(t)
    lab = np.asarray(labels, dtype=np.int8) if fmt != "unlabeled" else None
    log.info("%s: %d trials (%s format%s)", path, len(enroll), fmt,
             "" if lab is None else f", {int(lab.sum())} target")
    return Trials(enroll, test, lab, source=str(path), format=fmt)


def read_scores(path: str | Path) -> Scores:
    """Read `enroll test score [label]` lines; scores may be any float text, including nan/inf (checked later)."""
    rows = _read_lines(path, "scores")
    labelled = len(rows[0][1]) == 4
    enroll: list[str] = []
    test: list[str] = []
    values = np.empty(len(rows), dtype=np.float64)
    labels = np.empty(len(rows), dtype=np.int8) if labelled else None
    lines: list[int] = []
    for i, (n, tok) in enumerate(rows):
        ok = len(tok) == (4 if labelled else 3)
        if ok:
            try:
                values[i] = float(tok[2])
            except ValueError:
                ok = False
        if ok and labels is not None:
            lab = _ANY_LABELS.get(tok[3])
            ok = lab is not None
            if ok:
                labels[i] = lab
        if not ok:
            expect = "`enroll test score label`" if labelled else "`enroll test score`"
            raise DataError(f"{where(path, n)}: malformed score line {' '.join(tok)[:80]!r}; expected {expect} "
                            f"like the first line ({where(path, rows[0][0])}); label is target|nontarget|1|0")
        enroll.append(tok[0])
        test.append(tok[1])
        lines.append(n)
    return Scores(enroll, test, values, labels, source=str(path), line_numbers=lines)


def align_scores(scores: Scores, trials: Trials) -> Scores:
    """The scores of `trials`, in trial order, labelled from the trial list.

    The trial list defines what is evaluated: every trial needs a score, and scored pairs that are not in the list
    are left out (so scores of VoxCeleb1-O can be evaluated on its cleaned subset).
    """
    if trials.labels is None:
        raise DataError(f"{trials.source}: trial list has no labels ({trials.format} format); evaluation needs "
                        "`1 enroll test` / `enroll test target` style lines")
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
        raise DataError(f"{len(missing)} of {len(trials)} trials in {trials.source} have no score in {scores.source} "
                        f"(first: {first}); score them with the same trial list")
    if len(scores) > len(trials):
        log.info("%s: %d scored pairs are not in %s and are left out", scores.source, len(scores) - len(trials),
                 trials.source)
    idx = np.asarray(rows, dtype=np.int64)
    lines = [scores.line_numbers[i] for i in rows] if scores.line_numbers is not None else None
    out = Scores(list(trials.enroll), list(trials.test), scores.scores[idx], trials.labels, scores.source, lines)
    _warn_on_label_changes(None if scores.labels is None else scores.labels[idx], out)
    return out


def _warn_on_label_changes(old: np.ndarray | None, aligned: Scores) -> None:
    if old is None:
        return
    changed = np.flatnonzero(old != aligned.labels)
    if changed.size:
        log.warning("%d labels in %s differ from the trial list, which wins (first: %s)", changed.size,
                    aligned.source, aligned.describe(int(changed[0])))


def write_scores(fh: TextIO, enroll: list[str], test: list[str], scores: np.ndarray, labels: np.ndarray | None,
                 precision: int = 6) -> None:
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
            lines = [f"{e} {t} {v} {names[lab]}\n"
                     for e, t, v, lab in zip(enroll[start:stop], test[start:stop], vals, labels[start:stop].tolist())]
        fh.writelines(lines)
