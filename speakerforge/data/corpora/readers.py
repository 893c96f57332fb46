"""Turn standard corpus release layouts into manifests (LibriSpeech, Common Voice, VoxCeleb, CN-Celeb).

Each corpus has a `scan_*` function (layout -> utterances, no writing) and a `prepare_*` function that writes the
manifest(s) into an output folder and returns counts. Speaker IDs are kept as the corpus names them, optionally with
a prefix, so that corpora whose IDs could collide (VoxCeleb2 and CN-Celeb both use `id00012`) can be mixed.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from speakerforge.data.audio import audio_info
from speakerforge.data.corpora.synthetic import write_trials
from speakerforge.data.manifest import Utterance, write_manifest
from speakerforge.errors import DataError, where
from speakerforge.progress import progress_bar

log = logging.getLogger(__name__)

FORMATS = ("jsonl", "csv")
_LIBRI_NAME = re.compile(r"^(\d+)-(\d+)-(\d+)$")
_VOX_SPEAKER = re.compile(r"^id\d+$")
_AUDIO = (".flac", ".wav")


@dataclass
class PrepareResult:
    """What a `prepare_*` call wrote, and how much."""

    corpus: str
    outputs: dict[str, Path] = field(default_factory=dict)
    utterances: int = 0
    speakers: int = 0
    seconds: float | None = None
    skipped: int = 0
    trials: int = 0

    def summary(self) -> str:
        """One line for the log or the terminal."""
        hours = "" if self.seconds is None else f", {self.seconds / 3600:.2f} hours"
        extra = f", {self.trials} trials" if self.trials else ""
        skipped = f", {self.skipped} skipped (see warnings)" if self.skipped else ""
        files = ", ".join(str(p) for p in self.outputs.values())
        return (
            f"{self.corpus}: {self.utterances} utterances, {self.speakers} speakers{hours}{extra}{skipped} -> {files}"
        )


class _Skips:
    """Counts rows or files left out, logging the first few reasons so a user can see why."""

    def __init__(self, corpus: str, shown: int = 5):
        self.corpus, self.shown, self.count = corpus, shown, 0
        self.first: str | None = None

    def __call__(self, reason: str) -> None:
        self.count += 1
        self.first = self.first or reason
        if self.count <= self.shown:
            log.warning("%s: skipped %s", self.corpus, reason)
        elif self.count == self.shown + 1:
            log.warning("%s: more files skipped; the count is in the summary", self.corpus)


# ----------------------------------------------------------------------------------------------------------------
# shared steps
def _require_dir(src: str | Path, corpus: str) -> Path:
    p = Path(src)
    if not p.is_dir():
        raise DataError(f"{src}: {corpus} folder not found")
    return p


def _walk(root: Path, suffixes: Sequence[str]) -> list[Path]:
    """All files under `root` with one of `suffixes` (case-insensitive), in a stable order; follows symlinks."""
    out: list[Path] = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs.sort()
        out.extend(Path(folder, f) for f in sorted(files) if f.lower().endswith(tuple(suffixes)))
    return out


def _with_durations(utts: list[Utterance], skip: _Skips, desc: str) -> list[Utterance]:
    """Read each file's header once for its duration; unreadable files are skipped, not fatal."""
    out = []
    for u in progress_bar(utts, desc=desc, unit="file", disable=None, leave=False, mininterval=0.5):
        if u.duration is not None:
            out.append(u)
            continue
        try:
            info = audio_info(u.path)
        except DataError as exc:
            skip(str(exc))
            continue
        if info.frames == 0:
            skip(f"{u.path}: no samples")
            continue
        out.append(replace(u, duration=info.duration))
    return out


def _write(utts: list[Utterance], out_dir: str | Path, name: str, fmt: str) -> Path:
    if fmt not in FORMATS:
        raise DataError(f"unknown manifest format '{fmt}'; choose one of {', '.join(FORMATS)}")
    return write_manifest(utts, Path(out_dir) / f"{name}.{fmt}")


def _result(corpus: str, outputs: dict[str, Path], utts: list[Utterance], skip: _Skips) -> PrepareResult:
    known = [u.duration for u in utts if u.duration is not None]
    seconds = sum(known) if utts and len(known) == len(utts) else None
    return PrepareResult(corpus, outputs, len(utts), len({u.spk for u in utts}), seconds, skip.count)


def _finish(
    corpus: str, src: str | Path, utts: list[Utterance], out_dir: str | Path, fmt: str, skip: _Skips
) -> PrepareResult:
    if not utts:
        why = f" ({skip.count} skipped; first: {skip.first})" if skip.first else ""
        raise DataError(f"{src}: no usable {corpus} utterances{why}")
    result = _result(corpus, {"manifest": _write(utts, out_dir, "manifest", fmt)}, utts, skip)
    log.debug("%s", result.summary())
    return result


