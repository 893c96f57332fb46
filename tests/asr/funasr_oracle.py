"""FunASR (PyPI `funasr` 1.4.x, installed by `make test` without its dependencies) as the oracle of the parity tests.

`librosa` is only imported by FunASR's audio-file loader, which the tests never reach (they pass tensors), so a
stand-in module is registered when it is not installed. `SEACO_SMALL` is the structure of the released
`speech_seaco_paraformer_large_asr_nat-zh-cn-16k-common-vocab8404-pytorch` `config.yaml` at sizes a CI run affords
(the released one: 512 wide, 50 encoder blocks, 16 decoder blocks, a 6-layer seaco decoder, 7/6 LFR, 8404 tokens).
"""

from __future__ import annotations

import copy
import importlib.util
import sys
import types
from typing import Any

import torch

if importlib.util.find_spec("librosa") is None:  # FunASR's file loader imports it at module level
    sys.modules["librosa"] = types.ModuleType("librosa")

import funasr.frontends.wav_frontend as fa_frontend
import funasr.models.paraformer.decoder
import funasr.models.sanm.encoder  # noqa: F401  (registers SANMEncoder)
from funasr.models.seaco_paraformer.model import SeacoParaformer as OracleSeaco

SEACO_SMALL: dict[str, Any] = {
    "model": "SeacoParaformer",
    "model_conf": {
        "ctc_weight": 0.0,
        "lsm_weight": 0.1,
        "length_normalized_loss": True,
        "predictor_weight": 1.0,
        "predictor_bias": 1,
        "sampling_ratio": 0.75,
        "inner_dim": 16,
        "bias_encoder_type": "lstm",
        "bias_encoder_bid": False,
        "seaco_lsm_weight": 0.1,
        "seaco_length_normalized_loss": True,
        "NO_BIAS": 30,
        "seaco_weight": 1.0,
    },
    "encoder": "SANMEncoder",
    "encoder_conf": {
        "output_size": 16,
        "attention_heads": 2,
        "linear_units": 24,
        "num_blocks": 3,
        "dropout_rate": 0.1,
        "positional_dropout_rate": 0.1,
        "attention_dropout_rate": 0.1,
        "input_layer": "pe",
        "pos_enc_class": "SinusoidalPositionEncoder",
        "normalize_before": True,
        "kernel_size": 11,
        "sanm_shfit": 0,
        "selfattention_layer_type": "sanm",
    },
    "decoder": "ParaformerSANMDecoder",
    "decoder_conf": {
        "attention_heads": 2,
        "linear_units": 24,
        "num_blocks": 3,
        "dropout_rate": 0.1,
        "positional_dropout_rate": 0.1,
        "self_attention_dropout_rate": 0.1,
        "src_attention_dropout_rate": 0.1,
        "att_layer_num": 2,
        "kernel_size": 11,
        "sanm_shfit": 0,
    },
    "seaco_decoder": "ParaformerSANMDecoder",
    "seaco_decoder_conf": {
        "attention_heads": 2,
        "linear_units": 24,
        "num_blocks": 4,
        "dropout_rate": 0.1,
        "positional_dropout_rate": 0.1,
        "self_attention_dropout_rate": 0.1,
        "src_attention_dropout_rate": 0.1,
        "kernel_size": 21,
        "sanm_shfit": 0,
        "use_output_layer": False,
        "wo_input_layer": True,
    },
    "predictor": "CifPredictorV3",
    "predictor_conf": {
        "idim": 16,
        "threshold": 1.0,
        "l_order": 1,
        "r_order": 1,
        "tail_threshold": 0.45,
        "smooth_factor2": 0.25,
        "noise_threshold2": 0.01,
        "upsample_times": 3,
        "use_cif1_cnn": False,
        "upsample_type": "cnn_blstm",
    },
    "frontend": "WavFrontend",
    "frontend_conf": {
        "fs": 16000,
        "window": "hamming",
        "n_mels": 20,
        "frame_length": 25,
        "frame_shift": 10,
        "lfr_m": 7,
        "lfr_n": 6,
        "dither": 0.0,
    },
    "specaug": "SpecAugLFR",
    "specaug_conf": {
        "apply_time_warp": False,
        "apply_freq_mask": True,
        "freq_mask_width_range": [0, 30],
        "lfr_rate": 6,
        "num_freq_mask": 1,
        "apply_time_mask": True,
        "time_mask_width_range": [0, 12],
        "num_time_mask": 1,
    },
    "tokenizer": "CharTokenizer",
    "tokenizer_conf": {"unk_symbol": "<unk>", "split_with_space": True},
    "ctc_conf": {"dropout_rate": 0.0, "ctc_type": "builtin", "reduce": True, "ignore_nan_grad": True},
    "normalize": None,
}


