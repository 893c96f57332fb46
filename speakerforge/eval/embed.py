"""Embedding extraction for a whole data set: manifest (or folder of audio files) in, `.npz` (and Kaldi ark/scp) out.

Utterances are sorted by duration (longest first) and embedded through `SpeakerModel.embed_waveforms`, which batches
only utterances with the same number of frames, so every embedding equals the one `SpeakerModel.embed` gives for that
utterance alone (to float rounding). Audio is decoded by a small thread pool ahead of the model.

`chunk` (seconds) cuts each utterance longer than that into equal chunks, the last one overlapping its neighbour so
that it ends at the end of the audio; the embedding is the mean of the chunk embeddings. All chunks of all long
utterances have one length, so they batch together.

Nothing is written until every embedding is computed; each output file is written atomically. The run's real-time
factor (processing time / audio duration) is logged, returned, and written to `OUT.json` beside the embeddings.

Threads: by default one single-threaded model worker per CPU thread, each on its own window of utterances. For
CAM++ on 2 cores (bench/extract.py) this used 25-45% less CPU per audio second than one worker with 2 intra-op
threads, and on a loaded machine it was 2-10x faster in wall time (intra-op threads spin and wait for each other
inside every small convolution). ONNX Runtime needed ~0.0085 CPU-seconds per audio second and thread against
~0.0145 for the BN-folded PyTorch model.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from speakerforge.data.audio import AUDIO_SUFFIXES, SAMPLE_RATE, audio_info, find_audio_files, load_audio
from speakerforge.data.manifest import Utterance, read_manifest
from speakerforge.errors import DataError, check_output_path
from speakerforge.inference import DEFAULT_BATCH_SIZE, SpeakerModel, chunk_waveform, load_model
from speakerforge.progress import progress_bar

log = logging.getLogger(__name__)

__all__ = ["ExtractStats", "extract_embeddings", "list_utterances", "embed_utterances", "AUDIO_SUFFIXES"]

# Utterances handed to the model at a time: equal-frame batches are formed inside each window.
WINDOW_BATCHES = 2


@dataclass
class ExtractStats:
    """What one extraction did, and how fast (`rtf` = processing seconds / audio seconds)."""

    utterances: int
    audio_seconds: float
    processing_seconds: float
    model_seconds: float  # features + model, summed over workers
    rtf: float
    model_rtf: float  # model_seconds / workers / audio_seconds
    chunked: int = 0  # utterances embedded as a mean over chunks
    model: str = ""
    backend: str = ""
    embedding_dim: int = 0
    chunk: float | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    threads: int | None = None
    workers: int = 1
    outputs: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.utterances} embeddings ({self.embedding_dim}-d) from {self.audio_seconds / 3600:.2f} h of "
            f"audio in {self.processing_seconds:.1f} s: RTF {self.rtf:.4f} end to end, {self.model_rtf:.4f} in "
            f"features + model ({self.backend}, {self.workers} worker{'s' if self.workers > 1 else ''} x "
            f"{max(1, (self.threads or 1) // self.workers)} thread)"
        )


# --------------------------------------------------------------------------------------------------------------
# inputs
def list_utterances(data: str | Path) -> list[Utterance]:
    """A manifest (CSV, JSONL, Kaldi data dir) or a folder of audio files (keys: relative paths without suffix)."""
    p = Path(data)
    if not p.exists():
        raise DataError(f"{data}: data not found (expected a manifest or a folder of audio files)")
    if p.is_dir() and not (p / "wav.scp").is_file():
        return _scan_audio_dir(p)
    utts = read_manifest(p)
    if not utts:
        raise DataError(f"{data}: the manifest lists no utterances")
    return utts


def _scan_audio_dir(folder: Path) -> list[Utterance]:
    files = find_audio_files(folder)
    if not files:
        raise DataError(f"{folder}: no audio files ({', '.join(AUDIO_SUFFIXES)}) and no wav.scp in this folder")
    utts: list[Utterance] = []
    seen: dict[str, Path] = {}
    for f in files:
        key = f.relative_to(folder).with_suffix("").as_posix()
        if key in seen:
            raise DataError(f"{f}: key {key!r} is also the key of {seen[key]}; rename one of them")
        seen[key] = f
        utts.append(Utterance(key=key, path=str(f), spk=None, source=str(folder)))
    log.info("%s: %d audio files", folder, len(utts))
    return utts


def _duration(u: Utterance) -> float:
    """Seconds of the utterance, from the manifest when it says, else from the file header."""
    if u.start is not None and u.end is not None and u.end >= 0:
        return u.end - u.start
    if u.duration is not None and u.start is None:
        return u.duration
    try:
        total = audio_info(u.path).duration
    except DataError as exc:
        raise DataError(f"{u.where}: {exc}") from None
    return total - (u.start or 0.0)


def _load(u: Utterance) -> np.ndarray:
    try:
        end = u.end if u.end is not None and u.end >= 0 else None
        return load_audio(u.path, u.start, end)
    except DataError as exc:
        raise DataError(f"{u.where}: {exc}") from None


def _prefetch(utts: Sequence[Utterance], workers: int, ahead: int) -> Iterator[np.ndarray]:
    """Decoded audio in order, `ahead` files decoded in advance by `workers` threads (soundfile releases the GIL)."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="audio") as pool:
        queue: deque[Future] = deque()
        it = iter(utts)
        for u in it:
            queue.append(pool.submit(_load, u))
            if len(queue) >= ahead:
                break
        while queue:
            wav = queue.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                queue.append(pool.submit(_load, nxt))
            yield wav


