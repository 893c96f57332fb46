"""A row's own training hotwords (FunASR #2486): JSONL `"hotwords"` joins the drawn spans (`asr.hotwords.listed:
add`), replaces them (`only`) or is ignored (`off`); a listed hotword its transcript does not say is a distractor."""

from __future__ import annotations

import json

import pytest

from speakerforge.asr.data import AsrDataset, HotwordSampling, listed_spans, load_asr_sources, read_asr_jsonl
from speakerforge.asr.funasr_new import learn_tokens
from speakerforge.data.sampling import Draw
from speakerforge.errors import DataError
from tests.asr.helpers import write_tone_corpus

TEXTS = ["call abc about def", "ghi met abcd", "we saw efg hij"]


def _with_hotwords(path, lists):
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    for row, hw in zip(rows, lists):
        if hw is not None:
            row["hotwords"] = hw
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_the_jsonl_field_is_a_list_or_a_string_and_a_bad_one_names_the_line(tmp_path):
    data = _with_hotwords(write_tone_corpus(tmp_path / "c", TEXTS), [["abc", "def"], "ghi abcd", None])
    assert [u.hotwords for u in read_asr_jsonl(data)] == [("abc", "def"), ("ghi", "abcd"), ()]
    _with_hotwords(data, [None, None, 7])
    with pytest.raises(DataError, match=r"train.jsonl:3: \"hotwords\" is a list"):
        read_asr_jsonl(data)


def test_listed_spans_are_whole_words_and_unsaid_ones_come_back():
    words = [(0, 2), (2, 3), (3, 5)]  # tokens [5, 6 | 7 | 6, 8]
    spans, unsaid = listed_spans([5, 6, 7, 6, 8], [[6], [7], [6, 8], [9]], words)
    assert spans == [(2, 3), (3, 5)] and unsaid == [[6], [9]]  # [6] alone is no whole word here


@pytest.mark.parametrize("mode", ["add", "only", "off"])
def test_the_dataset_labels_the_listed_hotwords_every_epoch(tmp_path, mode):
    data = _with_hotwords(write_tone_corpus(tmp_path / "c", TEXTS), [["def", "zzz"], None, None])
    tokens = learn_tokens(TEXTS + ["zzz"], 20)
    sampling = HotwordSampling(prob=0.0, double_prob=0.0, span_unit="word", listed=mode)  # no random spans
    ds = AsrDataset(load_asr_sources([(str(data), 1.0, "")]), tokens, 0, 0, sampling)
    def_ids = tokens.encode("def")
    for epoch in range(3):
        item = ds[(epoch, Draw(0, 0, 0))]
        said = [item["tokens"][s:e] for s, e in item["spans"]]
        assert said == ([] if mode == "off" else [def_ids])
        assert (tokens.encode("zzz") in item["distractors"]) == (mode != "off")
        assert ds[(epoch, Draw(0, 1, 1))]["spans"] == []  # a row without a list: the drawn spans (none here)


def test_add_keeps_drawn_spans_that_do_not_overlap_the_listed_ones(tmp_path):
    data = _with_hotwords(write_tone_corpus(tmp_path / "c", TEXTS), [["def"], None, None])
    tokens = learn_tokens(TEXTS, 20)
    sampling = HotwordSampling(prob=1.0, double_prob=1.0, span_unit="word", min_len=1)
    ds = AsrDataset(load_asr_sources([(str(data), 1.0, "")]), tokens, 0, 0, sampling)
    seen = [ds[(epoch, Draw(0, 0, 0))] for epoch in range(20)]
    for item in seen:
        spans = item["spans"]
        assert tokens.encode("def") in [item["tokens"][s:e] for s, e in spans]
        assert all(b <= c for (_, b), (c, _) in zip(spans, spans[1:]))  # sorted, no overlap
    assert any(len(item["spans"]) > 1 for item in seen)