def small_tokens(n: int = 40) -> list[str]:
    """A vocabulary laid out as FunASR's: `<blank>`, `<s>`, `</s>`, characters, `<unk>` last."""
    chars = [chr(0x4E00 + i) for i in range(n - 4)]
    return ["<blank>", "<s>", "</s>", *chars, "<unk>"]


def oracle_seaco(config: dict[str, Any], vocab_size: int, seed: int = 0) -> OracleSeaco:
    """FunASR's SeacoParaformer built from `config` with random weights (LayerNorms and biases too), in eval mode."""
    cfg = copy.deepcopy(config)
    fc = cfg["frontend_conf"]
    torch.manual_seed(seed)
    model = OracleSeaco(**cfg, **cfg["model_conf"], vocab_size=vocab_size, input_size=fc["n_mels"] * fc["lfr_m"])
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".norm" in name or "after_norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def oracle_frontend(config: dict[str, Any], cmvn_file: str | None) -> Any:
    conf = {k: v for k, v in config["frontend_conf"].items() if k != "cmvn_file"}
    return fa_frontend.WavFrontend(cmvn_file=cmvn_file, **conf).eval()


def released_seaco_config() -> dict[str, Any]:
    """`SEACO_SMALL` at the released sizes (512 wide, 50 + 16 + 6 blocks, 80 mels, LFR 7/6, NO_BIAS 8377)."""
    cfg = copy.deepcopy(SEACO_SMALL)
    cfg["model_conf"].update(inner_dim=512, NO_BIAS=8377)
    cfg["encoder_conf"].update(output_size=512, attention_heads=4, linear_units=2048, num_blocks=50)
    cfg["decoder_conf"].update(attention_heads=4, linear_units=2048, num_blocks=16, att_layer_num=16)
    cfg["seaco_decoder_conf"].update(attention_heads=4, linear_units=1024)
    cfg["predictor_conf"].update(idim=512)
    cfg["frontend_conf"].update(n_mels=80)
    return cfg


def contextual_small() -> dict[str, Any]:
    """The released `speech_paraformer-large-contextual_asr_nat-zh-cn-16k-common-vocab8404` config's structure
    (ContextualParaformer, ContextualParaformerDecoder, CifPredictorV2 with a tail, inner_dim = the model width) at
    `SEACO_SMALL`'s sizes."""
    cfg = copy.deepcopy(SEACO_SMALL)
    cfg["model"] = "ContextualParaformer"
    cfg["model_conf"] = {
        "ctc_weight": 0.0,
        "lsm_weight": 0.1,
        "length_normalized_loss": True,
        "predictor_weight": 1.0,
        "predictor_bias": 1,
        "sampling_ratio": 0.75,
        "inner_dim": cfg["encoder_conf"]["output_size"],
    }
    cfg["decoder"] = "ContextualParaformerDecoder"
    cfg["predictor"] = "CifPredictorV2"
    cfg["predictor_conf"] = {"idim": 16, "threshold": 1.0, "l_order": 1, "r_order": 1, "tail_threshold": 0.45}
    del cfg["seaco_decoder"], cfg["seaco_decoder_conf"]
    return cfg


