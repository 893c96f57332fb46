"""`asr train --init FUNASR_DIR --config configs/asr-funasr-seaco-two-stage.yaml --data train.jsonl`: a FunASR
SeACo-Paraformer directory (random weights at small sizes; tones for audio, `tests/asr/helpers.py`) fine-tuned in
FunASR #1560's two stages in one command, resumed after a kill to the same weights, then decoded by `asr decode`
and, exported with `asr export --format funasr`, by FunASR's own class to the same token ids."""

from __future__ import annotations

import copy
import string
from pathlib import Path

import pytest
import torch
import yaml

from speakerforge.asr.funasr_dir import FunasrModel, FunasrTokens, write_funasr_dir
from speakerforge.asr.trainer import AsrInit, AsrTrainer
from speakerforge.config import Config, check_values, from_dict
from speakerforge.errors import ConfigError
from speakerforge.train.trainer import RunOptions, StopForTest
from tests.asr.funasr_oracle import (
    SEACO_SMALL,
    contextual_small,
    oracle_contextual,
    oracle_from_dir,
    oracle_ids,
    oracle_seaco,
)
from tests.asr.helpers import tone_utterance, write_tone_corpus
from tests.trainutil import assert_same_weights, model_weights

TOKENS = ["<blank>", "<s>", "</s>", *string.ascii_lowercase, "<no_bias>", "<unk>"]
TEXTS = ["abc def", "ghi abc", "def ghij", "abcd efg", "hij abc", "efg hij"]
REPO = Path(__file__).resolve().parents[2]


def _release(tmp_path: Path, contextual: bool = False) -> Path:
    cfg = contextual_small() if contextual else copy.deepcopy(SEACO_SMALL)
    if not contextual:
        cfg["model_conf"]["NO_BIAS"] = TOKENS.index("<no_bias>")
    oracle = (oracle_contextual if contextual else oracle_seaco)(cfg, len(TOKENS), seed=0)
    g = torch.Generator().manual_seed(5)
    dim = cfg["frontend_conf"]["n_mels"] * cfg["frontend_conf"]["lfr_m"]
    cmvn = torch.stack([torch.randn(dim, generator=g) * 0.1 - 8.0, torch.full((dim,), 0.3)])
    return write_funasr_dir(tmp_path / "release", cfg, oracle.state_dict(), TOKENS, cmvn)


def _config(data: Path, tmp_path: Path, name: str = "asr-funasr-seaco-two-stage.yaml") -> Config:
    raw = yaml.safe_load((REPO / "configs" / name).read_text(encoding="utf-8"))
    raw["data"] = {"sources": [{"path": str(data)}], "batch_size": 2}
    raw["train"] = {**raw["train"], "threads": 1, "log_every": 1, "save_every_steps": 1}
    raw["train"]["epochs"] = 1
    for stage in raw.get("stages", []):
        stage["epochs"] = 1
    raw["optim"]["lr"] = raw["optim"]["min_lr"] = 1e-3
    cfg = from_dict(Config, raw)
    check_values(cfg)
    return cfg


