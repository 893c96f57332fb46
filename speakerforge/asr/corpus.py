"""A generated English hotword corpus: sentences with invented rare names, spoken by the demo TTS voices.

Each sentence is a common-word template around one invented name (a hotword). Train, dev and test use disjoint
name sets, so the test hotwords never occur in a training sentence; the distractor lists (100 and 500 invented
names) share no name with the test hotwords. Everything depends only on `seed`; files already written are reused.
Layout of `--out DIR`: `train.jsonl`, `dev.jsonl`, `test.jsonl` (FunASR `key`/`source`/`target`), `wav/`,
`{dev,test}_hotwords.txt` (one per line), `distractors_100.txt`, `distractors_500.txt`, `corpus.json`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from speakerforge.asr.data import write_asr_jsonl
from speakerforge.checkpoint_io import atomic_write_text

log = logging.getLogger(__name__)

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
)
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "tr", "st", "th",
           "sh", "gl", "pl", "qu")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou", "ee")
_CODAS = ("", "", "n", "r", "l", "x", "k", "m", "s", "th")


@dataclass
class CorpusSizes:
    train: int = 240
    dev: int = 20
    test: int = 40
    train_words: int = 60
    dev_words: int = 10
    test_words: int = 20
    speakers: int = 8


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


def plan_corpus(seed: int = 0, sizes: CorpusSizes | None = None) -> dict[str, object]:
    """Sentences per split and the hotword/distractor lists (no audio)."""
    s = sizes or CorpusSizes()
    rng = np.random.default_rng([seed, 31])
    common = {w for t in TEMPLATES for w in t.split()}
    words = invented_words(s.train_words + s.dev_words + s.test_words + 500, rng, common)
    train_w = words[: s.train_words]
    dev_w = words[s.train_words: s.train_words + s.dev_words]
    test_w = words[s.train_words + s.dev_words: s.train_words + s.dev_words + s.test_words]
    distract = words[s.train_words + s.dev_words + s.test_words:]

    def sentences(split: str, vocab: list[str], n: int) -> list[dict[str, object]]:
        r = np.random.default_rng([seed, 32, ("train", "dev", "test").index(split)])
        rows = []
        for i in range(n):
            w = vocab[i % len(vocab)]
            text = TEMPLATES[int(r.integers(len(TEMPLATES)))].format(w=w)
            rows.append({"key": f"{split}{i:05d}", "target": text, "hotword": w, "speaker": int(r.integers(s.speakers))})
        return rows

    return {"train": sentences("train", train_w, s.train), "dev": sentences("dev", dev_w, s.dev),
            "test": sentences("test", test_w, s.test), "dev_hotwords": dev_w, "test_hotwords": test_w,
            "distractors_100": distract[:100], "distractors_500": distract[:500]}


def build_hotword_corpus(out: str | Path, seed: int = 0, sizes: CorpusSizes | None = None,
                         tts_threads: int = 1) -> Path:
    """Synthesize (or reuse) the corpus under `out`; returns the folder."""
    from speakerforge.data.audio import save_audio
    from speakerforge.data.corpora.demo import load_tts, make_speakers, synthesize

    out = Path(out)
    (out / "wav").mkdir(parents=True, exist_ok=True)
    s = sizes or CorpusSizes()
    plan = plan_corpus(seed, s)
    speakers = make_speakers(s.speakers, seed)
    load_tts(threads=tts_threads)
    for split in ("dev", "test", "train"):
        rows = plan[split]
        for row in tqdm(rows, desc=f"synthesizing {split}", mininterval=2):
            path = out / "wav" / f"{row['key']}.wav"
            if not path.is_file():
                spk = speakers[row["speaker"]]
                tmp = path.with_suffix(".tmp.wav")
                save_audio(tmp, synthesize(str(row["target"]), spk.style, spk.speed))
                tmp.replace(path)
            row["source"] = str(path)
        write_asr_jsonl(rows, out / f"{split}.jsonl")
    for name in ("dev_hotwords", "test_hotwords", "distractors_100", "distractors_500"):
        atomic_write_text(out / f"{name}.txt", "".join(w + "\n" for w in plan[name]))
    atomic_write_text(out / "corpus.json", json.dumps({"seed": seed, "sizes": s.__dict__}, indent=1) + "\n")
    log.info("hotword corpus in %s", out)
    return out
