"""Text and BPE pieces for ASR: the normalisation transcripts and metrics share, and the sentencepiece BPE a new
FunASR model learns its tokens with (`speakerforge.asr.funasr_new`), split into FunASR's `seg_dict` form.
"""

from __future__ import annotations

from collections.abc import Iterable

SPACE = "\u2581"


def normalize_text(text: str) -> str:
    """Lower case, single spaces: what vocabularies are built from and what metrics compare."""
    return " ".join(text.lower().split())


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