def test_two_stage_funasr_training_resumes_and_exports_to_funasr(tmp_path, capsys):
    from speakerforge.cli import main

    release = _release(tmp_path)
    data = write_tone_corpus(tmp_path / "corpus", TEXTS)
    cfg = _config(data, tmp_path)
    init = AsrInit(release)
    straight = AsrTrainer(cfg, tmp_path / "straight", init=init).run()
    with pytest.raises(StopForTest):  # 3 steps per stage: killed after the 1st step of stage 2
        AsrTrainer(cfg, tmp_path / "resumed", RunOptions(stop_after_steps=4), init=init).run()
    resumed = AsrTrainer(cfg, tmp_path / "resumed", init=init).run()
    after = model_weights(straight.parent)
    assert_same_weights(after, model_weights(resumed.parent))

    before = FunasrModel.load(release).model.state_dict()
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert {"encoder", "predictor", "decoder", "bias_encoder", "seaco_decoder", "hotword_output_layer"} <= changed
    assert torch.equal(before["decoder.embed.0.weight"], after["decoder.embed.0.weight"])  # frozen in both stages
    timestamp = [k for k in before if k.startswith(("predictor.upsample_cnn", "predictor.blstm", "predictor.cif_out"))]
    timestamp = [k for k in timestamp if not k.startswith("predictor.cif_output.")]
    assert timestamp and all(torch.equal(before[k], after[k]) for k in timestamp)  # no SeACo loss reaches them

    out = tmp_path / "exported"
    assert main(["--quiet", "asr", "export", "--model", str(straight.parent), "--format", "funasr", str(out)]) == 0
    (tmp_path / "hw.txt").write_text("abc\nhij\n", encoding="utf-8")
    capsys.readouterr()
    theirs = oracle_from_dir(out)
    written = yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8"))
    waves = [torch.from_numpy(tone_utterance(t)) for t in TEXTS[:3]]
    tokens = FunasrTokens(TOKENS)
    for hotword in (None, str(tmp_path / "hw.txt")):
        expected = oracle_ids(theirs, out, written, waves, hotword)
        args = ["--quiet", "asr", "decode", "--model", str(straight.parent), "--data"]
        args += [str(tmp_path / "corpus" / f"u{i}.wav") for i in range(3)]
        assert main(args + (["--hotwords", hotword] if hotword else [])) == 0
        printed = [line.split("\t", 1)[1] for line in capsys.readouterr().out.splitlines()]
        assert printed == [tokens.to_text(ids) for ids in expected]
        assert any(expected)  # the trained model does output tokens
    eval_args = ["--quiet", "asr", "eval", "--model", str(straight.parent), "--data", str(data)]
    assert main(eval_args + ["--hotwords", str(tmp_path / "hw.txt")]) == 0
    assert "true hotwords" in capsys.readouterr().out


def test_funasr_init_refuses_model_args_a_bpe_size_and_a_missing_init(tmp_path):
    release = _release(tmp_path)
    data = write_tone_corpus(tmp_path / "corpus", TEXTS[:2])
    cfg = _config(data, tmp_path)
    cfg.model.args = {"d_model": 16}
    with pytest.raises(ConfigError, match="model.args"):
        AsrTrainer(cfg, tmp_path / "a", init=AsrInit(release))
    cfg.model.args = {}
    cfg.asr["bpe_size"] = 50
    with pytest.raises(ConfigError, match="bpe_size"):
        AsrTrainer(cfg, tmp_path / "b", init=AsrInit(release))
    cfg.asr.pop("bpe_size")
    with pytest.raises(ConfigError, match="--init FUNASR_DIR"):
        AsrTrainer(cfg, tmp_path / "c")


def test_contextual_paraformer_trains_in_one_stage_and_exports_to_funasr(tmp_path, capsys):
    """`configs/asr-funasr-contextual.yaml` on a ContextualParaformer directory: every module trains (the hotword
    encoder through the decoder's CE); the export decodes in FunASR to the ids `asr decode` prints, with a list."""
    from speakerforge.cli import main

    release = _release(tmp_path, contextual=True)
    data = write_tone_corpus(tmp_path / "corpus", TEXTS)
    cfg = _config(data, tmp_path, "asr-funasr-contextual.yaml")
    exp = AsrTrainer(cfg, tmp_path / "ctx", init=AsrInit(release)).run().parent
    before = FunasrModel.load(release).model.state_dict()
    after = model_weights(exp)
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert {"encoder", "predictor", "decoder", "bias_encoder", "bias_embed"} <= changed
    out = tmp_path / "exported"
    assert main(["--quiet", "asr", "export", "--model", str(exp), "--format", "funasr", str(out)]) == 0
    (tmp_path / "hw.txt").write_text("abc\nhij\n", encoding="utf-8")
    capsys.readouterr()
    written = yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8"))
    waves = [torch.from_numpy(tone_utterance(t)) for t in TEXTS[:3]]
    expected = oracle_ids(oracle_from_dir(out), out, written, waves, str(tmp_path / "hw.txt"))
    args = ["--quiet", "asr", "decode", "--model", str(exp), "--hotwords", str(tmp_path / "hw.txt"), "--data"]
    assert main(args + [str(tmp_path / "corpus" / f"u{i}.wav") for i in range(3)]) == 0
    printed = [line.split("\t", 1)[1] for line in capsys.readouterr().out.splitlines()]
    assert printed == [FunasrTokens(TOKENS).to_text(ids) for ids in expected] and any(expected)
    cfg.asr["losses"] = ["ce", "hotword"]
    with pytest.raises(ConfigError, match="no hotword loss"):
        AsrTrainer(cfg, tmp_path / "bad", init=AsrInit(release)).run()
