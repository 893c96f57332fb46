"""What FunASR's Paraformer family shares (`ParaformerBase`): the `model_conf` ids, the `encoder` (SANMEncoder) and
`predictor` (CIF) built from FunASR's `config.yaml`, greedy recognition, and the Paraformer training losses; the
models themselves are in `speakerforge.asr.paraformer`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from speakerforge.asr.cif_predictor import CifPredictor
from speakerforge.asr.funasr_frontend import SpecAugLFR
from speakerforge.asr.sanm import SANMEncoder
from speakerforge.errors import ConfigError


class CTC(nn.Module):
    """FunASR's CTC head: `ctc_lo`."""

    def __init__(self, vocab_size: int, encoder_output_size: int):
        super().__init__()
        self.ctc_lo = nn.Linear(encoder_output_size, vocab_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.ctc_lo(x)


# keys of FunASR's conf sections that the modules here take (the others are training settings or fixed)
_ENCODER_KEYS = (
    "output_size",
    "attention_heads",
    "linear_units",
    "num_blocks",
    "dropout_rate",
    "attention_dropout_rate",
    "kernel_size",
    "sanm_shfit",
)
_ENCODER_FIXED = {"input_layer": "pe", "selfattention_layer_type": "sanm", "normalize_before": True}
_ENCODER_IGNORED = ("positional_dropout_rate", "pos_enc_class", "concat_after")
_DECODER_KEYS = (
    "attention_heads",
    "linear_units",
    "num_blocks",
    "dropout_rate",
    "self_attention_dropout_rate",
    "src_attention_dropout_rate",
    "use_output_layer",
    "wo_input_layer",
    "att_layer_num",
    "kernel_size",
    "sanm_shfit",
)
_DECODER_IGNORED = ("positional_dropout_rate", "normalize_before", "concat_after", "input_layer")
_PREDICTOR_KEYS = (
    "idim",
    "l_order",
    "r_order",
    "threshold",
    "dropout",
    "smooth_factor",
    "noise_threshold",
    "tail_threshold",
    "smooth_factor2",
    "noise_threshold2",
    "upsample_times",
    "upsample_type",
    "use_cif1_cnn",
    "tail_mask",
)


def _section(cfg: dict[str, Any], key: str, allowed: Sequence[str], ignored: Sequence[str] = ()) -> dict[str, Any]:
    conf = dict(cfg.get(key) or {})
    unknown = sorted(k for k in conf if k not in allowed and k not in ignored and k not in _ENCODER_FIXED)
    if unknown:
        raise ConfigError(f"config.yaml {key}: unsupported key(s) {', '.join(unknown)}")
    return {k: v for k, v in conf.items() if k in allowed}


def decoder_args(cfg: dict[str, Any], key: str) -> dict[str, Any]:
    """The decoder arguments of FunASR's `key` section (`decoder_conf`, `seaco_decoder_conf`)."""
    return _section(cfg, key, _DECODER_KEYS, _DECODER_IGNORED)


class ParaformerBase(nn.Module):
    """What FunASR's Paraformer family shares: `model_conf` ids, `encoder` (SANMEncoder) and `predictor` (CIF)
    built from the config; the subclass adds its decoder, `ctc` and hotword modules."""

    MODEL = ""

    def __init__(self, config: dict[str, Any], vocab_size: int, input_size: int):
        super().__init__()
        if config.get("model") != self.MODEL:
            raise ConfigError(f"config.yaml model: {config.get('model')!r}; this class builds {self.MODEL}")
        mc = dict(config.get("model_conf") or {})
        self.config = config
        self.vocab_size = vocab_size
        self.blank_id = int(mc.get("blank_id", 0))
        self.sos = int(mc.get("sos", 1))
        self.eos = int(mc.get("eos", 2))
        self.predictor_bias = int(mc.get("predictor_bias", 0))
        self.sampling_ratio = float(mc.get("sampling_ratio", 0.2))
        # training (FunASR's defaults)
        self.lsm_weight = float(mc.get("lsm_weight", 0.0))
        self.length_normalized_loss = bool(mc.get("length_normalized_loss", False))
        self.ctc_weight = float(mc.get("ctc_weight", 0.5))
        self.predictor_weight = float(mc.get("predictor_weight", 0.0))
        if config.get("encoder") != "SANMEncoder":
            raise ConfigError(f"config.yaml encoder: {config.get('encoder')!r}; supported: SANMEncoder")
        enc_raw = dict(config.get("encoder_conf") or {})
        for k, v in _ENCODER_FIXED.items():
            if k in enc_raw and enc_raw[k] != v:
                raise ConfigError(f"config.yaml encoder_conf.{k}: {enc_raw[k]!r}; supported: {v!r}")
        self.encoder = SANMEncoder(input_size, **_section(config, "encoder_conf", _ENCODER_KEYS, _ENCODER_IGNORED))
        self.specaug: SpecAugLFR | None = None
        self.specaug_problem = ""  # why training cannot apply the config's specaug (decoding does not need it)
        if config.get("specaug") == "SpecAugLFR":
            try:
                self.specaug = SpecAugLFR(**dict(config.get("specaug_conf") or {}))
            except (ConfigError, TypeError) as exc:
                self.specaug_problem = f"specaug SpecAugLFR: {exc}"
        elif config.get("specaug"):
            self.specaug_problem = f"specaug {config.get('specaug')!r}: only SpecAugLFR is supported"
        pred = config.get("predictor")
        if pred not in ("CifPredictorV3", "CifPredictorV2"):
            raise ConfigError(f"config.yaml predictor: {pred!r}; supported: CifPredictorV3, CifPredictorV2")
        pconf = _section(config, "predictor_conf", _PREDICTOR_KEYS)
        if pred == "CifPredictorV2":
            pconf["upsample_type"] = None
        self.predictor = CifPredictor(**pconf)

    def encode(self, feats: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        return self.encoder(feats, lengths)

    def decode_logp(
        self, feats: Tensor, lengths: Tensor, hotwords: Sequence[Sequence[int]] | None = None, nfilter: int = 50
    ) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def recognize(
        self, feats: Tensor, lengths: Tensor, hotwords: Sequence[Sequence[int]] | None = None, nfilter: int = 50
    ) -> list[list[int]]:
        """Greedy token ids per utterance, `<blank>`, `<s>` and `</s>` dropped (FunASR's output)."""
        logp, num = self.decode_logp(feats, lengths, hotwords, nfilter)
        drop = {self.blank_id, self.sos, self.eos}
        return [[t for t in logp[i, : int(num[i])].argmax(-1).tolist() if t not in drop] for i in range(len(num))]

    # ------------------------------------------------------------------------------------------------ training
    def forward(
        self,
        feats: Tensor | None,
        feat_lengths: Tensor | None,
        targets: Tensor,
        target_lengths: Tensor,
        hotwords: Tensor | None = None,
        hotword_lengths: Tensor | None = None,
        hotword_labels: Tensor | None = None,
        losses: tuple[str, ...] = ("ce", "cif"),
        asr_states: Any = None,
    ) -> dict[str, Tensor]:
        """FunASR's loss terms named in `losses` (targets padded with -1): `ce` (Paraformer's decoder loss with the
        glancing sampler and label smoothing), `cif` (the predictor's MAE), `ctc`, and for SeACo `hotword` (the
        bias branch against `hotword_labels`, `NO_BIAS` outside the hotword spans), plus `ce_acc` and
        `hotword_acc` as `[correct, counted]`. A ContextualParaformer's decoder reads the batch's hotword list in
        every term, as FunASR's `_calc_att_clas_loss`. In training mode the config's SpecAugLFR masks the
        features first."""
        from speakerforge.asr import funasr_losses as fl

        if asr_states is not None or feats is None or feat_lengths is None:
            raise ValueError("a FunASR model computes its ASR states at every step (no cache)")
        out: dict[str, Tensor] = {}
        if self.training:  # as FunASR's Paraformer.encode
            if self.specaug_problem:
                raise ConfigError(f"config.yaml {self.specaug_problem}")
            if self.specaug is not None:
                feats = self.specaug(feats)
        enc, enc_len = self.encode(feats, feat_lengths)
        if "ctc" in losses:
            out["ctc"] = self._ctc_loss(enc, enc_len, targets, target_lengths)
        ys, ys_len = targets, target_lengths
        if self.predictor_bias == 1:
            ys, ys_len = fl.add_eos(targets, target_lengths, self.eos), target_lengths + 1
        pred = self.predictor(enc, enc_len, ys_len)
        emb = pred.embeds
        if "cif" in losses:
            out["cif"] = fl.mae_loss(ys_len, pred.token_num, self.length_normalized_loss)
        context = self._training_context(hotwords, hotword_lengths, enc.shape[0])
        if "ce" in losses:
            out["ce"], out["ce_acc"] = self._ce_loss(enc, enc_len, emb, ys, ys_len, context)
        self._extra_losses(out, losses, enc, enc_len, emb, ys_len, hotwords, hotword_lengths, hotword_labels)
        return out

    def _ctc_loss(self, enc: Tensor, enc_len: Tensor, targets: Tensor, target_lengths: Tensor) -> Tensor:
        """The CTC term over the encoder frames (summed, divided by the batch size, as FunASR's `CTC`)."""
        ctc_head = getattr(self, "ctc", None)
        if ctc_head is None:
            raise ValueError("loss 'ctc' selected but the model has no ctc head (model_conf.ctc_weight: 0)")
        logp = ctc_head(enc).log_softmax(-1).transpose(0, 1)
        ctc = F.ctc_loss(logp, targets.clamp_min(0), enc_len, target_lengths, self.blank_id, "sum", True)
        return ctc / targets.shape[0]

    def _ce_loss(
        self, enc: Tensor, enc_len: Tensor, emb: Tensor, ys: Tensor, ys_len: Tensor, context: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """(`ce`, `ce_acc`): the decoder's label-smoothed loss on glancing-sampled inputs (when `sampling_ratio`
        is positive), and the accuracy of the first, unsampled pass."""
        from speakerforge.asr import funasr_losses as fl

        first = None
        sem = emb
        if self.sampling_ratio > 0:
            sem, first = fl.glancing_inputs(
                lambda e: self._decode(enc, enc_len, e, ys_len, context)[0],
                self._token_embedding(),
                ys,
                ys_len,
                emb,
                self.sampling_ratio,
                count_padding=context is not None,  # FunASR's ContextualParaformer.sampler
            )
        logits, _ = self._decode(enc, enc_len, sem, ys_len, context)
        loss = fl.label_smoothing_loss(logits, ys, self.lsm_weight, self.length_normalized_loss)
        return loss, fl.accuracy(first if first is not None else logits, ys)

    def _training_context(self, hotwords: Tensor | None, lengths: Tensor | None, batch: int) -> Tensor | None:
        return None

    def _decode(
        self, enc: Tensor, enc_len: Tensor, embeds: Tensor, lengths: Tensor, context: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _token_embedding(self) -> Any:
        raise NotImplementedError

    def _extra_losses(self, out: dict[str, Tensor], losses: tuple[str, ...], *args: Any) -> None:
        """Losses of the subclass beyond the Paraformer terms (SeACo: `hotword`)."""

    def _predict(self, enc: Tensor, enc_len: Tensor) -> tuple[Tensor, Tensor]:
        """(CIF embeddings `[B, K, D]` cut or padded to the largest rounded token count, counts `[B]`)."""
        pred = self.predictor(enc, enc_len)
        num = pred.token_num.round().long()
        k_max = int(num.max().item()) if num.numel() else 0
        return F.pad(pred.embeds, (0, 0, 0, max(0, k_max - pred.embeds.shape[1])))[:, :k_max], num