# --------------------------------------------------------------------------------------------------------------
# embedding
def embed_utterances(
    model: SpeakerModel,
    utts: Sequence[Utterance],
    chunk: float | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
    length_tolerance: float = 0.0,
    workers: int = 1,
    loaders: int = 2,
) -> tuple[np.ndarray, dict[str, float]]:
    """`[N, D]` embeddings in the order of `utts`, plus counters (audio seconds, model seconds summed over workers,
    chunked utterances). `workers` threads run the model on different windows of utterances at once."""
    if chunk is not None and chunk * SAMPLE_RATE < model.min_samples:
        raise DataError(
            f"--chunk {chunk:g} s is shorter than the {model.min_samples / SAMPLE_RATE:.3f} s this model "
            "needs for an embedding"
        )
    durations = np.array([_duration(u) for u in utts])
    order = np.argsort(-durations, kind="stable")
    chunk_len = int(round(chunk * SAMPLE_RATE)) if chunk else 0
    window = max(1, batch_size * WINDOW_BATCHES)
    out = np.empty((len(utts), model.embedding_dim), dtype=np.float32)
    counters = {"audio_seconds": 0.0, "model_seconds": 0.0, "chunked": 0}
    sorted_utts = [utts[i] for i in order]
    bar = progress_bar(total=len(utts), unit="utt", desc="extract", disable=None if progress else True)

    def collect(item: tuple[np.ndarray, Future]) -> None:
        idx, future = item
        out[idx], seconds, chunked = future.result()
        counters["model_seconds"] += seconds
        counters["chunked"] += chunked
        bar.update(len(idx))

    try:
        wavs = _prefetch(sorted_utts, loaders, ahead=window * (workers + 1))
        with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="embed") as pool:
            pending: deque[tuple[np.ndarray, Future]] = deque()
            for start in range(0, len(utts), window):
                idx = order[start : start + window]
                batch = [next(wavs) for _ in idx]
                names = [f"{utts[i].where}: {utts[i].path}" for i in idx]
                for name, w in zip(names, batch):
                    model.check_input(w, name)
                    counters["audio_seconds"] += w.shape[0] / SAMPLE_RATE
                pending.append(
                    (idx, pool.submit(_embed_window, model, batch, chunk_len, batch_size, length_tolerance, names))
                )
                while len(pending) > workers:  # every worker busy and one window queued
                    collect(pending.popleft())
            while pending:
                collect(pending.popleft())
    finally:
        bar.close()
    return out, counters


def _embed_window(
    model: SpeakerModel, wavs: list[np.ndarray], chunk_len: int, batch_size: int, tolerance: float, names: list[str]
) -> tuple[np.ndarray, float, int]:
    """Whole utterances batched by frame count; long ones (with chunking) as the mean over their chunks.
    Returns the embeddings, the seconds spent, and how many utterances were chunked."""
    started = time.perf_counter()
    long = [i for i, w in enumerate(wavs) if chunk_len and w.shape[0] > chunk_len]
    short = [i for i in range(len(wavs)) if not (chunk_len and wavs[i].shape[0] > chunk_len)]
    out = np.empty((len(wavs), model.embedding_dim), dtype=np.float32)
    if short:
        out[short] = model.embed_waveforms(
            [wavs[i] for i in short], batch_size, tolerance, names=[names[i] for i in short]
        )
    if long:
        pieces = [chunk_waveform(wavs[i], chunk_len) for i in long]
        embs = model.embed_waveforms(
            [c for p in pieces for c in p], batch_size, names=[names[i] for i, p in zip(long, pieces) for _ in p]
        )
        pos = 0
        for i, p in zip(long, pieces):
            out[i] = embs[pos : pos + len(p)].mean(axis=0, dtype=np.float64)
            pos += len(p)
    return out, time.perf_counter() - started, len(long)


