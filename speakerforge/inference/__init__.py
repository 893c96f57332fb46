"""Inference: one `SpeakerModel` over every saved form of a model, waveform in, embedding out.

`load_model(path)` accepts

- an experiment folder: its `model.safetensors`, else its newest readable checkpoint (with `config.yaml`);
- one of its checkpoints (`checkpoints/ckpt-*.pt`, rebuilt from the run's `config.yaml`);
- a model file (`.safetensors` written by `save_embedding_model`);
- an ONNX file written by `speakerforge export`, with or without the fbank inside the graph.

Features are computed as in training: Kaldi fbank (dither 0) and, when the model's features say so, utterance mean
normalisation.

Batching without changing results. Kaldi framing (`snip_edges`) ignores the samples after the last whole frame, so two
waveforms with the same number of frames, cut to that frame span, give feature matrices of the same shape and the
same values they give alone. `embed_batch` therefore batches only utterances with the same frame count: no padding,
which models with temporal statistics pooling would see (padding frames enter the mean and standard deviation, and
CAM++'s segment context), and no cropping. Rows then equal one-at-a-time embeddings to float rounding (batched
matrix products sum in another order: about 1e-6 relative). `length_tolerance > 0` trades exactness for larger
batches: utterances whose frame counts differ by at most that fraction are cropped (at the end) to the shortest one.

Measured (bench/extract.py, random-weight CAM++, 2 CPU cores): zero-padding a 1.0 s utterance to 1.5 s moves its
embedding by more than 100 times the batching rounding (tests/test_inference.py); cropping with a 2% tolerance moves
embeddings by up to ~0.3x the median cosine distance between different utterances, so the default is exact grouping.
On CPU, batching 16 equal-length 4 s segments saved at most ~30% CPU time over batch 1 (within the noise of a shared
machine in one of two runs); for whole-corpus speed, parallel single-threaded workers matter more (`eval.embed`).

This module holds `SpeakerModel` (inputs, batching, chunking, scoring); `backends` runs the network (torch or ONNX
Runtime) and `loading` opens each saved form.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from speakerforge.data.audio import SAMPLE_RATE, load_audio, resample
from speakerforge.data.features import FeatureSpec
from speakerforge.errors import CheckpointError, DataError
from speakerforge.inference.backends import FEATURE_DEFAULTS, OnnxBackend, feature_settings
from speakerforge.inference.loading import ONNX_META_KEY, open_model

log = logging.getLogger(__name__)

__all__ = [
    "SpeakerModel",
    "load_model",
    "FEATURE_DEFAULTS",
    "ONNX_META_KEY",
    "cosine",
    "group_by_frames",
]

DEFAULT_BATCH_SIZE = 16
# Memory bound: no forward pass sees more than this much audio in all. A longer utterance is embedded as the mean
# of the embeddings of consecutive chunks of this length (the last chunk ends at the end of the audio, overlapping
# its neighbour), and batches of shorter ones are split to stay within it. ECAPA-TDNN (512 channels) needs about
# 2.3 MB per second of audio in a forward pass, so this is ~300 MB; audio up to this length is embedded whole.
MAX_FORWARD_SECONDS = 120.0
SILENCE_PEAK = 1e-4  # -80 dBFS: below this, audio counts as silent (16-bit digital silence is +-1 LSB = 3e-5)

AudioInput = str | Path | np.ndarray | torch.Tensor


# --------------------------------------------------------------------------------------------------------------
class SpeakerModel:
    """A loaded speaker model: `embed`, `embed_batch`, `score`. Waveforms are 16 kHz mono float32 in [-1, 1]."""

    sample_rate = SAMPLE_RATE

    def __init__(
        self, backend: Any, embedding_dim: int, features: dict[str, Any], meta: dict[str, Any], source: str, kind: str
    ):
        self._backend = backend
        self.embedding_dim = int(embedding_dim)
        self.features = feature_settings(features)
        self.meta = meta
        self.source = source
        self.kind = kind  # "model_file", "checkpoint" or "onnx"
        self.spec = FeatureSpec.from_meta(self.features)
        self._min_frames: int | None = None

    @property
    def model(self) -> nn.Module | None:
        """The torch network in eval mode (None for an ONNX model)."""
        return getattr(self._backend, "model", None)

    @property
    def threshold(self) -> float | None:
        """The accept threshold stated by the model file, if any."""
        value = self.meta.get("threshold")
        return None if value is None else float(value)

    def __repr__(self) -> str:
        return f"SpeakerModel({self.source}, {self.kind}, {self.embedding_dim}-d)"

    # ---------------------------------------------------------------------------------------------- inputs
    def waveform(self, item: AudioInput, sample_rate: int | None = None) -> np.ndarray:
        """A path (loaded with `load_audio`) or an array at `sample_rate` (default 16 kHz) -> 16 kHz mono float32."""
        if isinstance(item, (str, Path)):
            return load_audio(item)
        if isinstance(item, torch.Tensor):
            item = item.detach().cpu().numpy()
        wav = np.asarray(item)
        if not np.issubdtype(wav.dtype, np.floating):
            if np.issubdtype(wav.dtype, np.integer):
                raise DataError(f"integer samples ({wav.dtype}); pass float samples in [-1, 1] (e.g. int16 / 32768)")
            raise DataError(f"cannot use an array of {wav.dtype} as audio")
        if wav.ndim == 2:  # [channels, samples] or [samples, channels]: the short axis holds the channels
            wav = wav.mean(axis=0 if wav.shape[0] <= wav.shape[1] else 1)
        if wav.ndim != 1:
            raise DataError(f"audio array of shape {wav.shape}; expected [samples] or [channels, samples]")
        if not np.isfinite(wav).all():
            raise DataError("audio array holds NaN or infinite samples")
        wav = np.ascontiguousarray(wav, dtype=np.float32)
        return resample(wav, int(sample_rate), SAMPLE_RATE) if sample_rate else wav

    def num_frames(self, num_samples: int) -> int:
        """Feature frames of a 16 kHz waveform of `num_samples` samples."""
        return self.spec.num_frames(num_samples, SAMPLE_RATE)

    def frame_span(self, frames: int) -> int:
        """Samples that `frames` frames cover (what is left after trimming the unused tail)."""
        return self.spec.frame_span(frames, SAMPLE_RATE)

    @property
    def min_frames(self) -> int:
        """The fewest feature frames the network turns into a finite embedding (probed once, on first use).

        Convolutions with reflect padding fail on inputs shorter than their padding (ECAPA: 5 frames), and
        statistics pooling over one or two frames divides by zero (NaN); the limit depends on the network, so it is
        measured on the network itself rather than declared per family, and holds for ONNX models too.
        """
        if self._min_frames is None:
            self._min_frames = self._probe_min_frames()
        return self._min_frames

    @property
    def min_samples(self) -> int:
        """The shortest 16 kHz waveform this model embeds (`min_frames` frames)."""
        return self.frame_span(self.min_frames)

    def _probe_min_frames(self, limit: int = 512) -> int:
        rng = np.random.default_rng(0)
        noise = (0.1 * rng.standard_normal(self.frame_span(limit))).astype(np.float32)

        def works(frames: int) -> bool:
            try:
                with warnings.catch_warnings():  # "degrees of freedom <= 0" is the expected failure, not news
                    warnings.simplefilter("ignore")
                    x = noise[None, : self.frame_span(frames)]
                    out = self._backend(x, quiet=True) if isinstance(self._backend, OnnxBackend) else self._backend(x)
            except Exception:  # e.g. padding larger than the input; ONNX Runtime raises its own types
                return False
            return out.shape == (1, self.embedding_dim) and bool(np.isfinite(out).all())

        if works(1):
            return 1
        bad, good = 1, 2
        while not works(good):
            if good >= limit:
                raise CheckpointError(
                    f"{self.source}: the model gives no finite embedding even for {limit} frames "
                    "of noise; is it a speaker-embedding model?"
                )
            bad, good = good, min(2 * good, limit)
        while good - bad > 1:  # the smallest working count, assuming every longer input works too
            mid = (bad + good) // 2
            bad, good = (bad, mid) if works(mid) else (mid, good)
        log.debug("%s: embeds inputs of at least %d frames", self.source, good)
        return good

    def check_input(self, wav: np.ndarray, what: str) -> None:
        """Refuse audio too short for the network, naming `what`; warn about silent audio (it still embeds)."""
        n = wav.shape[0]
        if n < self.frame_span(1):
            raise DataError(
                f"{what}: {n / SAMPLE_RATE:.3f} s of audio is shorter than one "
                f"{self.features['frame_length']:g} ms feature frame"
            )
        if n < self.min_samples:
            raise DataError(
                f"{what}: {n / SAMPLE_RATE:.3f} s of audio is shorter than the "
                f"{self.min_samples / SAMPLE_RATE:.3f} s ({self.min_frames} frames) this model needs "
                "for an embedding"
            )
        if n and float(np.max(np.abs(wav))) <= SILENCE_PEAK:
            log.warning("%s: silent audio (peak below -80 dBFS); its embedding carries no speaker information", what)

    # ---------------------------------------------------------------------------------------------- embeddings
    def embed_waves(self, waves: np.ndarray, names: Sequence[str] | None = None) -> np.ndarray:
        """`[B, T]` 16 kHz waveforms of one length -> `[B, D]` float32 (the backend call, no grouping).

        Never returns a non-finite embedding: that is a DataError naming the input (`names[i]` when given)."""
        if waves.ndim != 2:
            raise ValueError(f"expected [B, T] waveforms, got shape {waves.shape}")
        if waves.shape[1] < self.min_samples:
            who = f"{names[0]}: " if names is not None and len(names) == 1 else ""
            raise DataError(
                f"{who}{waves.shape[1] / SAMPLE_RATE:.3f} s of audio is shorter than the "
                f"{self.min_samples / SAMPLE_RATE:.3f} s this model needs for an embedding"
            )
        out = self._backend(waves)
        if out.shape != (waves.shape[0], self.embedding_dim):
            raise CheckpointError(
                f"{self.source}: the model returned shape {out.shape}, expected "
                f"({waves.shape[0]}, {self.embedding_dim})"
            )
        bad = ~np.isfinite(out).all(axis=1)
        if bad.any():
            i = int(np.argmax(bad))
            who = names[i] if names is not None else f"input {i + 1} of {waves.shape[0]}"
            raise DataError(
                f"{who}: {self.source} gave a NaN/inf embedding for this audio "
                f"({waves.shape[1] / SAMPLE_RATE:.3f} s); check the audio for extreme sample values"
            )
        return out

    def embed(self, item: AudioInput, sample_rate: int | None = None) -> np.ndarray:
        """One utterance (path or array) -> embedding `[D]` float32."""
        wav = self.waveform(item, sample_rate)
        self.check_input(wav, _describe(item))
        return self.embed_waveforms([wav], names=[_describe(item)])[0]

    def embed_batch(
        self,
        items: Sequence[AudioInput],
        sample_rate: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        length_tolerance: float = 0.0,
    ) -> np.ndarray:
        """Utterances -> `[N, D]`, rows in input order; batched by equal frame count (see the module docstring)."""
        waves = []
        for item in items:
            wav = self.waveform(item, sample_rate)
            self.check_input(wav, _describe(item))
            waves.append(wav)
        return self.embed_waveforms(
            waves, batch_size=batch_size, length_tolerance=length_tolerance, names=[_describe(item) for item in items]
        )

    def embed_waveforms(
        self,
        waves: Sequence[np.ndarray],
        batch_size: int = DEFAULT_BATCH_SIZE,
        length_tolerance: float = 0.0,
        names: Sequence[str] | None = None,
    ) -> np.ndarray:
        """16 kHz waveforms (any lengths, each at least `min_samples`) -> `[N, D]`, rows in input order.
        `names` name the waveforms in error messages."""
        out = np.empty((len(waves), self.embedding_dim), dtype=np.float32)
        limit = int(MAX_FORWARD_SECONDS * SAMPLE_RATE)
        for i, w in enumerate(waves):
            if w.shape[0] > limit:
                out[i] = self._mean_over_chunks(w, limit, None if names is None else names[i])
        whole = [i for i, w in enumerate(waves) if w.shape[0] <= limit]
        frames = [self.num_frames(waves[i].shape[0]) for i in whole]
        for group, n in group_by_frames(frames, batch_size, length_tolerance):
            idx = [whole[j] for j in group]
            span = self.frame_span(n)
            step = max(1, limit // max(1, span))  # a batch holds at most MAX_FORWARD_SECONDS of audio
            for part in (idx[k : k + step] for k in range(0, len(idx), step)):
                out[part] = self.embed_waves(
                    np.stack([waves[i][:span] for i in part]), None if names is None else [names[i] for i in part]
                )
        return out

    def _mean_over_chunks(self, wav: np.ndarray, chunk: int, name: str | None, batch_size: int = 1) -> np.ndarray:
        """Mean of the embeddings of `chunk_waveform(wav, chunk)`, at most MAX_FORWARD_SECONDS of audio a pass."""
        chunks = chunk_waveform(wav, chunk)
        span = self.frame_span(self.num_frames(chunks.shape[1]))
        per = max(1, min(batch_size, int(MAX_FORWARD_SECONDS * SAMPLE_RATE) // max(1, span)))
        who = [name or "audio"]
        embs = [
            self.embed_waves(chunks[i : i + per, :span], who * len(chunks[i : i + per]))
            for i in range(0, chunks.shape[0], per)
        ]
        return np.concatenate(embs).mean(axis=0, dtype=np.float64).astype(np.float32)

    def embed_chunked(
        self,
        item: AudioInput,
        chunk_seconds: float,
        sample_rate: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> np.ndarray:
        """Mean embedding of equal chunks of `chunk_seconds` (the last one overlaps backwards); short audio whole."""
        wav = self.waveform(item, sample_rate)
        self.check_input(wav, _describe(item))
        chunk = int(round(chunk_seconds * SAMPLE_RATE))
        if chunk < self.min_samples:
            raise DataError(
                f"chunks of {chunk_seconds:g} s are shorter than the "
                f"{self.min_samples / SAMPLE_RATE:.3f} s this model needs for an embedding"
            )
        return self._mean_over_chunks(wav, chunk, _describe(item), batch_size)

    def score(self, a: AudioInput, b: AudioInput, sample_rate: int | None = None) -> float:
        """Cosine similarity in [-1, 1]; `a` and `b` are paths, waveforms or embeddings (1-D arrays of length D)."""
        return cosine(self._as_embedding(a, sample_rate), self._as_embedding(b, sample_rate))

    def _as_embedding(self, x: AudioInput, sample_rate: int | None) -> np.ndarray:
        if isinstance(x, (np.ndarray, torch.Tensor)) and x.ndim == 1 and x.shape[0] == self.embedding_dim:
            # A waveform this short (a few dozen ms at most) could not be embedded anyway.
            return np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
        return self.embed(x, sample_rate).astype(np.float64)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two vectors, clipped to [-1, 1]; zero vectors are an error."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise DataError(f"cannot compare embeddings of dimensions {a.shape[0]} and {b.shape[0]}")
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        raise DataError("cosine score of a zero embedding is undefined")
    return float(np.clip(np.dot(a, b) / (na * nb), -1.0, 1.0))


def chunk_waveform(wav: np.ndarray, chunk: int) -> np.ndarray:
    """`[T]` -> `[n, chunk]` consecutive chunks, the last one ending at the end (overlapping its neighbour);
    audio no longer than one chunk comes back whole as `[1, T]`."""
    if chunk <= 0:
        raise DataError(f"chunk length must be positive, got {chunk} samples")
    total = wav.shape[0]
    if total <= chunk:
        return wav[None]
    n = math.ceil(total / chunk)
    starts = [i * chunk for i in range(n - 1)] + [total - chunk]
    return np.stack([wav[s : s + chunk] for s in starts])


def group_by_frames(frames: Sequence[int], batch_size: int, tolerance: float = 0.0) -> Iterable[tuple[list[int], int]]:
    """Batches `(indices, frames to use)`: equal frame counts, or with `tolerance` counts within that fraction of
    the batch's longest (all then cropped to the shortest). Longest first, at most `batch_size` each."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    order = sorted(range(len(frames)), key=lambda i: -frames[i])
    batch: list[int] = []
    for i in order:
        if batch and (len(batch) >= batch_size or frames[i] < math.ceil(frames[batch[0]] * (1.0 - tolerance))):
            yield batch, frames[batch[-1]]
            batch = []
        batch.append(i)
    if batch:
        yield batch, frames[batch[-1]]


def _describe(item: Any) -> str:
    if isinstance(item, (str, Path)):
        return str(item)
    return f"array of shape {tuple(getattr(item, 'shape', ()))}"


# --------------------------------------------------------------------------------------------------------------
# loading
def load_model(
    path: str | Path, device: str = "cpu", optimize: bool = True, threads: int | None = None
) -> SpeakerModel:
    """Load an experiment folder, checkpoint, model file or ONNX file as a `SpeakerModel` (see module docstring).

    `optimize` folds BatchNorms into convolutions (`optimize_for_inference`: same outputs, faster). `threads` sets
    the ONNX Runtime intra-op threads (torch uses `torch.set_num_threads`).
    """
    return SpeakerModel(*open_model(path, device, optimize, threads))
