"""A new FunASR model from a FunASR `config.yaml` (`asr train` without `--init`): what a release ships besides the
network, made from the training data.

- **Tokens** are sentencepiece BPE pieces of the training transcripts in FunASR's English `seg_dict` form: a word is
  its pieces, every piece but the last marked `@@` (`treekreek` -> `tree@@ kreek`), so `tokens.json` holds both
  forms of each piece; then `<no_bias>` (SeACo's `NO_BIAS`) and `<unk>`, after FunASR's `<blank>`, `<s>`, `</s>`.
  The `seg_dict` lists every training word; a word outside it (a new hotword) is split by the same BPE model,
  which the model directory keeps as `bpe.model` (FunASR itself maps such a word to `<unk>`: export with the
  hotwords you will use, `asr export --hotwords`, to add them to its `seg_dict`).
- **CMVN** (`am.mvn`) is the mean and standard deviation of the frontend's LFR features over the training
  utterances, as FunASR's `compute_cmvn` makes it.
The result is a `FunasrModel` like one read from a release: training, decoding and export are the same code.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from speakerforge.asr.funasr_dir import FunasrModel, FunasrTokens
from speakerforge.asr.vocab import PieceSplitter, normalize_text, train_sentencepiece
from speakerforge.errors import ConfigError

SPECIAL_HEAD = ("<blank>", "<s>", "</s>")
NO_BIAS, UNK = "<no_bias>", "<unk>"


def learn_tokens(texts: list[str], bpe_size: int) -> FunasrTokens:
    """FunASR tokens, `seg_dict` and splitter learnt from the training transcripts (see the module docstring)."""
    splitter = PieceSplitter(train_sentencepiece(texts, bpe_size))
    pieces = [form for core in splitter.cores() for form in (core, core + "@@")]
    tokens = [*SPECIAL_HEAD, *pieces, NO_BIAS, UNK]
    words = sorted({w for t in texts for w in normalize_text(t).split()})
    seg_dict = {w: " ".join(splitter(w)) for w in words}
    return FunasrTokens(tokens, seg_dict, UNK, splitter)


def compute_cmvn(frontend_conf: dict[str, Any], waves: Iterable[Tensor]) -> Tensor:
    """`[2, D]` (shift, scale) = (-mean, 1 / std) of the LFR features of `waves`, no dither (FunASR's am.mvn)."""
    from speakerforge.asr.funasr_frontend import WavFrontend

    conf = {k: v for k, v in frontend_conf.items() if k != "cmvn_file"}
    frontend = WavFrontend(None, **conf).eval()
    dim = frontend.output_size()
    total, total_sq = torch.zeros(dim, dtype=torch.float64), torch.zeros(dim, dtype=torch.float64)
    count = 0
    for w in waves:
        x = frontend.features(w).to(torch.float64)
        total += x.sum(0)
        total_sq += (x * x).sum(0)
        count += x.shape[0]
    if count < 2:
        raise ConfigError("CMVN: no training features to compute am.mvn from")
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(1e-10).sqrt()
    return torch.stack([-mean, 1.0 / std]).to(torch.float32)


def new_funasr_model(
    config: dict[str, Any], texts: list[str], cmvn: Tensor | Iterable[Tensor], bpe_size: int, where: str = "model.args"
) -> FunasrModel:
    """A randomly initialised FunASR model of `config` (FunASR's `config.yaml` structure), with tokens learnt from
    `texts` and `cmvn` (or the CMVN of these waveforms); SeACo's `model_conf.NO_BIAS` (and `sos`/`eos`) point at the
    new tokens."""
    if not isinstance(config, dict) or not config.get("model"):
        raise ConfigError(f"{where}: a FunASR config.yaml (model, model_conf, encoder_conf, ...) for a new model")
    cfg = copy.deepcopy(config)
    tokens = learn_tokens(texts, bpe_size)
    assert tokens.splitter is not None
    mc = cfg.setdefault("model_conf", {})
    mc.update(sos=1, eos=2, blank_id=0)
    if cfg["model"] == "SeacoParaformer":
        mc["NO_BIAS"] = tokens.index[NO_BIAS]
    cfg["tokenizer"] = "CharTokenizer"
    cfg["tokenizer_conf"] = {"unk_symbol": UNK, "split_with_space": True}
    if not isinstance(cmvn, Tensor):
        cmvn = compute_cmvn(cfg.get("frontend_conf") or {}, cmvn)
    fm = FunasrModel.build(cfg, tokens.tokens, cmvn, tokens.seg_dict, bpe_model=tokens.splitter.model_proto)
    fm.model.train()
    return fm
