"""Hotword sampling as FunASR: rates, span lengths, exact redraw from (seed, epoch, position), batch labels."""

import numpy as np
import torch

from speakerforge.asr.data import HotwordSampling, hotword_batch, sample_spans


def test_span_rates_and_lengths_follow_funasr_defaults():
    toks = list(range(3, 23))
    counts = [len(sample_spans(toks, np.random.default_rng([0, i]), HotwordSampling())) for i in range(4000)]
    frac = np.bincount(counts, minlength=3) / len(counts)
    assert abs(frac[0] - 0.25) < 0.03 and abs(frac[2] - 0.10) < 0.02
    spans = [s for i in range(500) for s in sample_spans(toks, np.random.default_rng([1, i]), HotwordSampling())]
    assert all(2 <= e - s <= 8 for s, e in spans)


def test_same_seed_epoch_position_draws_the_same_spans():
    toks = list(range(3, 40))
    a = [sample_spans(toks, np.random.default_rng([7, 17, 0, 3, p]), HotwordSampling()) for p in range(50)]
    b = [sample_spans(toks, np.random.default_rng([7, 17, 0, 3, p]), HotwordSampling()) for p in range(50)]
    c = [sample_spans(toks, np.random.default_rng([7, 17, 0, 4, p]), HotwordSampling()) for p in range(50)]
    assert a == b and a != c


def test_word_spans_are_whole_words():
    space = 9
    toks = [3, 4, space, 5, 6, 7, space, 8]
    for i in range(50):
        for s, e in sample_spans(
            toks,
            np.random.default_rng(i),
            HotwordSampling(prob=1.0, span_unit="word"),
            lambda t: [(0, 2), (3, 6), (7, 8)],  # the words between the `space` tokens
        ):
            assert (s, e) in {(0, 2), (3, 6)}


def test_batch_shares_one_list_ending_with_no_bias_and_labels_only_own_spans():
    hb = hotword_batch([[3, 4, 5, 6], [7, 8, 9]], [[(1, 3)], []], no_bias_id=20, sos_id=1)
    assert hb["hotwords"].tolist() == [[4, 5], [1, 0]]
    assert hb["hotword_lengths"].tolist() == [2, 1]
    assert torch.equal(hb["hotword_labels"], torch.tensor([[20, 4, 5, 20], [20, 20, 20, -1]]))


def test_distractors_join_the_list_unlabelled_after_the_spans():
    hb = hotword_batch(
        [[3, 4, 5, 6], [7, 8, 9]], [[(1, 3)], []], no_bias_id=20, sos_id=1, distractors=[[8, 9, 9], [4, 5]]
    )
    assert hb["hotwords"].tolist() == [[4, 5, 0], [8, 9, 9], [4, 5, 0], [1, 0, 0]]  # in order, as FunASR's
    assert torch.equal(hb["hotword_labels"], torch.tensor([[20, 4, 5, 20], [20, 20, 20, -1]]))


def test_dataset_draws_distractors_from_other_transcripts_reproducibly(tmp_path):
    from speakerforge.asr.data import AsrDataset, load_asr_sources
    from speakerforge.asr.funasr_new import learn_tokens
    from speakerforge.data.sampling import Draw
    from tests.asr.helpers import write_tone_corpus

    texts = ["ab cd", "bad cab", "dab ace", "bed cade"]
    sources = load_asr_sources([(str(write_tone_corpus(tmp_path, texts)), 1.0, "")])
    vocab = learn_tokens(texts, 30)
    words = {w for t in texts for w in t.split()}
    sampling = HotwordSampling(span_unit="word", min_len=1, distractors=3)
    ds = AsrDataset(sources, vocab, seed=5, stage=0, sampling=sampling)
    item = ds[(2, Draw(0, 1, 6))]
    assert len(item["distractors"]) == 3
    assert all(vocab.to_text(d) in words for d in item["distractors"])
    assert item["distractors"] == ds[(2, Draw(0, 1, 6))]["distractors"]
    assert AsrDataset(sources, vocab, 5, 0, HotwordSampling(span_unit="word"))[(2, Draw(0, 1, 6))]["distractors"] == []


def test_only_an_utterances_own_spans_are_labelled_and_repeats_stay_in_the_list_as_funasr():
    a, b = [3, 4, 9, 5, 6], [5, 6, 9, 7, 5, 6]  # "5 6" is in both; only a drew it
    hb = hotword_batch([a, b], [[(3, 5)], [(0, 2)]], no_bias_id=20, sos_id=1)
    assert hb["hotwords"].tolist() == [[5, 6], [5, 6], [1, 0]]  # FunASR's collator keeps the repeat
    assert torch.equal(hb["hotword_labels"], torch.tensor([[20, 20, 20, 5, 6, -1], [5, 6, 20, 20, 20, 20]]))


def test_rare_power_draws_the_rare_word_of_a_sentence_most_of_the_time(tmp_path):
    from speakerforge.asr.data import AsrDataset, load_asr_sources
    from speakerforge.asr.funasr_new import learn_tokens
    from speakerforge.data.sampling import Draw
    from tests.asr.helpers import write_tone_corpus

    texts = [f"see the {name} now" for name in ("bob", "deb", "cac", "fef", "gig", "hoh")]
    sources = load_asr_sources([(str(write_tone_corpus(tmp_path, texts)), 1.0, "")])
    vocab = learn_tokens(texts, 30)

    def drawn(power: float) -> float:
        ds = AsrDataset(
            sources,
            vocab,
            3,
            0,
            HotwordSampling(prob=1.0, double_prob=0.0, span_unit="word", min_len=1, rare_power=power),
        )
        words = []
        for pos in range(300):
            item = ds[(0, Draw(0, pos % len(texts), pos))]
            words += [vocab.to_text(item["tokens"][s:e]) for s, e in item["spans"]]
        return sum(w not in ("see", "the", "now") for w in words) / len(words)

    assert abs(drawn(0.0) - 0.25) < 0.08  # uniform over the 4 words (FunASR)
    assert drawn(1.0) > 0.6  # the name weighs 1, each common word 1/6