# ----------------------------------------------------------------------------------------------------------------
# LibriSpeech
def scan_librispeech(
    src: str | Path, speaker_prefix: str = "", durations: bool = True, skip: _Skips | None = None
) -> list[Utterance]:
    """`SPEAKER/CHAPTER/SPEAKER-CHAPTER-UTT.flac` (the release) or the same files side by side in one folder."""
    root = _require_dir(src, "LibriSpeech")
    skip = skip or _Skips("librispeech")
    utts = []
    for path in _walk(root, _AUDIO):
        m = _LIBRI_NAME.match(path.stem)
        if m is None:
            skip(f"{path}: not named SPEAKER-CHAPTER-UTT")
            continue
        utts.append(Utterance(path.stem, str(path.absolute()), speaker_prefix + m.group(1)))
    if not utts:
        raise DataError(f"{src}: no LibriSpeech files (SPEAKER-CHAPTER-UTT.flac) found")
    return _with_durations(utts, skip, "librispeech") if durations else utts


def prepare_librispeech(
    src: str | Path, out_dir: str | Path, fmt: str = "jsonl", speaker_prefix: str = "", durations: bool = True
) -> PrepareResult:
    """Write `OUT/manifest.{jsonl,csv}` for a LibriSpeech folder."""
    skip = _Skips("librispeech")
    return _finish("librispeech", src, scan_librispeech(src, speaker_prefix, durations, skip), out_dir, fmt, skip)


# ----------------------------------------------------------------------------------------------------------------
# Common Voice
def commonvoice_locales(src: str | Path) -> list[Path]:
    """The locale folders under `src`: itself when it holds `validated.tsv`, else its subfolders that do."""
    root = _require_dir(src, "Common Voice")
    if (root / "validated.tsv").is_file():
        return [root]
    found = sorted(d for d in root.iterdir() if d.is_dir() and (d / "validated.tsv").is_file())
    if not found:
        raise DataError(
            f"{src}: no validated.tsv here or in its subfolders; point at a Common Voice locale "
            "folder (validated.tsv, clips/) or at a folder of them"
        )
    return found


def scan_commonvoice(
    src: str | Path,
    include_other: bool = False,
    speaker_prefix: str = "",
    durations: bool = True,
    skip: _Skips | None = None,
) -> list[Utterance]:
    """`validated.tsv` (and `other.tsv` when asked) with `client_id` as the speaker and audio in `clips/`."""
    skip = skip or _Skips("commonvoice")
    utts: list[Utterance] = []
    seen: set[str] = set()
    for locale in commonvoice_locales(src):
        known = _clip_durations(locale / "clip_durations.tsv")
        names = ["validated.tsv"] + (["other.tsv"] if include_other else [])
        before = len(utts)
        for name in names:
            tsv = locale / name
            if not tsv.is_file():
                log.warning("%s: not found; continuing without it", tsv)
                continue
            for u in _read_cv_tsv(tsv, locale / "clips", speaker_prefix, skip):
                if u.path in seen:  # a clip listed in validated.tsv and other.tsv counts once
                    continue
                seen.add(u.path)
                utts.append(replace(u, duration=known.get(Path(u.path).name)))
        log.info("commonvoice %s: %d clips", locale.name, len(utts) - before)
    return _with_durations(utts, skip, "commonvoice") if durations else utts