def oracle_contextual(config: dict[str, Any], vocab_size: int, seed: int = 0) -> Any:
    """FunASR's ContextualParaformer from `config`, random weights (LayerNorms and biases too), eval mode."""
    import funasr.models.contextual_paraformer.decoder  # noqa: F401  (registers ContextualParaformerDecoder)
    from funasr.models.contextual_paraformer.model import ContextualParaformer

    cfg = copy.deepcopy(config)
    fc = cfg["frontend_conf"]
    torch.manual_seed(seed)
    model = ContextualParaformer(
        **cfg, **cfg["model_conf"], vocab_size=vocab_size, input_size=fc["n_mels"] * fc["lfr_m"]
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".norm" in name or "after_norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def write_release_dir(path: Any, config: dict[str, Any], state: dict[str, torch.Tensor], tokens: list[str]) -> Any:
    """A FunASR model directory written from an oracle's state (the stand-in for a downloaded release): a random
    `am.mvn` and a `seg_dict` with "hello" as two pieces and every character as itself."""
    from speakerforge.asr.funasr_dir import write_funasr_dir

    fc = config["frontend_conf"]
    dim = fc["n_mels"] * fc["lfr_m"]
    g = torch.Generator().manual_seed(5)
    cmvn = torch.stack([torch.randn(dim, generator=g), torch.rand(dim, generator=g) + 0.5])
    seg_dict = {"hello": f"{tokens[10]} {tokens[11]}", **{c: c for c in tokens[3:-1]}}
    return write_funasr_dir(path, config, state, tokens, cmvn, seg_dict)


def oracle_ids(oracle: Any, d: Any, config: dict[str, Any], waves: list[torch.Tensor], hotword: str | None) -> list:
    """FunASR's `inference` token ids (batch size 1) with its own hotword list from `hotword` (file or string)."""
    from funasr.tokenizer.char_tokenizer import CharTokenizer

    seg = str(d / "seg_dict") if (d / "seg_dict").is_file() else None
    tok = CharTokenizer(token_list=str(d / "tokens.json"), seg_dict=seg)

    class Front:  # generate_hotwords_list finds seg_dict beside the frontend's am.mvn
        cmvn_file = str(d / "am.mvn")

    hw_list = type(oracle).generate_hotwords_list(oracle, hotword, tokenizer=tok, frontend=Front())
    oracle.generate_hotwords_list = lambda *a, _hw=hw_list, **k: _hw  # tokenizer=None: `inference` returns ids
    try:
        front = oracle_frontend(config, str(d / "am.mvn"))
        return [
            oracle.inference([w], key=["u"], tokenizer=None, frontend=front, device="cpu")[0][0]["token_int"]
            for w in waves
        ]
    finally:
        del oracle.generate_hotwords_list


def oracle_from_dir(d: Any) -> Any:
    """FunASR's model for a local model directory, built as `AutoModel.build_model` builds it (AutoModel itself
    imports omegaconf, which the test-only install lacks): the class from FunASR's registry by `config.yaml`'s
    `model`, `**config, **model_conf`, the vocabulary size of `tokens.json`, the frontend's output size, and
    `model.pt` loaded with `strict=True`."""
    import json
    from pathlib import Path

    import funasr.models.contextual_paraformer.decoder  # registers the classes
    import funasr.models.contextual_paraformer.model  # noqa: F401
    import yaml
    from funasr.register import tables

    d = Path(d)
    cfg = yaml.safe_load((d / "config.yaml").read_text(encoding="utf-8"))
    vocab = len(json.loads((d / "tokens.json").read_text(encoding="utf-8")))
    front = fa_frontend.WavFrontend(**{**cfg["frontend_conf"], "cmvn_file": str(d / "am.mvn")})
    model = tables.model_classes[cfg["model"]](
        **cfg, **cfg["model_conf"], vocab_size=vocab, input_size=front.output_size()
    )
    model.load_state_dict(torch.load(d / "model.pt", weights_only=True), strict=True)
    return model.eval()
