"""FunASR's Paraformer family with FunASR's parameter names and shapes, built from FunASR's own `config.yaml`:
`SeacoParaformer` and `ContextualParaformer` (below).

`SeacoParaformer` (FunASR's SeACo-Paraformer, `model: SeacoParaformer`) holds:
- `encoder`: `SANMEncoder` (`speakerforge.asr.sanm`);
- `predictor`: `CifPredictorV3` (CIF weights from a conv + linear, FunASR's tail frame at decoding, and the
  3x upsampled timestamp branch `upsample_cnn` + `blstm` + `cif_output2`) or `CifPredictorV2` (no upsampling);
- `decoder`: `ParaformerSANMDecoder`; `decoder.embed.0` is also what the hotword branch reads;
- `bias_encoder`: a 2-layer LSTM over each hotword's `decoder.embed` vectors, its last valid step per hotword;
- `seaco_decoder`: a `ParaformerSANMDecoder` without input or output layer, run with the CIF embeddings and with the
  decoder states as queries over the hotword vectors; the two outputs are summed;
- `hotword_output_layer`: hidden -> vocabulary; FunASR's `NO_BIAS` token id means "no hotword here";
- `ctc` (`ctc.ctc_lo`) when the config has `ctc_weight > 0` (for the CTC context-graph decoding).

Decoding with a hotword list is FunASR's: the list ends with `[sos]`; a list of more than `nfilter` (50) entries is
first cut to the `nfilter` entries that layer 5 of the seaco decoder attends to most (summed over heads and tokens,
plus the last entry); then at each token the bias distribution replaces the decoder's where its argmax is not
`NO_BIAS` (`seaco_weight` 1; other weights interpolate the log-probabilities as FunASR does). FunASR filters a batch
by its first utterance; here each utterance is filtered by itself, which is FunASR's result at batch size 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from speakerforge.asr.cif import fire_weights, funasr_cif, funasr_cif_v1
from speakerforge.asr.funasr_frontend import SpecAugLFR
from speakerforge.asr.sanm import ContextualParaformerDecoder, ParaformerSANMDecoder, SANMEncoder, sequence_mask
from speakerforge.errors import CheckpointError, ConfigError

ASR_PART = ("encoder", "predictor", "decoder", "ctc")
HOTWORD_PART = ("bias_encoder", "seaco_decoder", "hotword_output_layer")
ASF_LAYER = 5  # FunASR's forward_asf6: the attention of seaco_decoder.decoders[5] ranks the hotwords


@dataclass
class PredictorOut:
    embeds: Tensor  # [B, K, D] CIF token embeddings
    token_num: Tensor  # [B] float: floor(sum + tail) at decoding, the raw alpha sum in training
    alphas: Tensor  # [B, T(+1)] the weights integrated (with the tail frame at decoding)
    num_tokens: Tensor  # [B] long: tokens fired


class CifPredictor(nn.Module):
    """FunASR's `CifPredictorV2` (`upsample_type=None`) and `CifPredictorV3` (`cnn`, `cnn_blstm`)."""

    def __init__(
        self,
        idim: int,
        l_order: int = 1,
        r_order: int = 1,
        threshold: float = 1.0,
        dropout: float = 0.1,
        smooth_factor: float = 1.0,
        noise_threshold: float = 0.0,
        tail_threshold: float = 0.0,
        smooth_factor2: float = 1.0,
        noise_threshold2: float = 0.0,
        upsample_times: int = 5,
        upsample_type: str | None = "cnn",
        use_cif1_cnn: bool = True,
        tail_mask: bool = True,
    ):
        super().__init__()
        if threshold != 1.0:
            raise ConfigError(f"predictor_conf.threshold {threshold}: only 1.0 is supported")
        if upsample_type not in (None, "cnn", "cnn_blstm"):
            raise ConfigError(f"predictor_conf.upsample_type {upsample_type!r}: choose cnn or cnn_blstm")
        self.pad = nn.ConstantPad1d((l_order, r_order), 0.0)
        self.cif_conv1d = nn.Conv1d(idim, idim, l_order + r_order + 1)
        self.cif_output = nn.Linear(idim, 1)
        self.smooth_factor, self.noise_threshold, self.tail_threshold = smooth_factor, noise_threshold, tail_threshold
        self.smooth_factor2, self.noise_threshold2 = smooth_factor2, noise_threshold2
        self.upsample_times, self.upsample_type, self.use_cif1_cnn = upsample_times, upsample_type, use_cif1_cnn
        self.tail_mask = tail_mask
        if upsample_type is not None:
            self.upsample_cnn = nn.ConvTranspose1d(idim, idim, upsample_times, upsample_times)
            self.blstm = (
                nn.LSTM(idim, idim, 1, batch_first=True, bidirectional=True) if upsample_type == "cnn_blstm" else None
            )
            self.cif_output2 = nn.Linear(idim * 2 if upsample_type == "cnn_blstm" else idim, 1)

    def _conv(self, hidden: Tensor) -> tuple[Tensor, Tensor]:
        context = hidden.transpose(1, 2)
        return context, torch.relu(self.cif_conv1d(self.pad(context)))

    def forward(self, hidden: Tensor, lengths: Tensor, target_lengths: Tensor | None = None) -> PredictorOut:
        """Token embeddings of encoder frames `[B, T, D]`; with `target_lengths` (training) the alphas are scaled
        to fire that many tokens, else FunASR's tail frame (weight `tail_threshold`) closes the last token."""
        mask = sequence_mask(lengths, hidden.shape[1])
        _, out = self._conv(hidden)
        alphas = torch.sigmoid(self.cif_output(out.transpose(1, 2))).squeeze(-1)
        alphas = F.relu(alphas * self.smooth_factor - self.noise_threshold) * mask
        token_num = alphas.sum(-1)
        if target_lengths is not None:
            alphas = alphas * (target_lengths.to(alphas.dtype) / token_num)[:, None]
            num = target_lengths.long()
        else:
            if self.tail_threshold > 0:
                b = hidden.shape[0]
                if self.tail_mask:
                    ones = torch.ones(b, 1, device=mask.device)
                    tail = (torch.cat([ones, mask], 1) - torch.cat([mask, torch.zeros_like(ones)], 1)) * (
                        self.tail_threshold
                    )
                    alphas = torch.cat([alphas, torch.zeros_like(ones)], 1) + tail
                else:
                    alphas = torch.cat([alphas, alphas.new_full((b, 1), self.tail_threshold)], 1)
                hidden = torch.cat([hidden, hidden.new_zeros(b, 1, hidden.shape[2])], 1)
                token_num = torch.floor(alphas.sum(-1))
            num = torch.floor(alphas.sum(-1)).long()  # fires: the integer boundaries crossed
        if target_lengths is not None:  # training: FunASR's own integrators, with their float behaviour
            embeds = funasr_cif(hidden, alphas) if self.upsample_type is not None else funasr_cif_v1(hidden, alphas)
        else:
            embeds = torch.bmm(fire_weights(alphas, num), hidden)
        return PredictorOut(embeds, token_num, alphas, num)

    def upsampled_alphas(self, hidden: Tensor, lengths: Tensor, token_num: Tensor | None = None) -> Tensor:
        """The timestamp branch's alphas `[B, T * upsample_times]`, scaled to `token_num` when given
        (FunASR's `get_upsample_timestamp` `us_alphas`)."""
        if self.upsample_type is None:
            raise ConfigError("this predictor (CifPredictorV2) has no timestamp branch")
        context, out = self._conv(hidden)
        x = self.upsample_cnn(out if self.use_cif1_cnn else context).transpose(1, 2)
        if self.blstm is not None:
            x = self.blstm(x)[0]
        alphas2 = F.relu(torch.sigmoid(self.cif_output2(x)) * self.smooth_factor2 - self.noise_threshold2)
        mask = sequence_mask(lengths, hidden.shape[1]).repeat_interleave(self.upsample_times, dim=1)
        alphas2 = alphas2.squeeze(-1) * mask
        if token_num is not None:
            alphas2 = alphas2 * (token_num.to(alphas2.dtype) / alphas2.sum(-1))[:, None]
        return alphas2


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


