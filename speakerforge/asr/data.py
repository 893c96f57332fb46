"""ASR training data: FunASR JSONL (`key`, `source`, `target`) and hotword examples drawn from the transcripts.

Hotwords are sampled as FunASR does: per utterance, with probability 0.75 one random span of 2-8 tokens (0.1 of the
time two spans); the batch shares one hotword list (every span of the batch, so each utterance's spans are the
others' distractors) with the no-bias entry appended; the hotword label of a token is the token itself inside one of
its utterance's spans and `<no_bias>` elsewhere. The draw of an utterance is a pure function of (seed, stage, epoch,
position in the epoch), so a resumed run draws the same hotwords.
`span_unit: word` draws whole words (of at least `min_len` tokens) instead of token spans: the natural unit for names
(the tokens say where words stand: a piece ending in `@@` joins the next one). A row's own `hotwords` (FunASR #2486)
join the drawn spans (`listed`).
`distractors: N` adds N spans of other random transcripts per utterance to the batch list (unlabelled), so that
training lists are nearer the length of real ones (tens of entries, not a batch's few).
`rare_power: p` draws a word with weight (its count in the training transcripts)^-p: hotwords are rare words, and
on a corpus whose common words recur in every sentence, uniform draws teach the branch to look up those few words
instead of copying any word of the list.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from speakerforge.data.audio import AUDIO_SUFFIXES, find_audio_files, load_audio
from speakerforge.data.manifest import Utterance
from speakerforge.data.sampling import Draw, Source
from speakerforge.errors import DataError


@dataclass(frozen=True)
class AsrUtterance(Utterance):
    """A manifest row with its transcript."""

    text: str = ""
    hotwords: tuple[str, ...] = ()  # the row's own training hotwords (JSONL `hotwords`), FunASR #2486


@dataclass
class HotwordSampling:
    """How training hotwords are drawn (FunASR's defaults)."""

    prob: float = 0.75  # at least one span
    double_prob: float = 0.1  # two spans
    min_len: int = 2
    max_len: int = 8
    span_unit: str = "token"  # token | word
    distractors: int = 0  # per utterance: extra list entries drawn from other transcripts (not in FunASR)
    rare_power: float = 0.0  # word spans drawn with weight count^-rare_power (0: uniform, as FunASR)
    # a row's own hotwords (JSONL `hotwords`, FunASR #2486): add (to the drawn spans), only (instead of them, in
    # rows that list some) or off. A listed hotword its transcript does not say joins the batch list as a distractor.
    listed: str = "add"


def read_asr_jsonl(path: str | Path, need_target: bool = True) -> list[AsrUtterance]:
    """FunASR JSONL: `{"key", "source", "target"}` per line (`source_len`, `target_len` optional, unused), and
    optionally the row's own training hotwords, `"hotwords"`: a list of strings or one space-separated string."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{path}: ASR data file not found")
    out = []
    for line, text in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{line}: bad JSON ({exc.msg})") from None
        fields = ("key", "source", "target") if need_target else ("key", "source")
        missing = [k for k in fields if not isinstance(obj, dict) or not isinstance(obj.get(k), str)]
        if missing:
            raise DataError(
                f"{path}:{line}: missing field(s) {', '.join(missing)}; each line needs "
                '{"key": ..., "source": AUDIO, "target": TEXT}'
            )
        audio = Path(obj["source"])
        if not audio.is_absolute():
            audio = p.parent / audio
        text = obj.get("target") if isinstance(obj.get("target"), str) else ""
        hotwords = obj.get("hotwords", [])
        if isinstance(hotwords, str):
            hotwords = hotwords.split()
        if not isinstance(hotwords, list) or not all(isinstance(h, str) and h.strip() for h in hotwords):
            raise DataError(f'{path}:{line}: "hotwords" is a list of hotword strings (or one space-separated string)')
        out.append(
            AsrUtterance(obj["key"], str(audio), None, source=str(path), line=line, text=text, hotwords=tuple(hotwords))
        )
    if not out:
        raise DataError(f"{path}: holds no utterances")
    return out


def read_decode_inputs(items: list[str | Path]) -> list[AsrUtterance]:
    """What `asr decode --data` takes: FunASR JSONL lists (`target` optional), audio files, and folders of audio
    files (keys: the path below the folder, without suffix), recognised by content, not by extension."""
    from speakerforge.artifacts import sniff

    out: list[AsrUtterance] = []
    for item in items:
        p = Path(item)
        if not p.exists():
            raise DataError(f"{item}: not found (expected a JSONL list, an audio file or a folder of audio files)")
        if p.is_dir():
            files = find_audio_files(p)
            if not files:
                raise DataError(f"{p}: no audio files ({', '.join(AUDIO_SUFFIXES)}) in this folder")
            out += [
                AsrUtterance(f.relative_to(p).with_suffix("").as_posix(), str(f), None, source=str(p)) for f in files
            ]
            continue
        art = sniff(p)
        if art.kind == "audio" or (art.kind == "unknown" and p.suffix.lower() in AUDIO_SUFFIXES):
            out.append(AsrUtterance(p.stem, str(p), None, source=str(p)))
        elif art.kind == "text":
            out += read_asr_jsonl(p, need_target=False)
        else:
            raise DataError(f"{p}: {art.describe()}, not a JSONL list or an audio file")
    keys: dict[str, str] = {}
    for u in out:
        if u.key in keys:
            raise DataError(f"{u.source}: key {u.key!r} also comes from {keys[u.key]}; keys must be unique")
        keys[u.key] = u.source or ""
    return out


def write_asr_jsonl(rows: list[dict[str, Any]], path: str | Path) -> None:
    """Write `{"key", "source", "target"}` rows (paths relative to the file's folder when inside it)."""
    from speakerforge.atomic import atomic_write_text

    p = Path(path)
    lines = []
    for r in rows:
        src = Path(r["source"])
        try:
            src = src.resolve().relative_to(p.parent.resolve())
        except ValueError:
            pass
        lines.append(json.dumps({"key": r["key"], "source": str(src), "target": r["target"]}, ensure_ascii=False))
    atomic_write_text(p, "".join(x + "\n" for x in lines))


def load_asr_sources(specs: list[tuple[str, float, str]]) -> list[Source]:
    """`(path, weight, name)` -> sources of `AsrUtterance`s for the shared sampler."""
    out, names = [], set()
    for path, weight, name in specs:
        base = name or Path(path).stem
        unique, k = base, 2
        while unique in names:
            unique, k = f"{base}{k}", k + 1
        names.add(unique)
        out.append(Source(unique, str(path), float(weight), read_asr_jsonl(path)))
    return out


WordSpans = Callable[[list[int]], list[tuple[int, int]]]  # token ids -> [start, end) of each word


def sample_spans(
    tokens: list[int],
    rng: np.random.Generator,
    cfg: HotwordSampling,
    word_spans: WordSpans | None = None,
    word_counts: dict[tuple[int, ...], int] | None = None,
) -> list[tuple[int, int]]:
    """`[start, end)` hotword spans of one utterance (none, one or two, never overlapping); `word_spans` is the
    vocabulary's word splitter, needed by `span_unit: word`."""
    r = rng.random()
    want = 2 if r < cfg.double_prob else 1 if r < cfg.prob else 0
    if want == 0:
        return []
    if cfg.span_unit == "word":
        if word_spans is None:
            raise ValueError("span_unit 'word' needs the vocabulary's word splitter")
        candidates = [(s, e) for s, e in word_spans(tokens) if e - s >= cfg.min_len]
    else:
        candidates = None
    spans: list[tuple[int, int]] = []
    for _ in range(want * 4):  # a few tries to place a second non-overlapping span
        if len(spans) == want:
            break
        if candidates is not None:
            if not candidates:
                break
            if word_counts is not None and cfg.rare_power > 0:
                w = np.array([word_counts.get(tuple(tokens[a:b]), 1) for a, b in candidates], dtype=np.float64)
                w = w**-cfg.rare_power
                s, e = candidates[int(rng.choice(len(candidates), p=w / w.sum()))]
            else:
                s, e = candidates[int(rng.integers(len(candidates)))]
        else:
            n = len(tokens)
            if n < cfg.min_len:
                break
            length = int(rng.integers(cfg.min_len, min(cfg.max_len, n) + 1))
            s = int(rng.integers(0, n - length + 1))
            e = s + length
        if _clear_of(s, e, spans):
            spans.append((s, e))
    return sorted(spans)


def _clear_of(start: int, end: int, spans: list[tuple[int, int]]) -> bool:
    """Whether `[start, end)` overlaps none of `spans`."""
    return all(end <= a or start >= b for a, b in spans)


def listed_spans(
    tokens: list[int], hotwords: list[list[int]], words: list[tuple[int, int]] | None = None
) -> tuple[list[tuple[int, int]], list[list[int]]]:
    """(`[start, end)` of the first place each listed hotword stands in `tokens` (as whole words when `words`, the
    transcript's word spans, is given), not overlapping an earlier one; the listed hotwords it does not say)."""
    starts = {a for a, _ in words} if words is not None else None
    ends = {b for _, b in words} if words is not None else None
    spans: list[tuple[int, int]] = []
    unsaid: list[list[int]] = []
    for h in hotwords:
        n = len(h)
        at = next(
            (
                i
                for i in range(len(tokens) - n + 1)
                if tokens[i : i + n] == h
                and (starts is None or (i in starts and i + n in ends))  # type: ignore[operator]
                and _clear_of(i, i + n, spans)
            ),
            None,
        )
        if n and at is not None:
            spans.append((at, at + n))
        elif n:
            unsaid.append(h)
    return sorted(spans), unsaid


class Tokenizer(Protocol):
    """What the dataset needs of the tokens (`FunasrTokens`)."""

    def encode(self, text: str) -> list[int]: ...

    def word_spans(self, ids: list[int]) -> list[tuple[int, int]]: ...


class AsrDataset(torch.utils.data.Dataset):
    """Items `(epoch, Draw)` -> waveform, token ids and this epoch's hotword spans."""

    def __init__(self, sources: list[Source], vocab: Tokenizer, seed: int, stage: int, sampling: HotwordSampling):
        self.sources = sources
        self.vocab = vocab
        self.seed, self.stage = int(seed), int(stage)
        self.sampling = sampling
        self.word_spans = vocab.word_spans if sampling.span_unit == "word" else None
        self._one_span = dataclasses.replace(sampling, prob=1.0, double_prob=0.0)  # for distractors
        self.word_counts: dict[tuple[int, ...], int] | None = None
        if sampling.rare_power > 0 and self.word_spans is not None:
            self.word_counts = {}
            for src in sources:
                for utt in src.utts:
                    toks = vocab.encode(utt.text)
                    for a, b in self.word_spans(toks):
                        key = tuple(toks[a:b])
                        self.word_counts[key] = self.word_counts.get(key, 0) + 1

    def __len__(self) -> int:
        return sum(len(s.utts) for s in self.sources)

    def __getitem__(self, item: tuple[int, Draw]) -> dict[str, Any]:
        epoch, d = item
        u = self.sources[d.source].utts[d.item]
        tokens = self.vocab.encode(u.text)
        if not tokens:
            raise DataError(f"{u.where}: empty transcript")
        rng = np.random.default_rng([self.seed, 17, self.stage, epoch, d.position])
        spans = sample_spans(tokens, rng, self.sampling, self.word_spans, self.word_counts)
        distractors = [self._random_span(rng) for _ in range(self.sampling.distractors)]
        if u.hotwords and self.sampling.listed != "off":
            listed, unsaid = listed_spans(
                tokens, [self.vocab.encode(h) for h in u.hotwords], self.vocab.word_spans(tokens)
            )
            if self.sampling.listed == "only":
                spans = listed
            else:  # drawn spans that overlap a listed one give way to it
                spans = sorted([*listed, *(sp for sp in spans if _clear_of(*sp, listed))])
            distractors += unsaid
        wav = load_audio(u.path, u.start, u.end)
        return {
            "key": u.key,
            "uid": (d.source, d.item),
            "wav": torch.from_numpy(wav),
            "tokens": tokens,
            "spans": spans,
            "distractors": [d for d in distractors if d],
        }

    def _random_span(self, rng: np.random.Generator) -> list[int]:
        """One span (token or word, as the sampling says) of a random transcript; [] when it has none."""
        src = self.sources[int(rng.integers(len(self.sources)))]
        tokens = self.vocab.encode(src.utts[int(rng.integers(len(src.utts)))].text)
        spans = sample_spans(tokens, rng, self._one_span, self.word_spans, self.word_counts)
        return tokens[spans[0][0] : spans[0][1]] if spans else []


def hotword_batch(
    token_lists: list[list[int]],
    span_lists: list[list[tuple[int, int]]],
    no_bias_id: int,
    sos_id: int,
    distractors: list[list[int]] = (),
) -> dict[str, torch.Tensor]:
    """The batch's hotword list and per-token labels as FunASR's `AudioDatasetHotword.collator` makes them: every
    span in batch order (repeats kept), then the distractors, then the no-bias entry `[sos]`; a token is labelled
    with itself inside its own utterance's spans, `NO_BIAS` elsewhere, -1 past the end."""
    entries = [t[s:e] for t, spans in zip(token_lists, span_lists) for s, e in spans]
    entries += [list(d) for d in distractors] + [[sos_id]]
    lengths = torch.tensor([len(w) for w in entries])
    hot = torch.zeros(len(entries), int(lengths.max()), dtype=torch.long)
    for i, w in enumerate(entries):
        hot[i, : len(w)] = torch.tensor(w)
    n = max(len(t) for t in token_lists)
    labels = torch.full((len(token_lists), n), -1, dtype=torch.long)
    for i, (toks, spans) in enumerate(zip(token_lists, span_lists)):
        labels[i, : len(toks)] = no_bias_id
        for s, e in spans:
            labels[i, s:e] = torch.tensor(toks[s:e])
    return {"hotwords": hot, "hotword_lengths": lengths, "hotword_labels": labels}


def make_collate(no_bias_id: int, sos_id: int) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    """The batch builder: padded waveforms and targets (-1), and FunASR's hotword list and labels."""
    return _Collate(no_bias_id, sos_id)


class _Collate:
    def __init__(self, no_bias_id: int, sos_id: int):
        self.no_bias_id, self.sos_id = no_bias_id, sos_id

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        wav_lengths = torch.tensor([len(it["wav"]) for it in items])
        wav = torch.zeros(len(items), int(wav_lengths.max()))
        for i, it in enumerate(items):
            wav[i, : len(it["wav"])] = it["wav"]
        toks = [it["tokens"] for it in items]
        target_lengths = torch.tensor([len(t) for t in toks])
        targets = torch.full((len(items), int(target_lengths.max())), -1, dtype=torch.long)
        for i, t in enumerate(toks):
            targets[i, : len(t)] = torch.tensor(t)
        batch = {
            "keys": [it["key"] for it in items],
            "uids": [it.get("uid") for it in items],
            "wav": wav,
            "wav_lengths": wav_lengths,
            "targets": targets,
            "target_lengths": target_lengths,
        }
        extra = [d for it in items for d in it.get("distractors", ())]
        batch.update(hotword_batch(toks, [it["spans"] for it in items], self.no_bias_id, self.sos_id, extra))
        return batch


def pad_features(feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """List of `[T_i, F]` -> (`[B, T, F]` zero-padded, lengths `[B]`)."""
    lengths = torch.tensor([f.shape[0] for f in feats])
    out = feats[0].new_zeros(len(feats), int(lengths.max()), feats[0].shape[1])
    for i, f in enumerate(feats):
        out[i, : f.shape[0]] = f
    return out, lengths
