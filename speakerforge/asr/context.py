"""Hotword biasing of CTC decoding: a context graph (a token trie of the hotword list) scored inside a CTC prefix
beam search, as WeNet and sherpa do. Needs no training, so it biases towards words that no training sentence held.

Each token that extends a match in the graph earns `score`; a match abandoned before the end of its hotword gives
its bonus back, so only completed hotwords keep theirs (with a word-boundary rule: only whole words). The search
extends each prefix with the `top_k` most likely tokens of the frame plus every token that continues its current
match: a hotword whose pieces the acoustic model ranks low can still win when the rest of the path supports it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

_NEG = -1e30


def _logadd(a: float, b: float) -> float:
    if a < b:
        a, b = b, a
    return a if b <= _NEG else a + math.log1p(math.exp(b - a))


class ContextGraph:
    """Token trie of a hotword list; node 0 is the root (no match in progress).

    With `ends_word` (is this token a word boundary: a piece that starts a word, or the space token), a hotword
    counts only as a whole word: its bonus is confirmed when the next token starts a new word or the utterance
    ends, and given back when the word goes on ("treekreek" + "rai" is not the hotword treekreek)."""

    def __init__(self, hotwords: Sequence[Sequence[int]], score: float, ends_word: Callable[[int], bool] | None = None):
        if score < 0:
            raise ValueError(f"context score must be >= 0, got {score}")
        self.score = float(score)
        self.ends_word = ends_word
        self.children: list[dict[int, int]] = [{}]
        self.is_end = [False]
        self.open = [0]  # matched tokens a failure gives back: since the last hotword on the path, or all of them
        for word in hotwords:
            node = 0
            for tok in word:
                nxt = self.children[node].get(int(tok))
                if nxt is None:
                    nxt = len(self.children)
                    self.children[node][int(tok)] = nxt
                    self.children.append({})
                    self.is_end.append(False)
                    self.open.append(0)
                node = nxt
            if word:
                self.is_end[node] = True
        for node in self._breadth_first():  # a hotword on the path locks its bonus for longer ones through it
            for tok, child in self.children[node].items():
                if ends_word is None:
                    self.open[child] = 0 if self.is_end[child] else self.open[node] + 1
                else:  # locked once the next word starts ("new" in "new york")
                    self.open[child] = 1 if self.is_end[node] and ends_word(tok) else self.open[node] + 1

    def _breadth_first(self) -> list[int]:
        order, i = [0], 0
        while i < len(order):
            order.extend(self.children[order[i]].values())
            i += 1
        return order

    def _enter(self, node: int) -> int:
        """A completed leaf hotword returns to the root, unless it waits for a word boundary."""
        return 0 if self.is_end[node] and not self.children[node] and self.ends_word is None else node

    def step(self, node: int, token: int) -> tuple[int, float]:
        """(next node, score change) when `token` follows a prefix whose match is at `node`."""
        nxt = self.children[node].get(token)
        if nxt is not None:
            return self._enter(nxt), self.score
        if self.ends_word is not None and self.is_end[node] and self.ends_word(token):
            refund = 0.0  # the hotword is a whole word: its bonus stays
        else:
            refund = -self.score * self.open[node]
        start = self.children[0].get(token)
        if start is None:
            return 0, refund
        return self._enter(start), refund + self.score

    def unfinished(self, node: int) -> float:
        """What a prefix ending with its match at `node` still has to give back (a whole hotword keeps its bonus)."""
        if self.is_end[node]:
            return 0.0
        return -self.score * self.open[node]

    def continuations(self, node: int) -> list[int]:
        return list(self.children[node])


def ctc_beam_search(
    log_probs: torch.Tensor, blank: int = 0, beam: int = 16, top_k: int = 8, graph: ContextGraph | None = None
) -> list[int]:
    """Best token sequence of `[T, V]` CTC log-probabilities by prefix beam search, biased by `graph`."""
    lp = log_probs.detach().to(torch.float64).cpu().numpy()
    k = min(top_k, lp.shape[1] - 1)
    # prefix -> [log p ending in blank, log p ending in a token, graph node, context score]
    beams: dict[tuple[int, ...], list] = {(): [0.0, _NEG, 0, 0.0]}
    for row in lp:
        top = {int(t) for t in np.argpartition(-row, k)[: k + 1]}
        nxt: dict[tuple[int, ...], list] = {}

        def entry(prefix: tuple[int, ...], node: int, bonus: float, nxt: dict = nxt) -> list:
            e = nxt.get(prefix)
            if e is None:
                e = nxt[prefix] = [_NEG, _NEG, node, bonus]
            return e

        for prefix, (pb, pnb, node, bonus) in beams.items():
            total = _logadd(pb, pnb)
            e = entry(prefix, node, bonus)
            e[0] = _logadd(e[0], total + row[blank])
            cands = top | set(graph.continuations(node)) if graph is not None else top
            for c in cands:
                if c == blank:
                    continue
                if prefix and c == prefix[-1]:  # a repeat without a blank between merges into the same token
                    e = entry(prefix, node, bonus)
                    e[1] = _logadd(e[1], pnb + row[c])
                    source = pb
                else:
                    source = total
                if source <= _NEG:
                    continue
                n2, delta = graph.step(node, c) if graph is not None else (0, 0.0)
                e = entry(prefix + (c,), n2, bonus + delta)
                e[1] = _logadd(e[1], source + row[c])
        beams = dict(sorted(nxt.items(), key=lambda kv: -(_logadd(kv[1][0], kv[1][1]) + kv[1][3]))[:beam])

    def final(v: list) -> float:
        return _logadd(v[0], v[1]) + v[3] + (graph.unfinished(v[2]) if graph is not None else 0.0)

    return list(max(beams.items(), key=lambda kv: final(kv[1]))[0])