class _Paraformer(nn.Module):
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
        ctc_head = getattr(self, "ctc", None)
        if "ctc" in losses:
            if ctc_head is None:
                raise ValueError("loss 'ctc' selected but the model has no ctc head (model_conf.ctc_weight: 0)")
            logp = ctc_head(enc).log_softmax(-1).transpose(0, 1)
            ctc = F.ctc_loss(logp, targets.clamp_min(0), enc_len, target_lengths, self.blank_id, "sum", True)
            out["ctc"] = ctc / targets.shape[0]
        ys, ys_len = targets, target_lengths
        if self.predictor_bias == 1:
            ys, ys_len = fl.add_eos(targets, target_lengths, self.eos), target_lengths + 1
        pred = self.predictor(enc, enc_len, ys_len)
        emb = pred.embeds
        if "cif" in losses:
            out["cif"] = fl.mae_loss(ys_len, pred.token_num, self.length_normalized_loss)
        context = self._training_context(hotwords, hotword_lengths, enc.shape[0])
        if "ce" in losses:
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
            out["ce"] = fl.label_smoothing_loss(logits, ys, self.lsm_weight, self.length_normalized_loss)
            out["ce_acc"] = fl.accuracy(first if first is not None else logits, ys)
        self._extra_losses(out, losses, enc, enc_len, emb, ys_len, hotwords, hotword_lengths, hotword_labels)
        return out

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