# --------------------------------------------------------------------------------------------------------------
def _check_extract_outputs(out: Path, ark: str | Path | None, chunk: float | None, batch_size: int) -> None:
    """Bad settings and unusable output paths fail now, not after the whole extraction."""
    if out.suffix.lower() != ".npz":
        raise DataError(f"{out}: the embeddings file should end in .npz (use --ark for Kaldi ark/scp)")
    if ark is not None and Path(ark).suffix.lower() != ".ark":
        raise DataError(f"{ark}: the Kaldi output should end in .ark (its .scp is written beside it)")
    if chunk is not None and chunk <= 0:
        raise DataError(f"--chunk must be positive, got {chunk}")
    targets = [out, out.with_name(out.name + ".json")]
    if ark is not None:
        targets += [Path(ark), Path(ark).with_suffix(".scp")]
    for target in targets:
        check_output_path(target)
        target.parent.mkdir(parents=True, exist_ok=True)
    if batch_size < 1:
        raise DataError(f"--batch-size must be at least 1, got {batch_size}")


def _write_embeddings(embeddings: Any, out: Path, ark: str | Path | None) -> list[str]:
    """`out` (.npz), and `ark` + its .scp when asked for; the paths written."""
    from speakerforge.eval import embio

    outputs = []
    if ark is not None:
        scp = Path(ark).with_suffix(".scp")
        embio.write_kaldi(ark, scp, embeddings)
        outputs += [str(ark), str(scp)]
    embio.write_npz(out, embeddings)
    outputs.append(str(out))
    return outputs


def _write_stats(stats: ExtractStats, out: Path, **extra: Any) -> Path:
    """`OUT.npz.json`: the stats, the run's settings and the machine's core count."""
    from speakerforge.atomic import atomic_write_text

    path = out.with_name(out.name + ".json")
    info: dict[str, Any] = {**asdict(stats), **extra, "cpu_count": os.cpu_count()}
    atomic_write_text(path, json.dumps(info, indent=1) + "\n")
    return path


def extract_embeddings(
    model: str | Path | SpeakerModel,
    data: str | Path,
    out: str | Path,
    *,
    chunk: float | None = None,
    ark: str | Path | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    threads: int | None = None,
    workers: int | None = None,
    progress: bool = True,
    length_tolerance: float = 0.0,
    device: str = "cpu",
) -> ExtractStats:
    """Embed every utterance of `data` with `model`; write `out` (.npz), `ark` (+ .scp) and `out`.json stats.

    `threads` CPU threads (default: every core) are used as `workers` model workers (default: one per thread) of
    `threads // workers` intra-op threads each. Single-threaded workers on different utterances use the cores
    without synchronising inside each small convolution, which is faster here and degrades gracefully on a
    shared machine. (An ONNX `SpeakerModel` passed in keeps the threads its session was created with.)
    """
    from speakerforge.eval import embio

    out = Path(out)
    _check_extract_outputs(out, ark, chunk, batch_size)
    threads = int(threads or os.cpu_count() or 1)
    workers = int(workers or (threads if device == "cpu" else 1))
    intra = max(1, threads // workers)
    utts = list_utterances(data)
    sm = model if isinstance(model, SpeakerModel) else load_model(model, device=device, threads=intra)

    import torch

    torch_threads = torch.get_num_threads()
    torch.set_num_threads(intra)
    started = time.perf_counter()
    try:
        matrix, counters = embed_utterances(sm, utts, chunk, batch_size, progress, length_tolerance, workers)
    finally:
        torch.set_num_threads(torch_threads)
    outputs = _write_embeddings(embio.Embeddings([u.key for u in utts], matrix, source=str(out)), out, ark)
    elapsed = time.perf_counter() - started

    audio = counters["audio_seconds"]
    stats = ExtractStats(
        utterances=len(utts),
        audio_seconds=audio,
        processing_seconds=elapsed,
        model_seconds=counters["model_seconds"],
        rtf=elapsed / audio if audio else 0.0,
        model_rtf=counters["model_seconds"] / workers / audio if audio else 0.0,
        chunked=int(counters["chunked"]),
        model=sm.source,
        backend=sm.kind,
        embedding_dim=sm.embedding_dim,
        chunk=chunk,
        batch_size=batch_size,
        threads=threads,
        workers=workers,
        outputs=outputs,
    )
    stats_path = _write_stats(stats, out, data=str(data), length_tolerance=length_tolerance, intra_op_threads=intra)
    log.info("%s; written %s (stats in %s)", stats.summary(), ", ".join(outputs), stats_path)
    return stats
