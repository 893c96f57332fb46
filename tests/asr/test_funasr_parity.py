"""FunASR's SeACo-Paraformer in speakerforge against FunASR itself (PyPI `funasr`, installed by `make test`).

Random weights at small sizes of the released config's structure; every stage equal to FunASR's within 1e-4 and the
decoded token ids identical, with no hotword list, the true list and the true list among 100 distractors.
"""

from __future__ import annotations

import copy
import json
import random

import pytest
import torch
import yaml

from speakerforge.asr.funasr_dir import FunasrModel, FunasrTokens, read_hotword_list
from speakerforge.asr.funasr_frontend import WavFrontend, read_am_mvn, write_am_mvn
from speakerforge.asr.paraformer import SeacoParaformer, load_funasr_state
from speakerforge.errors import CheckpointError
from tests.asr.funasr_oracle import (
    SEACO_SMALL,
    oracle_frontend,
    oracle_ids,
    oracle_seaco,
    small_tokens,
    write_release_dir,
)

TOL = 1e-4
TOKENS = small_tokens()
V = len(TOKENS)
INPUT = SEACO_SMALL["frontend_conf"]["n_mels"] * SEACO_SMALL["frontend_conf"]["lfr_m"]


@pytest.fixture(scope="module")
def pair():
    oracle = oracle_seaco(SEACO_SMALL, V, seed=0)
    ours = SeacoParaformer(SEACO_SMALL, V, INPUT).eval()
    load_funasr_state(ours, oracle.state_dict(), "oracle")
    return oracle, ours


def _feats(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 50, INPUT, generator=g), torch.tensor([50, 37])


