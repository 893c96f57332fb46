"""`speakerforge asr export --model SRC --format funasr OUT_DIR` against FunASR (PyPI `funasr`, test-only): FunASR's
own model class built from the written `config.yaml`, `model.pt` loaded strictly, decodes to the token ids and
text of `speakerforge asr decode`."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from speakerforge.asr.funasr_dir import FunasrModel, FunasrTokens, read_hotword_list
from speakerforge.cli import main
from speakerforge.errors import CheckpointError, ConfigError
from tests.asr.funasr_oracle import (
    SEACO_SMALL,
    contextual_small,
    oracle_contextual,
    oracle_from_dir,
    oracle_ids,
    oracle_seaco,
    small_tokens,
    write_release_dir,
)

TOKENS = small_tokens()


def _waves() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return [0.1 * torch.randn(n, generator=g) for n in (16000, 12000)]


@pytest.mark.parametrize("kind", ["seaco", "contextual"])
def test_export_of_a_funasr_dir_decodes_in_funasr_as_in_speakerforge(tmp_path, kind, capsys):
    config = dict(SEACO_SMALL) if kind == "seaco" else contextual_small()
    config["frontend_conf"] = {k: v for k, v in config["frontend_conf"].items() if k != "dither"}
    oracle = oracle_seaco(config, len(TOKENS)) if kind == "seaco" else oracle_contextual(config, len(TOKENS))
    src = write_release_dir(tmp_path / "release", config, oracle.state_dict(), TOKENS)
    (src / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")  # no dither
    out = tmp_path / "exported"
    assert main(["--quiet", "asr", "export", "--model", str(src), "--format", "funasr", str(out)]) == 0
    capsys.readouterr()
    written = yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8"))
    assert written["frontend_conf"]["dither"] == 0.0  # FunASR would dither at decoding without the key
    assert written["model"] == config["model"]
    theirs = oracle_from_dir(out)  # FunASR's class from the written config.yaml, model.pt loaded strictly
    (tmp_path / "hw.txt").write_text(f"{TOKENS[5]}{TOKENS[6]}\n{TOKENS[9]}\nhello\n", encoding="utf-8")
    mine = FunasrModel.load(out)
    waves = _waves()
    for hotword in (None, str(tmp_path / "hw.txt")):
        expected = oracle_ids(theirs, out, written, waves, hotword)
        assert mine.decode_ids(waves, read_hotword_list(hotword) if hotword else []) == expected
        assert [FunasrTokens(TOKENS).to_text(i) for i in expected] == mine.transcribe(
            waves, read_hotword_list(hotword) if hotword else []
        )


def test_export_reads_tokens_txt_and_refuses_a_used_folder_or_a_foreign_file(tmp_path):
    oracle = oracle_seaco(SEACO_SMALL, len(TOKENS))
    src = write_release_dir(tmp_path / "release", SEACO_SMALL, oracle.state_dict(), TOKENS)
    (src / "tokens.json").unlink()
    (src / "tokens.txt").write_text("\n".join(TOKENS) + "\n", encoding="utf-8")  # as older releases ship it
    from speakerforge.asr.export import export_asr

    out = export_asr(src, tmp_path / "out")
    assert json.loads((out / "tokens.json").read_text(encoding="utf-8")) == TOKENS
    with pytest.raises(ConfigError, match="new or empty"):
        export_asr(src, out)
    with pytest.raises(CheckpointError, match="not an ASR model file|model file"):
        export_asr(tmp_path / "release" / "model.pt", tmp_path / "out2")
