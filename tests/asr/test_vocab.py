"""Vocabularies: characters and sentencepiece BPE pieces, their word spans and their model-file round trip."""

from __future__ import annotations

import pytest

from speakerforge.asr.vocab import SPACE, SPECIALS, CharVocab, PieceVocab, split_on_space, vocab_from_meta

TEXTS = [f"please call {name} at the station" for name in ("treekreek", "plaizor", "beezo", "kreedoux")] * 5 + [
    "the station is open",
    "call me at noon",
]


def test_pieces_start_with_the_specials_and_round_trip_text():
    v = PieceVocab.train(TEXTS, 60)
    assert tuple(v.tokens[:3]) == SPECIALS and (v.blank_id, v.sos_id, v.unk_id) == (0, 1, 2)
    assert len(v) <= 60 + 3
    for text in ["Please  call beezo", "the station is open", "zoobee at noon"]:  # an unseen word too
        ids = v.encode(text)
        assert 2 not in ids and v.decode(ids) == " ".join(text.lower().split())
    assert len(v.encode("the station")) < len("the station")  # pieces, not letters
    assert v.unknown_chars("qj at") == {"q", "j"} and v.encode("q")[-1] == v.unk_id


def test_training_is_deterministic_and_the_model_file_meta_rebuilds_the_same_vocabulary():
    a, b = PieceVocab.train(TEXTS, 60), PieceVocab.train(TEXTS, 60)
    assert a.tokens == b.tokens and a.model_proto == b.model_proto
    c = vocab_from_meta(a.to_meta())
    assert isinstance(c, PieceVocab) and c.tokens == a.tokens
    assert c.encode("plaizor at noon") == a.encode("plaizor at noon")
    chars = CharVocab.from_texts(TEXTS)
    assert type(vocab_from_meta(chars.to_meta())) is CharVocab


def test_word_spans_cover_each_word_once_and_a_hotword_encodes_as_in_a_sentence():
    """Hotword labels compare a list entry with a word of the transcript: both must give the same pieces."""
    v = PieceVocab.train(TEXTS, 60)
    for text in TEXTS[:4] + ["zoobee kreezor"]:
        ids = v.encode(text)
        spans = v.word_spans(ids)
        assert [v.decode(ids[s:e]) for s, e in spans] == text.split()
        assert all(tuple(ids[s:e]) == tuple(v.encode(w)) for (s, e), w in zip(spans, text.split()))
    chars = CharVocab.from_texts(TEXTS)
    ids = chars.encode("call beezo")
    assert chars.word_spans(ids) == [(0, 4), (5, 10)] == split_on_space(ids, chars.index[SPACE])


def test_bpe_training_end_to_end_writes_a_model_that_decodes_with_its_pieces(tmp_path):
    from speakerforge.asr.infer import AsrModel
    from speakerforge.asr.trainer import AsrTrainer
    from tests.asr.helpers import tiny_config, write_tone_corpus

    texts = ["ab cd", "bad cab", "dab", "ace bed", "cade", "bee dab"]
    data = write_tone_corpus(tmp_path / "data", texts)
    asr = {
        "tokenizer": "bpe",
        "bpe_size": 12,
        "stage_losses": {"asr": ["ce", "ctc", "cif"], "hot": ["hotword"]},
        "hotwords": {"span_unit": "word", "min_len": 1},
    }
    stages = [
        {"name": "asr", "epochs": 1, "freeze": "bias_encoder,seaco_decoder,hotword_output_layer"},
        {"name": "hot", "epochs": 1, "freeze": "encoder,predictor,decoder,ctc"},
    ]
    out = AsrTrainer(tiny_config(data, stages, asr), tmp_path / "exp").run()
    model = AsrModel.load(out)
    assert isinstance(model.vocab, PieceVocab)
    assert model.vocab.tokens == PieceVocab.train(texts, 12).tokens
    assert all(isinstance(t, str) for t in model.transcribe([__import__("torch").zeros(8000)], ["cab"]))


def test_bpe_config_errors_name_the_key():
    from speakerforge.asr.trainer import parse_asr_config
    from speakerforge.errors import ConfigError

    with pytest.raises(ConfigError, match="asr.tokenizer 'wordpiece'"):
        parse_asr_config({"tokenizer": "wordpiece"})
    with pytest.raises(ConfigError, match="remove asr.vocab"):
        parse_asr_config({"tokenizer": "bpe", "vocab": ["<blank>", "<sos/eos>", "<unk>", "a"]})
