"""`asr train --config configs/asr-funasr-small-{seaco,contextual}.yaml` without `--init`: a new FunASR model from its
`config.yaml` (model.args), tokens learnt as BPE pieces in FunASR's seg_dict form and CMVN from the training audio;
exported, FunASR's own class decodes it to the ids `asr decode` prints (hotwords outside the training words too);
`--decoding ctc` runs on it; and the fine-tuning configs of `recipes/asr-funasr` fit both models' module names."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from speakerforge.asr.funasr_dir import FunasrModel, load_funasr
from speakerforge.asr.funasr_frontend import WavFrontend
from speakerforge.asr.funasr_new import compute_cmvn, learn_tokens
from speakerforge.asr.trainer import AsrInit, AsrTrainer
from speakerforge.config import Config, check_values, from_dict
from speakerforge.data.audio import load_audio
from speakerforge.errors import ConfigError
from tests.asr.funasr_oracle import oracle_from_dir, oracle_ids
from tests.asr.helpers import tiny_funasr_args, tone_utterance, write_tone_corpus

REPO = Path(__file__).resolve().parents[2]
HOTWORD_PATH = {
    "seaco": ("bias_encoder.", "seaco_decoder.", "hotword_output_layer."),
    "contextual": ("bias_embed.", "bias_encoder.", "decoder.bias_decoder.", "decoder.bias_output."),
}
TEXTS = ["abc def", "ghi abc", "def ghij", "abcd efg", "hij abc", "efg hij"]


def _config(raw: dict, data: Path, **stage_epochs: int) -> Config:
    raw["data"] = {"sources": [{"path": str(data)}], "batch_size": 2}
    raw["train"] = {**raw["train"], "threads": 1, "log_every": 1, "epochs": 1}
    for stage in raw.get("stages", []):
        stage["epochs"] = 1
    cfg = from_dict(Config, raw)
    check_values(cfg)
    return cfg


def _new_model_config(name: str, data: Path) -> Config:
    raw = yaml.safe_load((REPO / "configs" / f"asr-funasr-small-{name}.yaml").read_text(encoding="utf-8"))
    raw["model"]["args"] = tiny_funasr_args(name)
    raw["asr"]["bpe_size"] = 12
    return _config(raw, data)


def test_learnt_tokens_are_funasr_seg_dict_pieces_and_split_new_words():
    tokens = learn_tokens(["the tree grows", "a green tree", "trees are green"], 16)
    assert tokens.tokens[:3] == ["<blank>", "<s>", "</s>"] and tokens.tokens[-2:] == ["<no_bias>", "<unk>"]
    assert set(tokens.seg_dict) == {"the", "tree", "grows", "a", "green", "trees", "are"}
    for word, pieces in tokens.seg_dict.items():
        parts = pieces.split()
        assert all(p.endswith("@@") for p in parts[:-1]) and not parts[-1].endswith("@@")
        assert "".join(p.removesuffix("@@") for p in parts) == word
        assert tokens.unk_id not in tokens.encode(word)
    new = tokens.encode_hotword("greentree")  # not a training word: split by the BPE model, not <unk>
    assert tokens.unk_id not in new and tokens.to_text(new) == "greentree"
    assert tokens.to_text(tokens.encode("the green trees")) == "the green trees"


def test_cmvn_normalises_the_training_features():
    waves = [torch.from_numpy(tone_utterance(t)) for t in TEXTS]
    conf = {"n_mels": 20, "lfr_m": 5, "lfr_n": 3, "dither": 0.0}
    front = WavFrontend(compute_cmvn(conf, waves), **conf).eval()
    feats = torch.cat([front.features(w) for w in waves])
    assert feats.shape[1] == 100
    assert feats.mean(0).abs().max() < 1e-3 and (feats.std(0) - 1).abs().max() < 1e-2


def test_a_new_seaco_model_trains_exports_and_decodes_in_funasr(tmp_path, capsys):
    from speakerforge.cli import main

    data = write_tone_corpus(tmp_path / "corpus", TEXTS)
    exp = AsrTrainer(_new_model_config("seaco", data), tmp_path / "exp").run().parent
    fm = load_funasr(exp)
    assert fm.config["model_conf"]["NO_BIAS"] == fm.tokens.index["<no_bias>"]
    hotwords = "abc jihgf"  # "jihgf" is in no training sentence
    out = tmp_path / "exported"
    assert main(["--quiet", "asr", "export", "--model", str(exp), "--hotwords", hotwords, str(out)]) == 0
    assert {"config.yaml", "model.pt", "tokens.json", "am.mvn", "seg_dict", "bpe.model"} <= {
        p.name for p in out.iterdir()
    }
    assert "jihgf " in (out / "seg_dict").read_text(encoding="utf-8")  # FunASR would read it as <unk> otherwise
    written = yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8"))
    # the files `asr decode` reads (16-bit), not the float tones: a random model's argmax flips on less
    waves = [torch.from_numpy(load_audio(tmp_path / "corpus" / f"u{i}.wav")) for i in range(3)]
    capsys.readouterr()
    for hw in (None, hotwords):
        expected = oracle_ids(oracle_from_dir(out), out, written, waves, hw)
        args = ["--quiet", "asr", "decode", "--model", str(exp), "--data"]
        args += [str(tmp_path / "corpus" / f"u{i}.wav") for i in range(3)]
        assert main(args + (["--hotwords", hw] if hw else [])) == 0
        printed = [line.split("\t", 1)[1] for line in capsys.readouterr().out.splitlines()]
        assert printed == [fm.tokens.to_text(ids) for ids in expected]
    assert FunasrModel.load(out).tokens.encode_hotword("jihgf") == fm.tokens.encode_hotword("jihgf")


def test_ctc_decoding_of_a_funasr_model_is_biased_by_the_context_graph(tmp_path):
    from speakerforge.asr.decoding import Decoding

    data = write_tone_corpus(tmp_path / "corpus", TEXTS)
    exp = AsrTrainer(_new_model_config("contextual", data), tmp_path / "exp").run().parent
    fm = load_funasr(exp)
    waves = [torch.from_numpy(tone_utterance(t)) for t in TEXTS[:2]]
    plain = fm.decode_ids(waves, [], Decoding("ctc"))
    forced = fm.decode_ids(waves, ["jihgf"], Decoding("ctc", context_score=1000.0))
    word = fm.tokens.encode_hotword("jihgf")
    assert plain != forced and all(fm.tokens.to_text(ids).count("jihgf") >= 1 for ids in forced)
    assert all(len(ids) >= len(word) for ids in forced)
    release_like = FunasrModel.build(
        {**fm.config, "model_conf": {**fm.config["model_conf"], "ctc_weight": 0.0}}, fm.tokens.tokens, fm.cmvn
    )
    with pytest.raises(ConfigError, match="no ctc head"):
        release_like.decode_ids(waves, [], Decoding("ctc"))


@pytest.mark.parametrize("name", ["seaco", "contextual"])
def test_the_recipe_fine_tuning_configs_fit_the_small_models(tmp_path, name):
    """Each fine-tuning config of `recipes/asr-funasr` on its model's FunASR directory: every freeze list matches,
    every stage's trainable tensors change (the update-integrity check) and frozen ones do not."""
    from speakerforge.cli import main

    data = write_tone_corpus(tmp_path / "corpus", TEXTS)
    exp = AsrTrainer(_new_model_config(name, data), tmp_path / "new").run().parent
    funasr_dir = tmp_path / "dir"
    assert main(["--quiet", "asr", "export", "--model", str(exp), str(funasr_dir)]) == 0
    before = FunasrModel.load(funasr_dir).model.state_dict()
    for stages in ("one-stage", "two-stage"):
        raw = yaml.safe_load((REPO / "recipes" / "asr-funasr" / f"ft-{name}-{stages}.yaml").read_text("utf-8"))
        cfg = _config(raw, data)
        ft = AsrTrainer(cfg, tmp_path / stages, init=AsrInit(funasr_dir)).run().parent
        after = load_funasr(ft).model.state_dict()
        changed = {k for k in before if not torch.equal(before[k], after[k])}
        assert any(k.startswith("encoder.") for k in changed)
        assert any(k.startswith("bias_encoder.") for k in changed)
    # the second stage alone moves the hotword path and nothing else
    raw["stages"] = raw["stages"][1:]
    raw["asr"]["stage_losses"] = {"hotword": raw["asr"]["stage_losses"]["hotword"]}
    ft = AsrTrainer(_config(raw, data), tmp_path / "hotword-only", init=AsrInit(funasr_dir)).run().parent
    after = load_funasr(ft).model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    hotword_path = HOTWORD_PATH[name]
    assert changed and all(k.startswith(hotword_path) for k in changed), sorted(changed)[:5]
    assert {k.split(".")[0] for k in changed} >= {p.split(".")[0] for p in hotword_path}


