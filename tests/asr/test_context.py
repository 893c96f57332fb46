"""CTC hotword biasing: the context graph's bonus rules and the prefix beam search with and without a list."""

from __future__ import annotations

import math

import pytest
import torch

from speakerforge.asr.context import ContextGraph, ctc_beam_search

BLANK = 0


def posteriors(frames: list[dict[int, float]], vocab: int = 8) -> torch.Tensor:
    """`[T, V]` log-probabilities from per-frame {token: prob}; the rest of each frame spread over other tokens."""
    out = torch.full((len(frames), vocab), 0.0)
    for t, probs in enumerate(frames):
        rest = (1.0 - sum(probs.values())) / (vocab - len(probs))
        for v in range(vocab):
            out[t, v] = probs.get(v, rest)
    return out.log()


def test_completed_hotwords_keep_their_bonus_and_abandoned_matches_give_it_back():
    g = ContextGraph([[3, 4, 5], [3, 4]], score=2.0)
    node, total = 0, 0.0
    for tok in (3, 4):
        node, d = g.step(node, tok)
        total += d
    assert total == 4.0 and g.unfinished(node) == 0.0  # [3, 4] is complete: nothing to give back
    node2, d = g.step(node, 6)  # leaves [3, 4, 5] after the complete [3, 4]
    assert node2 == 0 and d == 0.0
    node, total = 0, 0.0
    for tok in (4, 6):  # not a hotword start, then nothing
        node, d = g.step(node, tok)
        total += d
    assert total == 0.0
    g = ContextGraph([[3, 4, 5]], score=2.0)
    node, d1 = g.step(0, 3)
    node, d2 = g.step(node, 4)
    assert d1 + d2 == 4.0 and g.unfinished(node) == -4.0
    node, d3 = g.step(node, 3)  # fails, gives 4 back, and starts a new match with 3
    assert d3 == -4.0 + 2.0 and node != 0
    with pytest.raises(ValueError):
        ContextGraph([[3]], score=-1.0)


def test_without_a_list_the_beam_search_finds_the_collapsed_best_path():
    lp = posteriors([{3: 0.9}, {3: 0.9}, {BLANK: 0.9}, {3: 0.9}, {5: 0.8}, {BLANK: 0.9}, {6: 0.9}])
    assert ctc_beam_search(lp, BLANK) == [3, 3, 5, 6]  # a blank separates the two 3s


def test_a_listed_word_the_acoustics_rank_second_wins_and_an_unlisted_one_does_not_appear():
    # the audio favours 6 7 a little over the hotword 4 5 at frames 2-3
    frames = [{3: 0.9}, {BLANK: 0.9}, {6: 0.5, 4: 0.4}, {7: 0.5, 5: 0.4}, {BLANK: 0.9}]
    lp = posteriors(frames)
    assert ctc_beam_search(lp, BLANK) == [3, 6, 7]
    assert ctc_beam_search(lp, BLANK, graph=ContextGraph([[4, 5]], score=1.0)) == [3, 4, 5]
    assert ctc_beam_search(lp, BLANK, graph=ContextGraph([[2, 1]], score=1.0)) == [3, 6, 7]
    # half a hotword is not kept: its bonus is given back, so the acoustically better 6 7 stays
    frames[3] = {7: 0.9}
    assert ctc_beam_search(posteriors(frames), BLANK, graph=ContextGraph([[4, 5]], score=1.0)) == [3, 6, 7]


def test_a_hotword_token_outside_the_frame_top_k_is_still_reachable():
    """The continuations of a match are tried whatever their rank, as sherpa's context graph does."""
    frames = [{4: 0.6}, {BLANK: 0.2, 1: 0.2, 2: 0.2, 3: 0.18, 5: 0.15}, {BLANK: 0.9}]
    lp = posteriors(frames)
    assert 5 not in lp[1].topk(2).indices.tolist()
    assert ctc_beam_search(lp, BLANK, top_k=1, graph=ContextGraph([[4, 5]], score=3.0)) == [4, 5]
    assert math.isfinite(float(lp.sum()))


def test_with_a_word_boundary_rule_only_whole_words_keep_their_bonus():
    """Pieces 10-19 start a word (like BPE's `▁` pieces), others continue one: hotwords [10, 4] and the two-word
    [10, 4, 11]."""
    starts = lambda t: 10 <= t < 20  # noqa: E731
    g = ContextGraph([[10, 4], [10, 4, 11]], score=2.0, ends_word=starts)

    def walk(tokens):
        node, total = 0, 0.0
        for t in tokens:
            node, d = g.step(node, t)
            total += d
        return total + g.unfinished(node)

    assert walk([10, 4]) == 4.0  # the utterance ends: a whole word
    assert walk([10, 4, 12]) == 4.0  # the next word starts: kept
    assert walk([10, 4, 5]) == 0.0  # the word goes on: not the hotword, all given back
    assert walk([10, 4, 11]) == 6.0  # the two-word hotword
    assert walk([10, 4, 11, 5]) == 4.0  # its second word goes on: only the first hotword stays
    no_rule = ContextGraph([[10, 4]], score=2.0)
    node, d1 = no_rule.step(0, 10)
    node, d2 = no_rule.step(node, 4)
    assert d1 + d2 + no_rule.step(node, 5)[1] == 4.0  # without the rule a completed match is kept as it was