def test_state_dict_has_funasr_names_and_shapes(pair):
    oracle, ours = pair
    theirs = {k: tuple(v.shape) for k, v in oracle.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == theirs
    assert "decoder.embed.0.weight" in theirs and "encoders0" in "".join(theirs)


def test_strict_load_lists_every_missing_unexpected_and_misshaped_key(pair):
    oracle, _ = pair
    state = dict(oracle.state_dict())
    del state["bias_encoder.weight_hh_l1"], state["encoder.after_norm.bias"]
    state["extra.weight"] = torch.zeros(1)
    state["hotword_output_layer.bias"] = torch.zeros(V + 1)
    with pytest.raises(CheckpointError) as err:
        load_funasr_state(SeacoParaformer(SEACO_SMALL, V, INPUT), state, "model.pt")
    msg = str(err.value)
    for key in ("bias_encoder.weight_hh_l1", "encoder.after_norm.bias", "extra.weight", "hotword_output_layer.bias"):
        assert key in msg
    assert f"file ({V + 1},), model ({V},)" in msg


def test_frontend_matches_wav_frontend_with_lfr_and_am_mvn(tmp_path):
    g = torch.Generator().manual_seed(0)
    cmvn = torch.stack([torch.randn(INPUT, generator=g), torch.rand(INPUT, generator=g) + 0.5])
    write_am_mvn(tmp_path / "am.mvn", cmvn)
    theirs = oracle_frontend(SEACO_SMALL, str(tmp_path / "am.mvn"))
    import funasr.frontends.wav_frontend as fa

    assert torch.allclose(fa.load_cmvn(str(tmp_path / "am.mvn")), read_am_mvn(tmp_path / "am.mvn"))
    ours = WavFrontend(read_am_mvn(tmp_path / "am.mvn"), **SEACO_SMALL["frontend_conf"]).eval()
    waves = [0.1 * torch.randn(16000, generator=g), 0.1 * torch.randn(9100, generator=g)]
    a, a_len = theirs(torch.nn.utils.rnn.pad_sequence(waves, batch_first=True), torch.tensor([16000, 9100]))
    b, b_len = ours(waves)
    assert a_len.tolist() == b_len.tolist() == [17, 10]
    assert (a - b).abs().max() <= TOL * a.abs().max()


def test_encoder_predictor_decoder_match_funasr(pair):
    oracle, ours = pair
    x, lens = _feats()
    with torch.no_grad():
        enc_o, enc_len, _ = oracle.encoder(x, lens)
        enc_m, _ = ours.encode(x, lens)
        for i, n in enumerate(lens.tolist()):
            assert (enc_o[i, :n] - enc_m[i, :n]).abs().max() <= TOL
        emb_o, num_o, alphas_o, _ = oracle.calc_predictor(enc_o, enc_len)
        pred = ours.predictor(enc_m, lens)
        assert pred.token_num.tolist() == num_o.tolist()
        assert (pred.alphas - alphas_o).abs().max() <= TOL
        assert pred.embeds.shape == emb_o.shape and (pred.embeds - emb_o).abs().max() <= TOL
        k = num_o.round().long()
        _, _, us_o, _ = oracle.calc_predictor_timestamp(enc_o, enc_len, k)
        assert (ours.predictor.upsampled_alphas(enc_m, lens, k) - us_o).abs().max() <= TOL
        logits_o, hidden_o, _ = oracle.decoder(enc_o, enc_len, emb_o, k, return_hidden=True, return_both=True)
        logits_m, hidden_m = ours.decoder(enc_m, lens, pred.embeds, k)
        for i, n in enumerate(k.tolist()):
            assert (logits_o[i, :n] - logits_m[i, :n]).abs().max() <= TOL
            assert (hidden_o[i, :n] - hidden_m[i, :n]).abs().max() <= TOL


def test_bias_branch_logits_match_funasr(pair):
    oracle, ours = pair
    x, lens = _feats(2)
    hotwords = [[5, 6, 7], [9], [12, 13], [1]]
    ids = torch.tensor([[5, 6, 7], [9, 0, 0], [12, 13, 0], [1, 0, 0]])
    hw_len = torch.tensor([3, 1, 2, 1])
    with torch.no_grad():
        enc, enc_len, _ = oracle.encoder(x, lens)
        emb, num, _, _ = oracle.calc_predictor(enc, enc_len)
        k = num.round().long()
        _, hidden, _ = oracle.decoder(enc, enc_len, emb, k, return_hidden=True, return_both=True)
        selected = oracle._hotword_representation(ids, hw_len)
        ctx = selected.unsqueeze(0).repeat(2, 1, 1)
        ctx_len = torch.tensor([len(hotwords)] * 2)
        theirs = oracle.hotword_output_layer(
            oracle.seaco_decoder(ctx, ctx_len, emb, k)[0] + oracle.seaco_decoder(ctx, ctx_len, hidden, k)[0]
        )
        vec = ours.hotword_representation(ids, hw_len)
        assert (vec - selected).abs().max() <= TOL
        mine = ours.bias_logits(vec, emb, hidden, k)
    for i, n in enumerate(k.tolist()):
        assert (theirs[i, :n] - mine[i, :n]).abs().max() <= TOL


def _hotword_lists(seed: int = 0) -> dict[str, list[list[int]] | None]:
    rnd = random.Random(seed)
    true = [[rnd.randrange(3, V - 1) for _ in range(rnd.randint(1, 4))] for _ in range(3)]
    distractors = [[rnd.randrange(3, V - 1) for _ in range(rnd.randint(1, 4))] for _ in range(100)]
    return {"none": None, "true": [*true, [1]], "true+100": [*true, *distractors, [1]]}


@pytest.mark.parametrize("condition", ["none", "true", "true+100"])
def test_decoded_ids_match_funasr(pair, condition):
    """Merged log-probabilities and ids of FunASR's `_seaco_decode_with_ASF` (one utterance at a time, as FunASR
    decodes); the NO_BIAS logit is raised so that the merge takes the bias branch at some tokens only."""
    oracle, ours = pair
    hw = _hotword_lists()[condition]
    x, lens = _feats(3)
    biased = 0
    with torch.no_grad():
        saved = oracle.hotword_output_layer.bias[oracle.NO_BIAS].item()
        for m in (oracle, ours):
            m.hotword_output_layer.bias[m.no_bias if m is ours else m.NO_BIAS] = saved + 2.0
        try:
            for i in range(2):
                xi, li = x[i : i + 1, : int(lens[i])], lens[i : i + 1]
                enc, enc_len, _ = oracle.encoder(xi, li)
                emb, num, _, _ = oracle.calc_predictor(enc, enc_len)
                k = num.round().long()
                theirs = oracle._seaco_decode_with_ASF(enc, enc_len, emb, k, hw_list=hw)[0, : int(k)]
                mine, n = ours.decode_logp(xi, li, hw)
                assert int(n) == int(k)
                assert (theirs - mine[0, : int(k)]).abs().max() <= TOL
                assert theirs.argmax(-1).tolist() == mine[0, : int(k)].argmax(-1).tolist()
                plain, _ = ours.decode_logp(xi, li, None)
                biased += int((plain[0, : int(k)].argmax(-1) != mine[0, : int(k)].argmax(-1)).sum())
        finally:
            for m in (oracle, ours):
                m.hotword_output_layer.bias[m.no_bias if m is ours else m.NO_BIAS] = saved
    if condition != "none":
        assert biased > 0  # the list did change some tokens


def _release_dir(tmp_path, oracle):
    """A FunASR model directory written from the oracle: the stand-in for a downloaded release."""
    return write_release_dir(tmp_path / "release", SEACO_SMALL, oracle.state_dict(), TOKENS)


def test_funasr_dir_loads_strictly_and_writes_back_the_same_files(tmp_path, pair):
    oracle, _ = pair
    d = _release_dir(tmp_path, oracle)
    m = FunasrModel.load(d)
    assert yaml.safe_load((d / "config.yaml").read_text())["frontend_conf"]["cmvn_file"] == "am.mvn"
    assert json.loads((d / "tokens.json").read_text(encoding="utf-8")) == TOKENS
    out = m.save(tmp_path / "again")
    back = torch.load(out / "model.pt", weights_only=True)
    assert all(torch.equal(back[k], v) for k, v in oracle.state_dict().items())
    bad = dict(oracle.state_dict())
    bad.pop("predictor.blstm.weight_hh_l0")
    torch.save(bad, d / "model.pt")
    with pytest.raises(CheckpointError, match="predictor.blstm.weight_hh_l0"):
        FunasrModel.load(d)


def test_hotword_tokenisation_is_funasrs(tmp_path, pair):
    """Chinese words split into characters through `seg_dict`, English words into their pieces, others `<unk>`."""
    from funasr.models.seaco_paraformer.model import SeacoParaformer as Oracle
    from funasr.tokenizer.char_tokenizer import CharTokenizer

    oracle, _ = pair
    d = _release_dir(tmp_path, oracle)
    (tmp_path / "hw.txt").write_text(f"{TOKENS[5]}{TOKENS[6]}\nHello\nzzz\n{TOKENS[7]} hello\n", encoding="utf-8")
    tok = CharTokenizer(token_list=str(d / "tokens.json"), seg_dict=str(d / "seg_dict"))

    class Front:  # what generate_hotwords_list reads from the frontend: where am.mvn (and seg_dict) are
        cmvn_file = str(d / "am.mvn")

    theirs = Oracle.generate_hotwords_list(oracle, str(tmp_path / "hw.txt"), tokenizer=tok, frontend=Front())
    m = FunasrModel.load(d)
    assert m.hotword_ids(read_hotword_list(tmp_path / "hw.txt")) == theirs
    words = f"{TOKENS[5]}{TOKENS[6]} Hello"
    assert m.hotword_ids(read_hotword_list(words)) == Oracle.generate_hotwords_list(
        oracle, words, tokenizer=tok, frontend=Front()
    )
    assert FunasrTokens(TOKENS).encode_hotword(TOKENS[4]) == [4]


def _oracle_ids(oracle, d, waves, hotword: str | None) -> list[list[int]]:
    return oracle_ids(oracle, d, SEACO_SMALL, waves, hotword)


def test_decode_from_funasr_dir_gives_funasrs_ids(tmp_path, pair):
    """The whole path: a FunASR directory, waveforms, a hotword file -> FunASR's `inference` token ids."""
    oracle, _ = pair
    d = _release_dir(tmp_path, oracle)
    g = torch.Generator().manual_seed(7)
    waves = [0.1 * torch.randn(n, generator=g) for n in (16000, 12000)]
    (tmp_path / "hw.txt").write_text(f"{TOKENS[5]}{TOKENS[6]}\n{TOKENS[9]}\nhello\n", encoding="utf-8")
    m = FunasrModel.load(d)
    for hotword in (None, str(tmp_path / "hw.txt")):
        mine = m.decode_ids(waves, read_hotword_list(hotword) if hotword else [])
        assert mine == _oracle_ids(oracle, d, waves, hotword)


def test_cli_decode_of_a_funasr_dir_prints_funasrs_result(tmp_path, pair, capsys):
    """`asr decode --model FUNASR_DIR --data my.jsonl --hotwords words.txt`: no list, the true list (a file and a
    space-separated string) and the true list among 100 distractors give FunASR's tokens."""
    from speakerforge.asr.data import write_asr_jsonl
    from speakerforge.cli import main
    from speakerforge.data.audio import load_audio, save_audio

    oracle = copy.deepcopy(pair[0])
    with torch.no_grad():  # the bias branch then says "no hotword" at some tokens, so the merge is exercised
        oracle.hotword_output_layer.bias[oracle.NO_BIAS] += 2.0
    d = _release_dir(tmp_path, oracle)
    g = torch.Generator().manual_seed(11)
    rows = []
    for i, n in enumerate((16000, 11000, 14000)):
        save_audio(tmp_path / f"u{i}.wav", (0.1 * torch.randn(n, generator=g)).numpy())
        rows.append({"key": f"u{i}", "source": str(tmp_path / f"u{i}.wav"), "target": ""})
    write_asr_jsonl(rows, tmp_path / "my.jsonl")
    waves = [torch.from_numpy(load_audio(tmp_path / f"u{i}.wav")) for i in range(3)]
    rnd = random.Random(3)
    true = [f"{TOKENS[5]}{TOKENS[6]}", TOKENS[9], "hello"]
    chars = TOKENS[3:-1]
    distractors = ["".join(rnd.choice(chars) for _ in range(rnd.randint(2, 4))) for _ in range(100)]
    (tmp_path / "true.txt").write_text("\n".join(true) + "\n", encoding="utf-8")
    (tmp_path / "all.txt").write_text("\n".join(true + distractors) + "\n", encoding="utf-8")
    tokens = FunasrTokens(TOKENS)
    for hotword in (None, str(tmp_path / "true.txt"), " ".join(true), str(tmp_path / "all.txt")):
        args = ["--quiet", "asr", "decode", "--model", str(d), "--data", str(tmp_path / "my.jsonl")]
        assert main(args + (["--hotwords", hotword] if hotword else [])) == 0
        out = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
        expected = [tokens.to_text(ids) for ids in _oracle_ids(oracle, d, waves, hotword)]
        assert [k for k, _ in out] == ["u0", "u1", "u2"]
        assert [t for _, t in out] == expected


@pytest.mark.slow
def test_released_sizes_load_strictly_and_decode_as_funasr():
    """The released SeACo-Paraformer's structure and sizes (about 220M parameters, 8404 tokens), random weights."""
    from tests.asr.funasr_oracle import released_seaco_config

    cfg = released_seaco_config()
    vocab = 8404
    oracle = oracle_seaco(cfg, vocab, seed=0)
    ours = SeacoParaformer(cfg, vocab, 80 * 7).eval()
    load_funasr_state(ours, oracle.state_dict(), "released-size oracle")
    g = torch.Generator().manual_seed(0)
    x, lens = torch.randn(1, 30, 80 * 7, generator=g), torch.tensor([30])
    hw = [[100, 200, 300], [4000], *([[g_ % 8000 + 3] for g_ in range(60)]), [1]]  # > 50: the filter runs
    with torch.no_grad():
        enc, enc_len, _ = oracle.encoder(x, lens)
        emb, num, _, _ = oracle.calc_predictor(enc, enc_len)
        k = num.round().long()
        theirs = oracle._seaco_decode_with_ASF(enc, enc_len, emb, k, hw_list=hw)[0, : int(k)]
        mine, n = ours.decode_logp(x, lens, hw)
    assert int(n) == int(k) > 0
    assert (theirs - mine[0, : int(k)]).abs().max() <= TOL
    assert theirs.argmax(-1).tolist() == mine[0, : int(k)].argmax(-1).tolist()


def test_funasr_1560_two_stage_freeze_lists_match_the_real_module_names(pair):
    """FunASR #1560's stages against the FunASR-named modules: stage 1 freezes the hotword modules and the embedding
    the bias branch reads, stage 2 the ASR part; together they cover every parameter, and a typo is an error that
    names the real modules."""
    from speakerforge.asr.paraformer import ASR_PART, HOTWORD_PART
    from speakerforge.errors import ConfigError
    from speakerforge.train import freezing

    _, ours = pair
    stage1 = freezing.match_parameters(ours, ",".join([*HOTWORD_PART, "decoder.embed"]))
    stage2 = freezing.match_parameters(ours, ",".join(p for p in ASR_PART if p != "ctc"))  # no ctc head here
    frozen1 = {n for names in stage1.values() for n in names}
    frozen2 = {n for names in stage2.values() for n in names}
    every = {n for n, _ in ours.named_parameters()}
    assert frozen1 | frozen2 == every and frozen1 & frozen2 == {"decoder.embed.0.weight"}
    with pytest.raises(ConfigError, match="seaco_decoder"):
        freezing.match_parameters(ours, "seaco_decoders")
