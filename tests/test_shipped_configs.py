"""Every config under configs/ loads, its sections validate and its model builds: a recipe edited without a run
(a renamed key, a typo in a model argument) fails here instead of minutes into someone's training."""

from __future__ import annotations

from pathlib import Path

import pytest

from speakerforge.config import load_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_the_configs_folder_is_found():
    assert len(CONFIGS) >= 10


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_loads_and_builds(path):
    cfg = load_config(path)
    if cfg.model.name == "funasr":  # the network: FUNASR_DIR of `asr train --init`, or model.args (a new one)
        from speakerforge.asr.funasr_dir import FunasrModel
        from speakerforge.asr.trainer import parse_asr_config

        parse_asr_config(cfg.asr, str(path))
        if cfg.model.args:
            tokens = ["<blank>", "<s>", "</s>", "a", "<no_bias>", "<unk>"]
            config = {**cfg.model.args, "model_conf": {**cfg.model.args["model_conf"], "NO_BIAS": 4}}
            FunasrModel.build(config, tokens, None)
        return
    from speakerforge.models.registry import build_model

    build_model(cfg.model.name, **cfg.model.args)
    if cfg.ssl:
        from speakerforge.train.pretrain import parse_ssl_config

        parse_ssl_config(cfg.ssl, str(path))
