"""Character vocabulary for ASR: `<blank>`, `<sos/eos>`, `<unk>`, then characters; a space is the token `▁`."""

from __future__ import annotations

from typing import Iterable

BLANK, SOS, UNK = "<blank>", "<sos/eos>", "<unk>"
SPECIALS = (BLANK, SOS, UNK)
SPACE = "\u2581"


def normalize_text(text: str) -> str:
    """Lower case, single spaces: what the character vocabulary is built from and what metrics compare."""
    return " ".join(text.lower().split())


class CharVocab:
    """Token <-> id for characters; id 0 is the CTC blank, id 1 the `<sos/eos>` token (the no-bias hotword)."""

    def __init__(self, tokens: list[str]):
        if tuple(tokens[:3]) != SPECIALS:
            raise ValueError(f"a vocabulary starts with {SPECIALS}, got {tokens[:3]}")
        self.tokens = list(tokens)
        self.index = {t: i for i, t in enumerate(self.tokens)}

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> "CharVocab":
        """Sorted characters of the normalized texts (deterministic for the same data)."""
        chars = sorted({c for t in texts for c in normalize_text(t).replace(" ", SPACE)})
        return cls([*SPECIALS, *chars])

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def blank_id(self) -> int:
        return 0

    @property
    def sos_id(self) -> int:
        return 1

    @property
    def unk_id(self) -> int:
        return 2

    def encode(self, text: str) -> list[int]:
        """Normalized text -> ids (unknown characters -> `<unk>`)."""
        return [self.index.get(c, self.unk_id) for c in normalize_text(text).replace(" ", SPACE)]

    def unknown_chars(self, text: str) -> set[str]:
        """Characters of `text` that `encode` would map to `<unk>`."""
        return {c for c in normalize_text(text).replace(" ", SPACE) if c not in self.index}

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text, special tokens dropped."""
        return "".join(self.tokens[i] for i in ids if 2 < i < len(self.tokens)).replace(SPACE, " ").strip()
