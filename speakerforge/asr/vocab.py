"""ASR token vocabularies: characters (`CharVocab`) or sentencepiece BPE pieces (`PieceVocab`).

Both start with `<blank>` (the CTC blank, id 0), `<sos/eos>` (id 1, the no-bias hotword) and `<unk>` (id 2). Both
give `word_spans` (where the words of a token sequence stand), which whole-word hotword sampling and labelling use,
and `ends_word` (does a token close the word before it), which CTC hotword biasing uses. Characters spell a space
as the token `▁`; pieces carry it as the prefix of a word's first piece, as sentencepiece writes them. A model
file stores `to_meta()` and `vocab_from_meta` rebuilds the same vocabulary.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any

BLANK, SOS, UNK = "<blank>", "<sos/eos>", "<unk>"
SPECIALS = (BLANK, SOS, UNK)
SPACE = "\u2581"


def normalize_text(text: str) -> str:
    """Lower case, single spaces: what vocabularies are built from and what metrics compare."""
    return " ".join(text.lower().split())


def split_on_space(ids: list[int], space_id: int | None) -> list[tuple[int, int]]:
    """`[start, end)` of each run of tokens between `space_id` tokens (the words of a character sequence)."""
    out, start = [], 0
    for i, t in enumerate([*ids, space_id]):
        if i == len(ids) or t == space_id:
            if i > start:
                out.append((start, i))
            start = i + 1
    return out


def train_sentencepiece(texts: Iterable[str], size: int) -> bytes:
    """A BPE model of at most `size` pieces over the normalized texts (deterministic: one thread, texts in order)."""
    import io

    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([normalize_text(t) for t in texts]),
        model_writer=buf,
        vocab_size=int(size),
        model_type="bpe",
        character_coverage=1.0,
        hard_vocab_limit=False,
        unk_id=0,
        bos_id=-1,
        eos_id=-1,
        pad_id=-1,
        num_threads=1,
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    return buf.getvalue()


class PieceSplitter:
    """Splits a word into FunASR-form pieces with a sentencepiece model (`hel@@ lo`)."""

    def __init__(self, model_proto: bytes):
        import sentencepiece as spm

        self.model_proto = bytes(model_proto)
        self.sp = spm.SentencePieceProcessor(model_proto=self.model_proto)

    def __call__(self, word: str) -> list[str]:
        pieces = [p.lstrip(SPACE) for p in self.sp.encode(word.lower(), out_type=str)]
        pieces = [p for p in pieces if p]
        return [p + "@@" for p in pieces[:-1]] + pieces[-1:]

    def cores(self) -> list[str]:
        """Every piece of the model without its word-start mark, in the model's order, once."""
        out = [self.sp.id_to_piece(i).lstrip(SPACE) for i in range(self.sp.get_piece_size())]
        return list(dict.fromkeys(p for i, p in enumerate(out) if p and not self.sp.is_unknown(i)))


class _Specials:
    tokens: list[str]

    @property
    def blank_id(self) -> int:
        return 0

    @property
    def sos_id(self) -> int:
        return 1

    @property
    def unk_id(self) -> int:
        return 2

    def __len__(self) -> int:
        return len(self.tokens)

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text, special tokens dropped."""
        return "".join(self.tokens[i] for i in ids if 2 < i < len(self.tokens)).replace(SPACE, " ").strip()


class CharVocab(_Specials):
    """Token <-> id for characters."""

    def __init__(self, tokens: list[str]):
        if tuple(tokens[:3]) != SPECIALS:
            raise ValueError(f"a vocabulary starts with {SPECIALS}, got {tokens[:3]}")
        self.tokens = list(tokens)
        self.index = {t: i for i, t in enumerate(self.tokens)}

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> CharVocab:
        """Sorted characters of the normalized texts (deterministic for the same data)."""
        chars = sorted({c for t in texts for c in normalize_text(t).replace(" ", SPACE)})
        return cls([*SPECIALS, *chars])

    def encode(self, text: str) -> list[int]:
        """Normalized text -> ids (unknown characters -> `<unk>`)."""
        return [self.index.get(c, self.unk_id) for c in normalize_text(text).replace(" ", SPACE)]

    def unknown_chars(self, text: str) -> set[str]:
        """Characters of `text` that `encode` would map to `<unk>`."""
        return {c for c in normalize_text(text).replace(" ", SPACE) if c not in self.index}

    def word_spans(self, ids: list[int]) -> list[tuple[int, int]]:
        return split_on_space(ids, self.index.get(SPACE))

    def ends_word(self, token: int) -> bool:
        """Whether `token` closes the word before it (the space token)."""
        return token == self.index.get(SPACE)

    def to_meta(self) -> dict[str, Any]:
        return {"vocab": self.tokens}


class PieceVocab(_Specials):
    """Sentencepiece BPE pieces: a few acoustic units per word instead of one token per letter, so that CIF fires
    on units that last long enough to count (a letter of English TTS speech lasts about 55 ms).

    Pieces are looked up by their text, so the model's ids do not depend on sentencepiece's own numbering."""

    def __init__(self, tokens: list[str], model_proto: bytes):
        import sentencepiece as spm

        if tuple(tokens[:3]) != SPECIALS:
            raise ValueError(f"a vocabulary starts with {SPECIALS}, got {tokens[:3]}")
        self.tokens = list(tokens)
        self.index = {t: i for i, t in enumerate(self.tokens)}
        self.model_proto = bytes(model_proto)
        self.sp = spm.SentencePieceProcessor(model_proto=self.model_proto)
        self._chars = {c for t in self.tokens[3:] for c in t}

    @classmethod
    def train(cls, texts: Iterable[str], size: int) -> PieceVocab:
        import sentencepiece as spm

        proto = train_sentencepiece(texts, size)
        sp = spm.SentencePieceProcessor(model_proto=proto)
        pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size()) if not sp.is_unknown(i)]
        return cls([*SPECIALS, *pieces], proto)

    def encode(self, text: str) -> list[int]:
        """Normalized text -> piece ids (pieces outside the vocabulary -> `<unk>`)."""
        return [self.index.get(p, self.unk_id) for p in self.sp.encode(normalize_text(text), out_type=str)]

    def unknown_chars(self, text: str) -> set[str]:
        return {c for c in normalize_text(text).replace(" ", "") if c not in self._chars}

    def ends_word(self, token: int) -> bool:
        """Whether `token` closes the word before it (a piece that starts a new word)."""
        return 2 < token < len(self.tokens) and self.tokens[token].startswith(SPACE)

    def word_spans(self, ids: list[int]) -> list[tuple[int, int]]:
        starts = [i for i, t in enumerate(ids) if 2 < t < len(self.tokens) and self.tokens[t].startswith(SPACE)]
        if not starts or starts[0] != 0:
            starts.insert(0, 0)
        return [(s, e) for s, e in zip(starts, [*starts[1:], len(ids)]) if e > s]

    def to_meta(self) -> dict[str, Any]:
        return {"vocab": self.tokens, "sentencepiece": base64.b64encode(self.model_proto).decode("ascii")}


Vocab = CharVocab | PieceVocab


def vocab_from_meta(meta: dict[str, Any]) -> Vocab:
    """The vocabulary a model file was trained with (`to_meta()` of either kind)."""
    if "sentencepiece" in meta:
        return PieceVocab(meta["vocab"], base64.b64decode(meta["sentencepiece"]))
    return CharVocab(meta["vocab"])