def _read_text(path: Path) -> str:
    """A listing file's text; not UTF-8 is a DataError naming the line (a binary file, a wrong encoding)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(f"{where(path, line)}: not UTF-8 text; is this the file the corpus release ships?") from None


def _read_cv_tsv(tsv: Path, clips: Path, speaker_prefix: str, skip: _Skips) -> Iterable[Utterance]:
    with io.StringIO(_read_text(tsv), newline="") as f:
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(rows, None)
        if header is None or "client_id" not in header or "path" not in header:
            raise DataError(f"{where(tsv, 1)}: expected a Common Voice header with client_id and path columns")
        i_spk, i_path = header.index("client_id"), header.index("path")
        for line, row in enumerate(rows, 2):
            if not any(row):
                continue
            if len(row) <= max(i_spk, i_path) or not row[i_spk] or not row[i_path]:
                skip(f"{where(tsv, line)}: no client_id or path")
                continue
            clip = clips / row[i_path]
            if not clip.is_file() and not clip.suffix and clip.with_suffix(".mp3").is_file():
                clip = clip.with_suffix(".mp3")  # releases before 2020 list clips without the extension
            if not clip.is_file():
                skip(f"{where(tsv, line)}: clip {clip} not found")
                continue
            yield Utterance(clip.stem, str(clip.absolute()), speaker_prefix + row[i_spk], source=str(tsv), line=line)


def _clip_durations(tsv: Path) -> dict[str, float]:
    """Newer releases ship `clip_durations.tsv` (clip, milliseconds): durations without opening any clip."""
    if not tsv.is_file():
        return {}
    out = {}
    with io.StringIO(_read_text(tsv), newline="") as f:
        for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) >= 2 and row[1].strip().isdigit() and int(row[1]) > 0:
                out[row[0]] = int(row[1]) / 1000.0
    return out


def prepare_commonvoice(
    src: str | Path,
    out_dir: str | Path,
    fmt: str = "jsonl",
    include_other: bool = False,
    speaker_prefix: str = "",
    durations: bool = True,
) -> PrepareResult:
    """Write `OUT/manifest.{jsonl,csv}` for a Common Voice locale folder or a folder of locale folders."""
    skip = _Skips("commonvoice")
    utts = scan_commonvoice(src, include_other, speaker_prefix, durations, skip)
    return _finish("commonvoice", src, utts, out_dir, fmt, skip)


# ----------------------------------------------------------------------------------------------------------------
# VoxCeleb
def scan_voxceleb(
    src: str | Path, speaker_prefix: str = "", durations: bool = True, skip: _Skips | None = None
) -> list[Utterance]:
    """`idXXXXX/VIDEO/NNNNN.wav`; keys are that relative path, as in the official trial lists."""
    root = _require_dir(src, "VoxCeleb")
    skip = skip or _Skips("voxceleb")
    utts, m4a = [], 0
    for path in _walk(root, (".wav", ".m4a")):
        parts = path.relative_to(root).parts
        if len(parts) < 3 or not _VOX_SPEAKER.match(parts[-3]):
            skip(f"{path}: not in an idXXXXX/VIDEO/ folder")
            continue
        if path.suffix.lower() == ".m4a":
            m4a += 1
            continue
        utts.append(Utterance("/".join(parts[-3:]), str(path.absolute()), speaker_prefix + parts[-3]))
    if m4a and not utts:
        raise DataError(
            f"{src}: VoxCeleb2 ships AAC .m4a files, which soundfile cannot decode; convert them to "
            "wav first (e.g. `ffmpeg -i x.m4a -ar 16000 -ac 1 x.wav`, same folders)"
        )
    if m4a:
        log.warning("voxceleb: ignored %d .m4a files (not decodable); convert them to wav to include them", m4a)
    if not utts:
        raise DataError(f"{src}: no VoxCeleb files (idXXXXX/VIDEO/NNNNN.wav) found")
    return _with_durations(utts, skip, "voxceleb") if durations else utts


def prepare_voxceleb(
    src: str | Path, out_dir: str | Path, fmt: str = "jsonl", speaker_prefix: str = "", durations: bool = True
) -> PrepareResult:
    """Write `OUT/manifest.{jsonl,csv}` for a VoxCeleb1/2 wav folder."""
    skip = _Skips("voxceleb")
    return _finish("voxceleb", src, scan_voxceleb(src, speaker_prefix, durations, skip), out_dir, fmt, skip)


# ----------------------------------------------------------------------------------------------------------------
# CN-Celeb
def cnceleb_roots(src: str | Path) -> list[Path]:
    """`src` itself when it holds `data/` (CN-Celeb_flac, CN-Celeb2_flac), else its subfolders that do."""
    root = _require_dir(src, "CN-Celeb")
    if (root / "data").is_dir():
        return [root]
    found = sorted(d for d in root.iterdir() if (d / "data").is_dir())
    if not found:
        raise DataError(
            f"{src}: no data/ folder here or in its subfolders; point at CN-Celeb_flac, "
            "CN-Celeb2_flac or the folder holding them"
        )
    return found


@dataclass
class CNCelebScan:
    """Training utterances, and the evaluation part (enroll, test, trials) when the release has one."""

    train: list[Utterance]
    enroll: list[Utterance] = field(default_factory=list)
    test: list[Utterance] = field(default_factory=list)
    trials: list[tuple[int, str, str]] = field(default_factory=list)


def scan_cnceleb(
    src: str | Path, speaker_prefix: str = "", durations: bool = True, skip: _Skips | None = None
) -> CNCelebScan:
    """`data/idXXXXX/*.flac|wav` for training; `eval/enroll`, `eval/test`, `eval/lists/trials.lst` if present."""
    skip = skip or _Skips("cnceleb")
    scan = CNCelebScan(train=[])
    for root in cnceleb_roots(src):
        enroll = _cn_eval_files(root / "eval" / "enroll", speaker_prefix, skip)
        test = _cn_eval_files(root / "eval" / "test", speaker_prefix, skip)
        held_out = {u.spk for u in enroll + test}
        scan.train += _cn_train(root, speaker_prefix, held_out, skip)
        scan.enroll += enroll
        scan.test += test
        trials = root / "eval" / "lists" / "trials.lst"
        if trials.is_file():
            scan.trials += _cn_trials(trials, {u.key for u in enroll}, {u.key for u in test}, skip)
    if not scan.train and not scan.test:
        raise DataError(f"{src}: no CN-Celeb audio (data/idXXXXX/*.flac) found")
    if durations:
        scan.train = _with_durations(scan.train, skip, "cnceleb train")
        scan.enroll = _with_durations(scan.enroll, skip, "cnceleb enroll")
        scan.test = _with_durations(scan.test, skip, "cnceleb test")
    return scan


def _cn_train(root: Path, speaker_prefix: str, held_out: set[str | None], skip: _Skips) -> list[Utterance]:
    speakers = _cn_speaker_list(root)
    out = []
    for spk_dir in sorted(d for d in (root / "data").iterdir() if d.is_dir()):
        spk = spk_dir.name
        if speakers is not None and spk not in speakers:
            continue  # evaluation speakers sit in data/ too; dev/dev.lst names the training ones
        if speakers is None and speaker_prefix + spk in held_out:
            continue  # without a list, keep the evaluation speakers out of training ourselves
        for path in _walk(spk_dir, _AUDIO):
            out.append(Utterance(f"{spk}-{path.stem}", str(path.absolute()), speaker_prefix + spk))
    return out


def _cn_speaker_list(root: Path) -> set[str] | None:
    for name in ("dev/dev.lst", "spk.lst"):
        p = root / name
        if p.is_file():
            return {line.split()[0] for line in _read_text(p).splitlines() if line.strip()}
    return None


def _cn_eval_files(folder: Path, speaker_prefix: str, skip: _Skips) -> list[Utterance]:
    if not folder.is_dir():
        return []
    out = []
    for path in _walk(folder, _AUDIO):
        spk = path.stem.split("-", 1)[0]
        if not _VOX_SPEAKER.match(spk):
            skip(f"{path}: not named idXXXXX-...")
            continue
        out.append(Utterance(path.stem, str(path.absolute()), speaker_prefix + spk))
    return out


def _cn_trials(path: Path, enroll: set[str], test: set[str], skip: _Skips) -> list[tuple[int, str, str]]:
    """`enroll_id test/ID-genre-...-NNN.wav 1|0` -> (label, enroll key, test key)."""
    labels = {"1": 1, "0": 0, "target": 1, "nontarget": 0}
    out = []
    for line, text in enumerate(_read_text(path).splitlines(), 1):
        parts = text.split()
        if not parts:
            continue
        if len(parts) != 3 or parts[2] not in labels:
            raise DataError(f"{where(path, line)}: expected `enroll test label` with label 1/0, got {text!r}")
        a, b = Path(parts[0]).stem, Path(parts[1]).stem
        if a not in enroll or b not in test:
            skip(f"{where(path, line)}: trial refers to audio that is not there ({a} / {b})")
            continue
        out.append((labels[parts[2]], a, b))
    return out


def prepare_cnceleb(
    src: str | Path, out_dir: str | Path, fmt: str = "jsonl", speaker_prefix: str = "", durations: bool = True
) -> PrepareResult:
    """Write `OUT/train.*`, and `enroll.*`, `test.*`, `trials.txt` (VoxCeleb style) when there is an eval part."""
    skip = _Skips("cnceleb")
    scan = scan_cnceleb(src, speaker_prefix, durations, skip)
    outputs = {}
    for name, utts in (("train", scan.train), ("enroll", scan.enroll), ("test", scan.test)):
        if utts:
            outputs[name] = _write(utts, out_dir, name, fmt)
    if scan.trials:
        outputs["trials"] = Path(out_dir) / "trials.txt"
        write_trials(outputs["trials"], scan.trials)
    everything = scan.train + scan.enroll + scan.test
    result = _result("cnceleb", outputs, everything, skip)
    result.trials = len(scan.trials)
    log.debug("%s", result.summary())
    return result


PREPARERS: dict[str, Callable[..., PrepareResult]] = {
    "librispeech": prepare_librispeech,
    "commonvoice": prepare_commonvoice,
    "voxceleb": prepare_voxceleb,
    "cnceleb": prepare_cnceleb,
}