class SeacoParaformer(_Paraformer):
    """FunASR's SeACo-Paraformer (see the module docstring); built from FunASR's config dict."""

    MODEL = "SeacoParaformer"

    def __init__(self, config: dict[str, Any], vocab_size: int, input_size: int):
        super().__init__(config, vocab_size, input_size)
        mc = dict(config.get("model_conf") or {})
        self.no_bias = int(mc.get("NO_BIAS", 8377))
        self.seaco_weight = float(mc.get("seaco_weight", 0.01))
        self.seaco_lsm_weight = float(mc.get("seaco_lsm_weight", 0.0))
        self.seaco_length_normalized_loss = bool(mc.get("seaco_length_normalized_loss", True))
        if not 0 <= self.no_bias < vocab_size:
            raise ConfigError(f"model_conf.NO_BIAS {self.no_bias} is not a token id (vocabulary of {vocab_size})")
        d = self.encoder.output_size()
        for key in ("decoder", "seaco_decoder"):
            if config.get(key) != "ParaformerSANMDecoder":
                raise ConfigError(f"config.yaml {key}: {config.get(key)!r}; supported: ParaformerSANMDecoder")
        self.decoder = ParaformerSANMDecoder(
            vocab_size, d, **_section(config, "decoder_conf", _DECODER_KEYS, _DECODER_IGNORED)
        )
        self.ctc = CTC(vocab_size, d) if float(mc.get("ctc_weight", 0.5)) > 0 else None
        inner = int(mc.get("inner_dim", 256))
        if mc.get("bias_encoder_type", "lstm") != "lstm":
            raise ConfigError("model_conf.bias_encoder_type: only lstm is supported")
        bid = bool(mc.get("bias_encoder_bid", False))
        self.bias_encoder = nn.LSTM(
            inner,
            inner,
            2,
            batch_first=True,
            dropout=float(mc.get("bias_encoder_dropout_rate", 0.0)),
            bidirectional=bid,
        )
        self.lstm_proj = nn.Linear(inner * 2, inner) if bid else None
        self.seaco_decoder = ParaformerSANMDecoder(
            vocab_size, inner, **_section(config, "seaco_decoder_conf", _DECODER_KEYS, _DECODER_IGNORED)
        )
        if self.seaco_decoder.output_layer is not None or self.seaco_decoder.embed is not None:
            raise ConfigError(
                "seaco_decoder_conf: FunASR's seaco decoder has use_output_layer: false, wo_input_layer: true"
            )
        self.hotword_output_layer = nn.Linear(inner, vocab_size)

    # ------------------------------------------------------------------------------------------------ parts
    def hotword_representation(self, hotwords: Tensor, lengths: Tensor) -> Tensor:
        """`[H, L]` padded token ids -> `[H, D]`: the bias LSTM's state at each hotword's last token."""
        emb = self.decoder.embed_tokens(hotwords)
        packed = nn.utils.rnn.pack_padded_sequence(emb, lengths.cpu().long(), batch_first=True, enforce_sorted=False)
        out = nn.utils.rnn.pad_packed_sequence(self.bias_encoder(packed)[0], batch_first=True)[0]
        if self.lstm_proj is not None:
            out = self.lstm_proj(out)
        return out[torch.arange(out.shape[0]), lengths.long() - 1]

    def bias_logits(self, hotword_vectors: Tensor, embeds: Tensor, hidden: Tensor, lengths: Tensor) -> Tensor:
        """Hotword-branch logits `[B, K, V]`: the seaco decoder over the list from the CIF embeddings and from the
        decoder states, summed, then `hotword_output_layer`."""
        b = embeds.shape[0]
        mem = hotword_vectors.unsqueeze(0).expand(b, -1, -1)
        mem_len = torch.full((b,), mem.shape[1], dtype=torch.long, device=mem.device)
        merged = self.seaco_decoder.hidden(mem, mem_len, embeds, lengths) + self.seaco_decoder.hidden(
            mem, mem_len, hidden, lengths
        )
        return self.hotword_output_layer(merged)

    def filter_hotwords(self, hotword_vectors: Tensor, hidden: Tensor, lengths: Tensor, nfilter: int) -> Tensor:
        """FunASR's attention-score filter for lists longer than `nfilter` (one utterance, `hidden` `[1, K, D]`)."""
        n = hotword_vectors.shape[0]
        if not 0 < nfilter < n:
            return hotword_vectors
        mem = hotword_vectors.unsqueeze(0)
        attn = self.seaco_decoder.attention_scores(mem, torch.tensor([n]), hidden, lengths, ASF_LAYER)
        keep = torch.topk(attn[0].sum(0).sum(0), min(nfilter, n - 1))[1].tolist()
        return hotword_vectors[[*keep, n - 1]]

    def merge(self, dec_logp: Tensor, bias_logp: Tensor) -> Tensor:
        """FunASR's merge: the bias log-probabilities where their argmax is not NO_BIAS (seaco_weight 1)."""
        lam = self.seaco_weight
        keep = (bias_logp.argmax(-1) == self.no_bias).to(dec_logp.dtype).unsqueeze(-1)
        keep = keep * lam + (1 - lam)
        return dec_logp * keep + bias_logp * (1 - keep)

    # ------------------------------------------------------------------------------------------------ training
    def _decode(
        self, enc: Tensor, enc_len: Tensor, embeds: Tensor, lengths: Tensor, context: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        return self.decoder(enc, enc_len, embeds, lengths)

    def _token_embedding(self) -> Any:
        return self.decoder.embed_tokens

    def _extra_losses(self, out: dict[str, Tensor], losses: tuple[str, ...], *args: Any) -> None:
        """SeACo's `hotword` loss: the seaco decoder over the list from the CIF embeddings and the decoder states,
        label-smoothed CE against the hotword labels (FunASR drops the last position)."""
        from speakerforge.asr import funasr_losses as fl

        if "hotword" not in losses:
            return
        enc, enc_len, emb, ys_len, hotwords, hotword_lengths, hotword_labels = args
        if hotwords is None or hotword_lengths is None or hotword_labels is None:
            raise ValueError("the hotword loss needs hotwords, their lengths and the hotword labels")
        _, hidden = self.decoder(enc, enc_len, emb, ys_len)
        vectors = self.hotword_representation(hotwords, hotword_lengths)
        logits = self.bias_logits(vectors, emb, hidden, ys_len)[:, :-1]
        out["hotword"] = fl.label_smoothing_loss(
            logits, hotword_labels, self.seaco_lsm_weight, self.seaco_length_normalized_loss
        )
        out["hotword_acc"] = fl.accuracy(logits, hotword_labels)

    # ------------------------------------------------------------------------------------------------ decoding
    @torch.no_grad()
    def decode_logp(
        self, feats: Tensor, lengths: Tensor, hotwords: Sequence[Sequence[int]] | None = None, nfilter: int = 50
    ) -> tuple[Tensor, Tensor]:
        """(merged log-probabilities `[B, K, V]`, token counts `[B]`); `hotwords` already end with `[sos]`."""
        enc, enc_len = self.encode(feats, lengths)
        embeds, num = self._predict(enc, enc_len)
        logits, hidden = self.decoder(enc, enc_len, embeds, num.clamp_min(1))
        logp = logits.log_softmax(-1)
        if not hotwords:
            return logp, num
        ids, hw_len = pad_hotwords(hotwords, enc.device)
        vectors = self.hotword_representation(ids, hw_len)
        rows = []
        for i in range(enc.shape[0]):
            k = max(int(num[i]), 1)
            e, h, n_i = embeds[i : i + 1, :k], hidden[i : i + 1, :k], num[i : i + 1].clamp_min(1)
            v = self.filter_hotwords(vectors, h, n_i, nfilter)
            bias = self.bias_logits(v, e, h, n_i).log_softmax(-1)
            merged = self.merge(logp[i : i + 1, :k], bias)[0]
            rows.append(F.pad(merged, (0, 0, 0, logp.shape[1] - k)))
        return torch.stack(rows), num


class ContextualParaformer(_Paraformer):
    """FunASR's ContextualParaformer (`model: ContextualParaformer`, e.g. the released
    `speech_paraformer-large-contextual_asr_nat-zh-cn-16k-common-vocab8404`): `encoder`, `predictor` (usually
    `CifPredictorV2`), `decoder` (`ContextualParaformerDecoder`: the hotword vectors enter its last attention
    layer), `bias_embed` + `bias_encoder` (a 1-layer LSTM; a hotword's vector is its final hidden state) and `ctc`
    when `ctc_weight > 0`. With no list FunASR still passes one entry, `[sos]`; so does this class."""

    MODEL = "ContextualParaformer"

    def __init__(self, config: dict[str, Any], vocab_size: int, input_size: int):
        super().__init__(config, vocab_size, input_size)
        mc = dict(config.get("model_conf") or {})
        d = self.encoder.output_size()
        if config.get("decoder") != "ContextualParaformerDecoder":
            raise ConfigError(f"config.yaml decoder: {config.get('decoder')!r}; supported: ContextualParaformerDecoder")
        self.decoder = ContextualParaformerDecoder(
            vocab_size, d, **_section(config, "decoder_conf", _DECODER_KEYS, _DECODER_IGNORED)
        )
        self.ctc = CTC(vocab_size, d) if float(mc.get("ctc_weight", 0.5)) > 0 else None
        if mc.get("bias_encoder_type", "lstm") != "lstm":
            raise ConfigError("model_conf.bias_encoder_type: only lstm is supported")
        inner = int(mc.get("inner_dim", 256))
        if inner != d:
            raise ConfigError(f"model_conf.inner_dim {inner}: the contextual decoder attends with width {d}")
        self.use_decoder_embedding = bool(mc.get("use_decoder_embedding", False))
        self.clas_scale = 1.0
        self.bias_encoder = nn.LSTM(
            inner, inner, 1, batch_first=True, dropout=float(mc.get("bias_encoder_dropout_rate", 0.0))
        )
        self.bias_embed = nn.Embedding(vocab_size, inner)

    def hotword_representation(self, hotwords: Tensor, lengths: Tensor) -> Tensor:
        """`[H, L]` padded token ids -> `[H, D]`: the bias LSTM's final hidden state per hotword."""
        emb = self.decoder.embed_tokens(hotwords) if self.use_decoder_embedding else self.bias_embed(hotwords)
        packed = nn.utils.rnn.pack_padded_sequence(emb, lengths.cpu().long(), batch_first=True, enforce_sorted=False)
        return self.bias_encoder(packed)[1][0][-1]

    def decoder_logits(
        self, enc: Tensor, enc_len: Tensor, embeds: Tensor, num: Tensor, hotword_vectors: Tensor
    ) -> tuple[Tensor, Tensor]:
        """(logits `[B, K, V]`, hidden `[B, K, D]`) of the contextual decoder with one list for the whole batch."""
        context = hotword_vectors.unsqueeze(0).expand(enc.shape[0], -1, -1)
        return self.decoder.forward_with_context(enc, enc_len, embeds, num, context, self.clas_scale)

    def _training_context(self, hotwords: Tensor | None, lengths: Tensor | None, batch: int) -> Tensor | None:
        """The batch's hotword vectors `[B, H, D]` (FunASR's `contextual_info`); the list holds at least `[sos]`."""
        if hotwords is None or lengths is None:
            raise ValueError("ContextualParaformer training needs the batch's hotword list")
        return self.hotword_representation(hotwords, lengths).unsqueeze(0).expand(batch, -1, -1)

    def _decode(
        self, enc: Tensor, enc_len: Tensor, embeds: Tensor, lengths: Tensor, context: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        assert context is not None
        return self.decoder.forward_with_context(enc, enc_len, embeds, lengths, context, self.clas_scale)

    def _token_embedding(self) -> Any:
        return self.decoder.embed_tokens

    @torch.no_grad()
    def decode_logp(
        self, feats: Tensor, lengths: Tensor, hotwords: Sequence[Sequence[int]] | None = None, nfilter: int = 50
    ) -> tuple[Tensor, Tensor]:
        """(log-probabilities `[B, K, V]`, token counts `[B]`); `hotwords` already end with `[sos]` (FunASR has no
        attention filter for this model: `nfilter` is not used)."""
        enc, enc_len = self.encode(feats, lengths)
        embeds, num = self._predict(enc, enc_len)
        ids, hw_len = pad_hotwords(hotwords or [[self.sos]], enc.device)
        vectors = self.hotword_representation(ids, hw_len)
        logits, _ = self.decoder_logits(enc, enc_len, embeds, num.clamp_min(1), vectors)
        return logits.log_softmax(-1), num


def pad_hotwords(hotwords: Sequence[Sequence[int]], device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """Token-id lists -> (`[H, L]` zero-padded ids, `[H]` lengths); an empty entry is an error."""
    if any(len(h) == 0 for h in hotwords):
        raise ValueError("a hotword with no tokens")
    lengths = torch.tensor([len(h) for h in hotwords], dtype=torch.long)
    ids = torch.zeros(len(hotwords), int(lengths.max()), dtype=torch.long)
    for i, h in enumerate(hotwords):
        ids[i, : len(h)] = torch.tensor(list(h), dtype=torch.long)
    return ids.to(device), lengths.to(device)


def load_funasr_state(model: nn.Module, state: dict[str, Tensor], origin: str) -> None:
    """Load `state` into `model` strictly; every missing, unexpected or mis-shaped key is listed in the error."""
    own = model.state_dict()
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    shapes = sorted(
        f"{k}: file {tuple(state[k].shape)}, model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    )
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {', '.join(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {', '.join(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} mis-shaped: {'; '.join(shapes)}")
    if problems:
        raise CheckpointError(f"{origin}: does not fit the model its config.yaml describes: " + " | ".join(problems))
    model.load_state_dict(state, strict=True)