def test_cached_asr_states_give_the_hotword_loss_of_the_full_forward(tmp_path):
    """A hotword-only stage over a frozen ASR part reads each utterance's states from a cache: in eval mode the
    loss from those states is the loss of the whole network."""
    data = write_tone_corpus(tmp_path / "corpus", TEXTS)
    fm = load_funasr(AsrTrainer(_new_model_config("seaco", data), tmp_path / "exp").run().parent)
    model = fm.model.eval()
    feats, lengths = fm.frontend([torch.from_numpy(tone_utterance(t)) for t in TEXTS[:2]])
    targets = [fm.tokens.encode(t) for t in TEXTS[:2]]
    tl = torch.tensor([len(t) for t in targets])
    ys = torch.full((2, int(tl.max())), -1)
    for i, t in enumerate(targets):
        ys[i, : len(t)] = torch.tensor(t)
    hot = torch.tensor([targets[0][:2], [model.sos, 0]])
    hot_len = torch.tensor([2, 1])
    labels = torch.full((2, int(tl.max())), model.no_bias)
    labels[0, :2] = hot[0]
    labels[1, int(tl[1]) :] = -1
    args = (feats, lengths, ys, tl, hot, hot_len, labels)
    full = model(*args, losses=("hotword",))
    cached = model(*args, losses=("hotword",), asr_states=model.asr_states(feats, lengths, tl))
    assert torch.allclose(full["hotword"], cached["hotword"], atol=1e-6)
    with pytest.raises(ValueError, match="hotword loss alone"):
        model(*args, losses=("ce", "hotword"), asr_states=model.asr_states(feats, lengths, tl))
