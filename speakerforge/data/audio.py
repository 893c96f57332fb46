"""Audio I/O: everything becomes 16 kHz mono float32 in [-1, 1], or an error that names the file."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from speakerforge.atomic import atomic_path
from speakerforge.errors import DataError

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
# Sample rates a recording can have. Outside them the header is corrupt or hostile: a 200 KB file whose header says
# 1 Hz would become 28 hours of audio when resampled to 16 kHz.
MIN_SAMPLE_RATE = 1000
MAX_SAMPLE_RATE = 768000


# What a folder scan takes as audio (soundfile reads them all, mp3 and opus included).
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".opus", ".sph")


def find_audio_files(folder: str | Path) -> list[Path]:
    """Audio files anywhere below `folder` (by suffix), sorted: the one folder scan of every command."""
    return sorted(f for f in Path(folder).rglob("*") if f.suffix.lower() in AUDIO_SUFFIXES and f.is_file())


def _check_rate(path: str | Path, sr: int) -> None:
    if not MIN_SAMPLE_RATE <= sr <= MAX_SAMPLE_RATE:
        raise DataError(
            f"{path}: the header states a sample rate of {sr} Hz, outside {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz "
            "(corrupt header?)"
        )


@dataclass(frozen=True)
class AudioInfo:
    """Header facts, read without decoding the samples."""

    path: str
    sample_rate: int
    channels: int
    frames: int

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


def _check_path(path: str | Path) -> Path:
    p = Path(path)
    text = str(path).rstrip()
    if text.endswith("|"):
        raise DataError(
            f"{path}: Kaldi pipe commands are not supported (nothing from a manifest is executed); "
            "convert the audio to wav/flac files first"
        )
    if not p.exists():
        where = "" if p.is_absolute() else f" (relative paths resolve against the working directory: {p.resolve()})"
        raise DataError(f"{path}: audio file not found{where}")
    if p.is_dir():
        raise DataError(f"{path}: is a directory, expected an audio file")
    if p.stat().st_size == 0:
        raise DataError(f"{path}: audio file is empty (0 bytes)")
    return p


def audio_info(path: str | Path) -> AudioInfo:
    """Read only the header: used by `validate` so that a million-row manifest is checked in minutes."""
    p = _check_path(path)
    try:
        with _quiet_native_stderr(p):
            info = sf.info(str(p))
    except Exception as exc:  # soundfile raises several types (LibsndfileError, RuntimeError, TypeError)
        raise DataError(f"{path}: cannot decode audio ({_short(exc)}); supported: wav, flac, ogg, mp3") from None
    _check_rate(path, int(info.samplerate))
    frames = int(info.frames)
    # mp3 and some ogg files report no frame count in the header; fall back to decoding.
    if frames <= 0 or frames >= 2**62:
        try:
            with _quiet_native_stderr(p):
                data, _ = sf.read(str(p), dtype="float32", always_2d=True)
        except Exception as exc:
            raise DataError(f"{path}: cannot decode audio ({_short(exc)})") from None
        frames = int(data.shape[0])
    return AudioInfo(str(path), int(info.samplerate), int(info.channels), frames)


def load_audio(
    path: str | Path,
    start: float | None = None,
    end: float | None = None,
    sample_rate: int = SAMPLE_RATE,
) -> np.ndarray:
    """Load `[start, end)` seconds of a file as mono float32 at `sample_rate`.

    Only the requested segment is decoded, so long recordings cut by Kaldi `segments` stay cheap.
    """
    p = _check_path(path)
    try:
        with _quiet_native_stderr(p), sf.SoundFile(str(p)) as f:
            sr = int(f.samplerate)
            _check_rate(path, sr)
            first = int(round(start * sr)) if start else 0
            if first > 0:
                if f.seekable():
                    f.seek(first)
                else:
                    f.read(first, dtype="float32", always_2d=True)
            count = -1 if end is None else max(0, int(round(end * sr)) - first)
            data = f.read(count, dtype="float32", always_2d=True)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: cannot decode audio ({_short(exc)}); supported: wav, flac, ogg, mp3") from None
    if data.shape[0] == 0:
        what = "segment" if (start or end is not None) else "file"
        raise DataError(f"{path}: audio {what} holds no samples (start={start}, end={end})")
    wav = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if not np.isfinite(wav).all():
        raise DataError(f"{path}: audio holds NaN or infinite samples")
    return resample(np.ascontiguousarray(wav, dtype=np.float32), sr, sample_rate)


def resample(wav: np.ndarray, orig_sr: int, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    """Band-limited resampling with soxr (high quality), a no-op when the rates agree."""
    if orig_sr == target_sr:
        return wav
    log.debug("resampling %d Hz -> %d Hz", orig_sr, target_sr)
    return soxr.resample(wav, orig_sr, target_sr, quality="HQ").astype(np.float32, copy=False)


def save_audio(path: str | Path, wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write 16-bit PCM via a temporary file so that an interrupted write never leaves a half file."""
    with atomic_path(path, durable=False) as tmp:
        sf.write(
            str(tmp), np.asarray(wav, dtype=np.float32), sample_rate, subtype="PCM_16", format=_format_of(Path(path))
        )


def _format_of(p: Path) -> str:
    return {".flac": "FLAC", ".ogg": "OGG"}.get(p.suffix.lower(), "WAV")


# libsndfile's wording for a file it cannot parse, in what a user can act on.
_LIBSNDFILE_WORDING = {
    "File does not exist or is not a regular file (possibly a pipe?).": "damaged or not audio: no decoder accepts it",
    "Format not recognised.": "format not recognised: damaged, or not audio",
    "Error : unknown error in flac decoder.": "damaged FLAC data",
}


def _short(exc: BaseException) -> str:
    """The last line of a decoder error, without libsndfile's "Error opening 'PATH':" (the path leads our message)."""
    lines = str(exc).strip().splitlines()
    text = lines[-1] if lines else type(exc).__name__
    text = re.sub(r"^Error opening '.*?': ", "", text)
    return _LIBSNDFILE_WORDING.get(text, text)


_NATIVE_STDERR_LOCK = threading.Lock()


@contextlib.contextmanager
def _quiet_native_stderr(path: Path) -> Iterator[list[str]]:
    """Hold back what native decoders print straight to file descriptor 2 while they read `path` (libmpg123's
    "Note: Trying to resync..." for a damaged mp3), so a command's stderr stays its own (they go to the debug log);
    only MPEG files, whose decoder is the one that talks."""
    held: list[str] = []
    if path.suffix.lower() not in (".mp3", ".mpga", ".mp2"):
        yield held
        return
    # File descriptor 2 is process-wide: threads (extraction's audio readers) take turns, or one thread could
    # restore another's redirect and leave stderr pointing at a closed file.
    with _NATIVE_STDERR_LOCK, tempfile.TemporaryFile() as sink:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield held
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            held += [line for line in sink.read().decode("utf-8", "replace").splitlines() if line.strip()]
    if held:
        log.debug("%s: the decoder said: %s", path, " | ".join(held[:5]))
