"""ASR metrics on hand-computed examples."""

import pytest

from speakerforge.asr.metrics import align, format_table, score_corpus


def test_alignment_counts_substitution_deletion_insertion():
    ops = align("a b c d".split(), "a x c d e".split())
    assert [op for op, _, _ in ops] == ["ok", "sub", "ok", "ok", "ins"]


def test_cer_and_wer_by_hand():
    # ref words: call zorvik now (3), hyp: call zorvic now now -> 1 sub + 1 ins = 2/3 WER
    # chars (no spaces): callzorviknow (13) vs callzorvicnownow: k->c sub, +now (3 ins) = 4/13
    r = score_corpus(["Call Zorvik now"], ["call zorvic now now"], ["zorvik"])
    assert r["wer"] == pytest.approx(200 / 3)
    assert r["cer"] == pytest.approx(400 / 13)


def test_hotword_tp_is_min_of_counts_per_utterance():
    refs = ["zorvik met zorvik", "ask talmera", "nothing here"]
    hyps = ["zorvik met sorvik", "ask talmera talmera", "talmera here"]
    # zorvik: ref 2 hyp 1 -> tp 1; talmera utt2: ref 1 hyp 2 -> tp 1; utt3: ref 0 hyp 1 -> tp 0
    r = score_corpus(refs, hyps, ["zorvik", "talmera"])
    assert r["recall"] == pytest.approx(100 * 2 / 3)
    assert r["precision"] == pytest.approx(100 * 2 / 4)
    p, q = 2 / 3, 2 / 4
    assert r["f1"] == pytest.approx(100 * 2 * p * q / (p + q))


def test_biased_and_unbiased_wer_split_errors_by_the_biasing_list():
    # ref: ask zorvik about the plan (zorvik biased; 4 unbiased words)
    # hyp: ask sorvik the plan zorvik -> sub(zorvik) B, del(about) U, ins(zorvik) B (the only 3-edit alignment)
    r = score_corpus(["ask zorvik about the plan"], ["ask sorvik the plan zorvik"], ["zorvik"])
    assert r["b_wer"] == pytest.approx(200.0)
    assert r["u_wer"] == pytest.approx(25.0)
    assert r["wer"] == pytest.approx(60.0)


def test_table_has_a_row_per_condition():
    text = format_table({"none": score_corpus(["a"], ["a"], []), "true": score_corpus(["a"], ["b"], [])})
    assert text.splitlines()[1].startswith("none") and "100.00" in text.splitlines()[2]


def test_biasing_summary_gives_the_recall_ratio_and_u_wer_change_and_no_ratio_to_zero():
    from speakerforge.asr.infer import biasing_summary

    rows = {"no hotwords": {"recall": 10.0, "u_wer": 20.0}, "true hotwords": {"recall": 25.0, "u_wer": 20.5}}
    assert biasing_summary(rows) == (
        "true hotwords: hotword recall 25.0% vs 10.0% without a list (2.50x); U-WER +0.50 points"
    )
    rows = {"no hotwords": {"recall": 0.0, "u_wer": 13.0}, "true hotwords": {"recall": 0.0, "u_wer": 13.2}}
    assert "(no ratio: none found without a list or with it); U-WER +0.20 points" in biasing_summary(rows)
