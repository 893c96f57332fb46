"""ASR metrics: CER/WER, hotword recall/precision/F1, and biased/unbiased WER (B-WER/U-WER).

- CER over characters with spaces removed, WER over words, both on normalized text (lower case, single spaces).
- Hotwords: per utterance and hotword, TP = min(count in reference, count in hypothesis) (whole-word occurrences);
  recall = sum TP / sum reference counts, precision = sum TP / sum hypothesis counts.
- B-WER/U-WER: one word alignment per utterance; substitutions and deletions of reference words in the biasing list,
  and insertions of words in the list, count to B-WER (over the reference words in the list); everything else to
  U-WER (over the other reference words).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from speakerforge.asr.vocab import normalize_text


def align(ref: Sequence[str], hyp: Sequence[str]) -> list[tuple[str, str | None, str | None]]:
    """Levenshtein alignment: ops `('ok'|'sub'|'del'|'ins', ref item, hyp item)` in order."""
    n, m = len(ref), len(hyp)
    d = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n + 1):
        d[i][0] = i
    for j in range(m + 1):
        d[0][j] = j
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            d[i][j] = min(d[i - 1][j - 1] + (ref[i - 1] != hyp[j - 1]), d[i - 1][j] + 1, d[i][j - 1] + 1)
    ops = []
    i, j = n, m
    while i or j:
        if i and j and d[i][j] == d[i - 1][j - 1] + (ref[i - 1] != hyp[j - 1]):
            ops.append(("ok" if ref[i - 1] == hyp[j - 1] else "sub", ref[i - 1], hyp[j - 1]))
            i, j = i - 1, j - 1
        elif i and d[i][j] == d[i - 1][j] + 1:
            ops.append(("del", ref[i - 1], None))
            i -= 1
        else:
            ops.append(("ins", None, hyp[j - 1]))
            j -= 1
    return ops[::-1]


def edit_distance(ref: Sequence[str], hyp: Sequence[str]) -> int:
    return sum(op != "ok" for op, _, _ in align(ref, hyp))


def count_occurrences(words: Sequence[str], phrase: Sequence[str]) -> int:
    """Whole-word occurrences of `phrase` in `words`."""
    k = len(phrase)
    return sum(1 for i in range(len(words) - k + 1) if list(words[i : i + k]) == list(phrase))


@dataclass
class AsrScores:
    """Running totals; `table_row()` gives percentages."""

    char_errors: int = 0
    chars: int = 0
    word_errors: int = 0
    words: int = 0
    tp: int = 0
    ref_hot: int = 0
    hyp_hot: int = 0
    b_errors: int = 0
    b_words: int = 0
    u_errors: int = 0
    u_words: int = 0
    utterances: int = 0
    extra: dict[str, float] = field(default_factory=dict)

    def add(self, ref: str, hyp: str, hotwords: Iterable[str]) -> None:
        """Score one utterance against the evaluation hotword list."""
        ref, hyp = normalize_text(ref), normalize_text(hyp)
        rw, hw = ref.split(), hyp.split()
        self.utterances += 1
        self.char_errors += edit_distance(list(ref.replace(" ", "")), list(hyp.replace(" ", "")))
        self.chars += len(ref.replace(" ", ""))
        ops = align(rw, hw)
        self.word_errors += sum(op != "ok" for op, _, _ in ops)
        self.words += len(rw)
        phrases = [normalize_text(h).split() for h in hotwords]
        phrases = [p for p in phrases if p]
        for p in phrases:
            r, h = count_occurrences(rw, p), count_occurrences(hw, p)
            self.tp += min(r, h)
            self.ref_hot += r
            self.hyp_hot += h
        bias = {w for p in phrases for w in p}
        for op, r, h in ops:
            if op == "ins":
                if h in bias:
                    self.b_errors += 1
                else:
                    self.u_errors += 1
            elif op != "ok":
                if r in bias:
                    self.b_errors += 1
                else:
                    self.u_errors += 1
        self.b_words += sum(w in bias for w in rw)
        self.u_words += sum(w not in bias for w in rw)

    def result(self) -> dict[str, float]:
        def pct(a: int, b: int) -> float:
            return 100.0 * a / b if b else 0.0

        recall, precision = pct(self.tp, self.ref_hot), pct(self.tp, self.hyp_hot)
        f1 = 2 * recall * precision / (recall + precision) if recall + precision else 0.0
        return {
            "cer": pct(self.char_errors, self.chars),
            "wer": pct(self.word_errors, self.words),
            "recall": recall,
            "precision": precision,
            "f1": f1,
            "b_wer": pct(self.b_errors, self.b_words),
            "u_wer": pct(self.u_errors, self.u_words),
        }


def score_corpus(refs: Sequence[str], hyps: Sequence[str], hotwords: Sequence[str]) -> dict[str, float]:
    """All metrics of a corpus (percentages)."""
    s = AsrScores()
    for r, h in zip(refs, hyps, strict=True):
        s.add(r, h, hotwords)
    return s.result()


def format_table(rows: dict[str, dict[str, float]]) -> str:
    """One line per condition: CER, WER, recall, precision, F1, B-WER, U-WER."""
    cols = ("cer", "wer", "recall", "precision", "f1", "b_wer", "u_wer")
    width = max(len(k) for k in rows) if rows else 10
    head = f"{'condition':<{width}}  " + "  ".join(f"{c.upper():>9}" for c in cols)
    lines = [head] + [f"{k:<{width}}  " + "  ".join(f"{v[c]:9.2f}" for c in cols) for k, v in rows.items()]
    return "\n".join(lines)
