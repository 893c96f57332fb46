"""A generated English hotword corpus: sentences with invented rare names, spoken by the demo TTS voices.

Each sentence is a common-word template around one invented name (a hotword). Train, dev and test use disjoint
name sets, so the test hotwords never occur in a training sentence; the distractor lists (100 and 500 invented
names) share no name with the test hotwords. Everything depends only on `seed`; files already written are reused.
A `finetune` split (`--finetune N`, off by default) has its own names too: the user's held-out data of the
fine-tuning comparison (`recipes/asr-funasr/run.sh`). Its names are drawn after the distractors, so adding it
changes no other split. Layout of `--out DIR`: `train.jsonl`, `dev.jsonl`, `test.jsonl`, `finetune.jsonl` (FunASR
`key`/`source`/`target`), `wav/`, `{dev,test,finetune}_hotwords.txt` (one per line), `distractors_100.txt`,
`distractors_500.txt`, `corpus.json`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from speakerforge.asr.data import write_asr_jsonl
from speakerforge.atomic import atomic_write_text
from speakerforge.errors import DataError

log = logging.getLogger(__name__)

# Carrier sentences of common words around one invented name or term. Many templates, so that the words around a
# hotword are not a memorised handful; name and term templates alike (the issue asks for names and terms).
TEMPLATES = (
    "please send the report to {w} today",
    "{w} will meet us at the station",
    "we talked about {w} yesterday",
    "did you call {w} this morning",
    "i think {w} is right about this",
    "the letter from {w} came late",
    "ask {w} where the keys are",
    "my friend {w} lives near the park",
    "we should visit {w} next week",
    "the team of {w} won the game",
    "have you seen {w} since monday",
    "tell {w} that dinner is ready",
    "{w} wrote a long book about the sea",
    "her brother {w} works at the bank",
    "the new manager is called {w}",
    "we bought the house from {w}",
    "the {w} method failed again",
    "install the {w} package first",
    "the doctor gave him {w} for the pain",
    "they tested the {w} engine on friday",
    "our lab measured {w} in the water",
    "open the {w} file and check it",
    "the {w} valley is cold in winter",
    "can you spell {w} for me",
)
_ONSETS = (
    "b",
    "d",
    "f",
    "g",
    "k",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "t",
    "v",
    "z",
    "br",
    "dr",
    "kr",
    "tr",
    "st",
    "th",
    "sh",
    "gl",
    "pl",
    "qu",
)
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou", "ee")
_CODAS = ("", "", "n", "r", "l", "x", "k", "m", "s", "th")


@dataclass
class CorpusSizes:
    """Sentences and invented words per split. Every word is said `sentences / words` times, by different voices
    in different templates. Defaults: about 45 minutes of audio, built in about 20 minutes on two idle cores."""

    train: int = 1000
    dev: int = 60
    test: int = 200
    train_words: int = 500
    dev_words: int = 30
    test_words: int = 50
    speakers: int = 24
    finetune: int = 0
    finetune_words: int = 150


def invented_words(n: int, rng: np.random.Generator, avoid: set[str] = frozenset()) -> list[str]:
    """`n` distinct pronounceable invented words of 2-3 syllables."""
    out: list[str] = []
    seen = set(avoid)
    while len(out) < n:
        syll = int(rng.integers(2, 4))
        w = "".join(_ONSETS[rng.integers(len(_ONSETS))] + _VOWELS[rng.integers(len(_VOWELS))] for _ in range(syll))
        w += _CODAS[rng.integers(len(_CODAS))]
        if w not in seen and 5 <= len(w) <= 11:
            seen.add(w)
            out.append(w)
    return out


def plan_corpus(seed: int = 0, sizes: CorpusSizes | None = None) -> dict[str, Any]:
    """Sentences per split and the hotword/distractor lists (no audio)."""
    s = sizes or CorpusSizes()
    rng = np.random.default_rng([seed, 31])
    common = {w for t in TEMPLATES for w in t.split()}
    n_before = s.train_words + s.dev_words + s.test_words + 500
    words = invented_words(n_before + s.finetune_words * bool(s.finetune), rng, common)
    train_w = words[: s.train_words]
    dev_w = words[s.train_words : s.train_words + s.dev_words]
    test_w = words[s.train_words + s.dev_words : s.train_words + s.dev_words + s.test_words]
    distract = words[s.train_words + s.dev_words + s.test_words : n_before]
    finetune_w = words[n_before:]

    def sentences(split: str, vocab: list[str], n: int) -> list[dict[str, object]]:
        r = np.random.default_rng([seed, 32, ("train", "dev", "test", "finetune").index(split)])
        rows = []
        for i in range(n):
            w = vocab[i % len(vocab)]
            text = TEMPLATES[int(r.integers(len(TEMPLATES)))].format(w=w)
            rows.append(
                {"key": f"{split}{i:05d}", "target": text, "hotword": w, "speaker": int(r.integers(s.speakers))}
            )
        return rows

    return {
        "train": sentences("train", train_w, s.train),
        "dev": sentences("dev", dev_w, s.dev),
        "test": sentences("test", test_w, s.test),
        "finetune": sentences("finetune", finetune_w, s.finetune) if s.finetune else [],
        "dev_hotwords": dev_w[: s.dev],  # the words the dev sentences say (the test words never depend on --dev)
        "test_hotwords": test_w,
        "finetune_hotwords": finetune_w[: s.finetune],
        "distractors_100": distract[:100],
        "distractors_500": distract[:500],
    }


def build_hotword_corpus(
    out: str | Path, seed: int = 0, sizes: CorpusSizes | None = None, workers: int = 2, progress: bool = True
) -> Path:
    """Synthesize (or finish, or reuse) the corpus under `out`; returns the folder.

    Audio comes from the TTS voices of `speakerforge.data.corpora.tts`, in `workers` processes; the voices are a
    function of `seed`, so a rerun only synthesizes what is missing."""
    out = Path(out)
    s = sizes or CorpusSizes()
    sizes_used = {k: v for k, v in s.__dict__.items() if s.finetune or not k.startswith("finetune")}
    params = {"seed": int(seed), "sizes": sizes_used}  # a corpus without the finetune split keeps its old stamp
    stamp = out / "corpus.json"
    if stamp.is_file() and json.loads(stamp.read_text(encoding="utf-8")).get("params") != params:
        raise DataError(
            f"{out} holds a hotword corpus built with other settings ({stamp}); "
            "choose another --out or delete that folder"
        )
    (out / "wav").mkdir(parents=True, exist_ok=True)
    plan = plan_corpus(seed, s)
    for stale in (out / "wav").glob(".*.tmp"):
        stale.unlink(missing_ok=True)
    t0 = time.perf_counter()
    synthesized = _synthesize_missing(out, plan, seed, workers, progress)
    seconds = _write_lists(out, plan, s)
    stats = {
        "params": params,
        "audio_seconds": seconds,
        "build_seconds": round(time.perf_counter() - t0, 1),
        "synthesized": synthesized,
    }
    atomic_write_text(stamp, json.dumps(stats, indent=1) + "\n")
    log.info("hotword corpus in %s: %s s of audio", out, seconds)
    return out


def _synthesize_missing(out: Path, plan: dict[str, Any], seed: int, workers: int, progress: bool) -> int:
    """Give every planned row its `source` under `out/wav` and synthesize the files not there yet; their count."""
    from speakerforge.data.corpora.tts import (
        DEFAULT_ALPHA,
        DEFAULT_NOISE,
        DEFAULT_SPEED_RANGE,
        require_tts,
        run_tts_jobs,
    )

    jobs = []
    for split in ("dev", "test", "train", "finetune"):
        for row in plan[split]:
            row["source"] = str(out / "wav" / f"{row['key']}.wav")
            if not Path(row["source"]).is_file():
                jobs.append((row["source"], str(row["target"]), int(row["speaker"])))
    if jobs:
        require_tts()
        log.info("hotword corpus: %d utterances to synthesize into %s", len(jobs), out)
        voice = {
            "seed": int(seed),
            "alpha": DEFAULT_ALPHA,
            "noise": DEFAULT_NOISE,
            "speed_range": list(DEFAULT_SPEED_RANGE),
        }
        run_tts_jobs(jobs, voice, workers, progress, desc="hotword corpus")
    return len(jobs)


def _write_lists(out: Path, plan: dict[str, Any], s: CorpusSizes) -> dict[str, float]:
    """The JSONL of each split and the hotword / distractor lists; seconds of audio per split."""
    from speakerforge.data.audio import audio_info

    seconds = {}
    # --dev 0: no dev set at all; the finetune split only when asked for
    splits = ("train",) + ("dev",) * bool(s.dev) + ("test",) + ("finetune",) * bool(s.finetune)
    for split in splits:
        write_asr_jsonl(plan[split], out / f"{split}.jsonl")
        seconds[split] = round(sum(audio_info(r["source"]).duration for r in plan[split]), 1)
    lists = ("dev_hotwords",) * bool(s.dev) + ("test_hotwords", "distractors_100", "distractors_500")
    lists += ("finetune_hotwords",) * bool(s.finetune)
    for name in lists:
        atomic_write_text(out / f"{name}.txt", "".join(w + "\n" for w in plan[name]))
    return seconds
