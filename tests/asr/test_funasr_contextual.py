"""FunASR's ContextualParaformer in speakerforge against FunASR itself (PyPI `funasr`, installed by `make test`).

Random weights at small sizes of the released config's structure (`funasr_oracle.contextual_small`): the state dict
loads strictly, the CifPredictorV2 and the contextual decoder's log-probabilities equal FunASR's within 1e-4, and the
decoded token ids are FunASR's with no list, the true list and the true list among 100 distractors, from a FunASR
model directory and through `asr decode`.
"""

from __future__ import annotations

import copy
import random

import pytest
import torch

from speakerforge.asr.funasr_dir import FunasrModel, FunasrTokens, read_hotword_list
from speakerforge.asr.paraformer import ContextualParaformer, load_funasr_state, pad_hotwords
from tests.asr.funasr_oracle import contextual_small, oracle_contextual, oracle_ids, small_tokens, write_release_dir

TOL = 1e-4
TOKENS = small_tokens()
V = len(TOKENS)
CONFIG = contextual_small()
INPUT = CONFIG["frontend_conf"]["n_mels"] * CONFIG["frontend_conf"]["lfr_m"]


@pytest.fixture(scope="module")
def pair():
    oracle = oracle_contextual(CONFIG, V, seed=0)
    ours = ContextualParaformer(CONFIG, V, INPUT).eval()
    load_funasr_state(ours, oracle.state_dict(), "oracle")
    return oracle, ours


def _lists(seed: int = 0) -> dict[str, list[list[int]] | None]:
    rnd = random.Random(seed)
    true = [[rnd.randrange(3, V - 1) for _ in range(rnd.randint(1, 4))] for _ in range(3)]
    distractors = [[rnd.randrange(3, V - 1) for _ in range(rnd.randint(1, 4))] for _ in range(100)]
    return {"none": None, "true": [*true, [1]], "true+100": [*true, *distractors, [1]]}


def test_state_dict_has_funasr_names_and_shapes(pair):
    oracle, ours = pair
    theirs = {k: tuple(v.shape) for k, v in oracle.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == theirs
    for key in ("decoder.last_decoder.src_attn.linear_k_v.weight", "decoder.bias_output.weight", "bias_embed.weight"):
        assert key in theirs
    assert len(ours.decoder.decoders) == CONFIG["decoder_conf"]["att_layer_num"] - 1


@pytest.mark.parametrize("condition", ["none", "true", "true+100"])
def test_predictor_v2_and_contextual_decoder_match_funasr(pair, condition):
    """CifPredictorV2 (tail frame) and FunASR's `cal_decoder_with_predictor` log-probabilities and ids, batch of 2."""
    oracle, ours = pair
    hw = _lists()[condition]
    g = torch.Generator().manual_seed(3)
    x, lens = torch.randn(2, 50, INPUT, generator=g), torch.tensor([50, 37])
    with torch.no_grad():
        enc, enc_len = oracle.encode(x, lens)
        emb, num, alphas, _ = oracle.calc_predictor(enc, enc_len)
        k = num.round().long()
        theirs, _ = oracle.cal_decoder_with_predictor(enc, enc_len, emb, k, hw_list=hw)
        enc_m, _ = ours.encode(x, lens)
        pred = ours.predictor(enc_m, lens)
        assert pred.token_num.tolist() == num.tolist()
        assert (pred.alphas - alphas).abs().max() <= TOL
        mine, n = ours.decode_logp(x, lens, hw)
        plain, _ = ours.decode_logp(x, lens, None)
    assert n.tolist() == k.tolist()
    for i, kk in enumerate(k.tolist()):
        assert (theirs[i, :kk] - mine[i, :kk]).abs().max() <= TOL
        assert theirs[i, :kk].argmax(-1).tolist() == mine[i, :kk].argmax(-1).tolist()
    if condition != "none":  # the list reaches the output
        assert (plain - mine).abs().max() > 1e-3
    if hw is not None:
        ids, hw_len = pad_hotwords(hw)
        with torch.no_grad():
            packed = torch.nn.utils.rnn.pack_padded_sequence(
                oracle.bias_embed(ids), hw_len, batch_first=True, enforce_sorted=False
            )
            assert (oracle.bias_encoder(packed)[1][0][0] - ours.hotword_representation(ids, hw_len)).abs().max() <= TOL


def test_decode_from_a_contextual_funasr_dir_and_cli_give_funasrs_ids(tmp_path, pair, capsys):
    """A ContextualParaformer FunASR directory: `FunasrModel` and `asr decode --model DIR --hotwords ...` give
    FunASR's `inference` ids with no list, the true list (file and string) and the true list + 100 distractors."""
    from speakerforge.asr.data import write_asr_jsonl
    from speakerforge.cli import main
    from speakerforge.data.audio import load_audio, save_audio

    oracle = copy.deepcopy(pair[0])
    with torch.no_grad():  # a stronger hotword half of bias_output, so that the lists change some tokens
        oracle.decoder.bias_output.weight[:, CONFIG["encoder_conf"]["output_size"] :] *= 20.0
    d = write_release_dir(tmp_path / "release", CONFIG, oracle.state_dict(), TOKENS)
    m = FunasrModel.load(d)
    assert isinstance(m.model, ContextualParaformer)
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
    results = set()
    for hotword in (None, str(tmp_path / "true.txt"), " ".join(true), str(tmp_path / "all.txt")):
        expected = oracle_ids(oracle, d, CONFIG, waves, hotword)
        assert m.decode_ids(waves, read_hotword_list(hotword) if hotword else []) == expected
        args = ["--quiet", "asr", "decode", "--model", str(d), "--data", str(tmp_path / "my.jsonl")]
        assert main(args + (["--hotwords", hotword] if hotword else [])) == 0
        out = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
        assert [k for k, _ in out] == ["u0", "u1", "u2"]
        assert [t for _, t in out] == [tokens.to_text(ids) for ids in expected]
        results.add(str(expected))
    assert len(results) > 1  # some list changed the output
