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
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from speakerforge.asr.paraformer_base import CTC, ParaformerBase, decoder_args
from speakerforge.asr.sanm import ContextualParaformerDecoder, ParaformerSANMDecoder
from speakerforge.errors import CheckpointError, ConfigError

ASR_PART = ("encoder", "predictor", "decoder", "ctc")
HOTWORD_PART = ("bias_encoder", "seaco_decoder", "hotword_output_layer")
ASF_LAYER = 5  # FunASR's forward_asf6: the attention of seaco_decoder.decoders[5] ranks the hotwords


class SeacoParaformer(ParaformerBase):
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
        self.decoder = ParaformerSANMDecoder(vocab_size, d, **decoder_args(config, "decoder_conf"))
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
        self.seaco_decoder = ParaformerSANMDecoder(vocab_size, inner, **decoder_args(config, "seaco_decoder_conf"))
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
        if "hotword" not in losses:
            return
        enc, enc_len, emb, ys_len, hotwords, hotword_lengths, hotword_labels = args
        _, hidden = self.decoder(enc, enc_len, emb, ys_len)
        self._hotword_loss(out, emb, hidden, ys_len, hotwords, hotword_lengths, hotword_labels)

    def _hotword_loss(
        self,
        out: dict[str, Tensor],
        emb: Tensor,
        hidden: Tensor,
        ys_len: Tensor,
        hotwords: Tensor | None,
        hotword_lengths: Tensor | None,
        hotword_labels: Tensor | None,
    ) -> None:
        from speakerforge.asr import funasr_losses as fl

        if hotwords is None or hotword_lengths is None or hotword_labels is None:
            raise ValueError("the hotword loss needs hotwords, their lengths and the hotword labels")
        vectors = self.hotword_representation(hotwords, hotword_lengths)
        logits = self.bias_logits(vectors, emb, hidden, ys_len)[:, :-1]
        out["hotword"] = fl.label_smoothing_loss(
            logits, hotword_labels, self.seaco_lsm_weight, self.seaco_length_normalized_loss
        )
        out["hotword_acc"] = fl.accuracy(logits, hotword_labels)

    @torch.no_grad()
    def asr_states(self, feats: Tensor, lengths: Tensor, target_lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(CIF embeddings, their mask, decoder states) of the ASR part with the target token counts, as the hotword
        loss reads them: a hotword-only stage over a frozen ASR part computes them once per utterance (the
        trainer's `asr.cache_asr_states`; call in eval mode: no dropout, no SpecAug)."""
        enc, enc_len = self.encode(feats, lengths)
        ys_len = target_lengths + 1 if self.predictor_bias == 1 else target_lengths
        emb = self.predictor(enc, enc_len, ys_len).embeds
        _, hidden = self.decoder(enc, enc_len, emb, ys_len)
        mask = torch.arange(emb.shape[1], device=emb.device)[None, :] < ys_len[:, None]
        return emb, mask, hidden

    def forward(self, *args: Any, losses: tuple[str, ...] = ("ce", "cif"), asr_states: Any = None) -> Any:
        """`ParaformerBase.forward`; with `asr_states` (`asr_states()` of the batch) only the hotword loss, from
        those states."""
        if asr_states is None:
            return super().forward(*args, losses=losses)  # type: ignore[misc]
        if tuple(losses) != ("hotword",):
            raise ValueError(f"cached ASR states serve the hotword loss alone, not {losses}")
        emb, mask, hidden = asr_states
        hotwords, hotword_lengths, hotword_labels = args[4:7]
        out: dict[str, Tensor] = {}
        self._hotword_loss(out, emb, hidden, mask.sum(1), hotwords, hotword_lengths, hotword_labels)
        return out

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


class ContextualParaformer(ParaformerBase):
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
        self.decoder = ContextualParaformerDecoder(vocab_size, d, **decoder_args(config, "decoder_conf"))
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
