"""A small SeACo-Paraformer: non-autoregressive ASR with a hotword (contextual) bias branch.

Module names are FunASR's, so that freeze lists mean the same thing here and there:
- `encoder`: low frame rate stacking of fbank frames, then SAN-M-like blocks (self-attention plus an FSMN-style
  depthwise convolution memory, then a feed-forward layer);
- `predictor`: CIF weights (conv + linear + sigmoid) integrated into one embedding per token (`speakerforge.asr.cif`);
- `decoder`: non-autoregressive decoder over the CIF embeddings (self-attention, cross-attention to the encoder);
  `decoder.embed` is the token embedding the hotword branch uses;
- `bias_encoder`: LSTM over each hotword's token embeddings; one vector per hotword (its last valid step, FunASR's
  `bias_memory: word`) or one per token (`bias_memory: token`, a copy-friendly memory: a query attends to the
  matching token of the matching hotword, which a character vocabulary needs to spell unseen words; with
  `bias_bidirectional` each token's state knows its whole hotword);
- `seaco_decoder`: cross-attention layers (no input/output layers) run once with the CIF embeddings and once with the
  decoder states as queries over the hotword list; the two outputs are summed;
- `hotword_output_layer`: vocabulary + `<no_bias>` (the last id);
- `ctc` (optional): a linear CTC head on the encoder.
The hotword list always ends with the no-bias entry (the single `<sos/eos>` token), as in FunASR.
The blocks themselves (and `ModelArgs`) are in `speakerforge.asr.model_blocks`; this module assembles them.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from speakerforge.artifacts import expect
from speakerforge.asr.model_blocks import BiasEncoder, Decoder, Encoder, ModelArgs, Predictor, SeacoDecoder
from speakerforge.checkpoint_io import load_model_file
from speakerforge.errors import CheckpointError, ConfigError

ASR_PART = ("encoder", "predictor", "decoder", "ctc")
HOTWORD_PART = ("bias_encoder", "seaco_decoder", "hotword_output_layer")


class SeacoParaformer(nn.Module):
    """The whole model; `forward` computes the selected losses, `recognize` decodes (optionally with hotwords)."""

    def __init__(self, vocab_size: int, args: ModelArgs | None = None, sos_id: int = 1, blank_id: int = 0):
        super().__init__()
        a = args or ModelArgs()
        self.args = a
        self.vocab_size = vocab_size
        self.no_bias_id = vocab_size  # the last output of hotword_output_layer
        self.sos_id, self.blank_id = sos_id, blank_id
        self.encoder = Encoder(a)
        self.predictor = Predictor(a.d_model)
        self.decoder = Decoder(a, vocab_size)
        if a.bias_memory not in ("word", "token"):
            raise ValueError(f"bias_memory must be 'word' or 'token', got {a.bias_memory!r}")
        self.bias_encoder = BiasEncoder(a.d_model, a.bias_memory == "token", a.bias_bidirectional)
        self.seaco_decoder = SeacoDecoder(a)
        self.hotword_output_layer = nn.Linear(a.d_model, vocab_size + 1)
        self.ctc = nn.Linear(a.d_model, vocab_size) if a.ctc else None

    # ------------------------------------------------------------------------------------------------ parts
    def encode(self, feats: Tensor, feat_lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        enc, lengths = self.encoder(feats, feat_lengths)
        pad = torch.arange(enc.shape[1], device=enc.device)[None, :] >= lengths[:, None]
        return enc, lengths, pad

    def hotword_embeddings(self, hotwords: Tensor, hotword_lengths: Tensor) -> tuple[Tensor, Tensor]:
        """`[H, L]` token ids (the list ends with the no-bias entry) -> (memory `[M, D]`, owner hotword `[M]`)."""
        return self.bias_encoder(self.decoder.embed(hotwords), hotword_lengths)

    def bias_logits(
        self, cif_emb: Tensor, dec_hidden: Tensor, hw_emb: Tensor, token_pad: Tensor | None = None
    ) -> Tensor:
        """Hotword branch logits `[B, K, V + 1]`: the two attention passes summed, then the output layer."""
        merged = self.seaco_decoder(cif_emb, hw_emb, token_pad) + self.seaco_decoder(dec_hidden, hw_emb, token_pad)
        return self.hotword_output_layer(merged)

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
        asr_states: tuple[Tensor, Tensor, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """Loss terms named in `losses` (ce, ctc, cif, hotword) plus token accuracies; targets padded with -1.

        `asr_states` (`asr_states()` of a frozen ASR part, computed earlier) skips the ASR part: the hotword loss
        only needs its CIF embeddings and decoder states."""
        out: dict[str, Tensor] = {}
        if asr_states is not None:
            if tuple(losses) != ("hotword",):
                raise ValueError("precomputed ASR states serve the hotword loss alone")
            emb, mask, hidden = asr_states
            self._hotword_loss(out, emb, mask, hidden, hotwords, hotword_lengths, hotword_labels)
            return out
        enc, enc_lengths, enc_pad = self.encode(feats, feat_lengths)
        if "ctc" in losses:
            if self.ctc is None:
                raise ValueError("loss 'ctc' selected but the model has no ctc head (model.args.ctc: false)")
            logp = F.log_softmax(self.ctc(enc), -1).transpose(0, 1)
            out["ctc"] = (
                F.ctc_loss(
                    logp,
                    targets.clamp_min(0),
                    enc_lengths,
                    target_lengths,
                    blank=self.blank_id,
                    reduction="sum",
                    zero_infinity=True,
                )
                / targets.shape[0]
            )
        need_dec = "ce" in losses or "hotword" in losses
        if not (need_dec or "cif" in losses):
            return out
        emb, mask, raw_sum, _ = self.predictor(enc, enc_lengths, target_lengths)
        if "cif" in losses:
            out["cif"] = (raw_sum - target_lengths.to(raw_sum.dtype)).abs().mean()
        if not need_dec:
            return out
        dec_in = self.glance(emb, mask, enc, enc_pad, targets) if "ce" in losses else emb
        logits, hidden = self.decoder(dec_in, mask, enc, enc_pad)
        if "ce" in losses:
            out["ce"] = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-1)
            out["ce_acc"] = _accuracy(logits, targets)
        if "hotword" in losses:
            self._hotword_loss(out, emb, mask, hidden, hotwords, hotword_lengths, hotword_labels)
        return out

    def _hotword_loss(
        self,
        out: dict[str, Tensor],
        emb: Tensor,
        mask: Tensor,
        hidden: Tensor,
        hotwords: Tensor | None,
        hotword_lengths: Tensor | None,
        labels: Tensor | None,
    ) -> None:
        if hotwords is None or labels is None:
            raise ValueError("loss 'hotword' needs a hotword list and labels")
        hw, _ = self.hotword_embeddings(hotwords, hotword_lengths)
        blogits = self.bias_logits(emb, hidden, hw, ~mask)
        out["hotword"] = F.cross_entropy(blogits.transpose(1, 2), labels, ignore_index=-1)
        out["hotword_acc"] = _accuracy(blogits, labels)

    @torch.no_grad()
    def asr_states(self, feats: Tensor, feat_lengths: Tensor, target_lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(CIF embeddings `[B, K, D]` fired at the target counts, token mask, decoder states): what the hotword loss
        reads from the ASR part, as `forward` computes them for a hotword-only stage."""
        enc, enc_lengths, enc_pad = self.encode(feats, feat_lengths)
        emb, mask, _, _ = self.predictor(enc, enc_lengths, target_lengths)
        _, hidden = self.decoder(emb, mask, enc, enc_pad)
        return emb, mask, hidden

    def glance(self, emb: Tensor, mask: Tensor, enc: Tensor, enc_pad: Tensor, targets: Tensor) -> Tensor:
        """Paraformer's glancing sampler: a first decoder pass without gradient counts each utterance's wrong
        tokens; `sampling_ratio` x that many random positions then get the target's `decoder.embed` in place of
        the CIF embedding. It teaches the decoder token context and, here, also trains `decoder.embed`, which the
        hotword branch reads but which a plain CE stage would leave at its random start."""
        ratio = self.args.sampling_ratio
        if not self.training or ratio <= 0:
            return emb
        with torch.no_grad():
            pred = self.decoder(emb, mask, enc, enc_pad)[0].argmax(-1)
            wrong = ((pred != targets) & mask).sum(1)
            n = (wrong.to(torch.float32) * ratio).long()
            order = torch.rand(mask.shape, device=emb.device).masked_fill(~mask, 2.0).argsort(1).argsort(1)
            replace = (order < n[:, None]) & mask
        target_emb = self.decoder.embed(targets.clamp_min(0))
        return torch.where(replace[..., None], target_emb, emb)

    # ------------------------------------------------------------------------------------------------ inference
    @torch.no_grad()
    def ctc_log_probs(self, feats: Tensor, feat_lengths: Tensor) -> tuple[Tensor, Tensor]:
        """CTC log-probabilities `[B, T, V]` of the encoder frames and the frame counts (needs the ctc head)."""
        if self.ctc is None:
            raise ConfigError(
                "this model has no ctc head (trained with model.args.ctc: false): decode with --decoding seaco instead"
            )
        enc, lengths, _ = self.encode(feats, feat_lengths)
        return F.log_softmax(self.ctc(enc), -1), lengths

    @torch.no_grad()
    def recognize(
        self,
        feats: Tensor,
        feat_lengths: Tensor,
        hotwords: Tensor | None = None,
        hotword_lengths: Tensor | None = None,
        filter_keep: int = 50,
    ) -> list[list[int]]:
        """Greedy token ids per utterance. With a hotword list (ending with the no-bias entry) the bias branch
        replaces the ASR distribution wherever its argmax is not `<no_bias>` (FunASR's merge); a list longer
        than `filter_keep` is first cut per utterance to the `filter_keep` hotwords that the decoder states attend
        to most (FunASR's attention-score filter, `nfilter=50`)."""
        enc, enc_lengths, enc_pad = self.encode(feats, feat_lengths)
        emb, mask, _, n = self.predictor(enc, enc_lengths)
        logits, hidden = self.decoder(emb, mask, enc, enc_pad)
        probs = logits.softmax(-1)
        if hotwords is not None and hotwords.shape[0] > 1:
            hw, owner = self.hotword_embeddings(hotwords, hotword_lengths)
            n_hot = hotwords.shape[0] - 1  # without the no-bias entry, which is last
            rows = []
            for i in range(emb.shape[0]):
                e, h, hw_i = emb[i : i + 1, : n[i]], hidden[i : i + 1, : n[i]], hw
                if n_hot > filter_keep:
                    rows_w = self.seaco_decoder.scores(h, hw)[0].sum(0)  # attention per memory row
                    score = torch.zeros(n_hot + 1, dtype=rows_w.dtype).index_add_(0, owner, rows_w)[:n_hot]
                    keep = torch.zeros(n_hot + 1, dtype=torch.bool)
                    keep[score.topk(filter_keep).indices] = True
                    keep[n_hot] = True
                    hw_i = hw[keep[owner]]
                b = self.bias_logits(e, h, hw_i).softmax(-1)[0]
                p = probs[i, : n[i]]
                use_bias = b.argmax(-1) != self.no_bias_id
                rows.append(torch.where(use_bias[:, None], b[:, :-1], p))
            return [r.argmax(-1).tolist() for r in rows]
        return [probs[i, : n[i]].argmax(-1).tolist() for i in range(probs.shape[0])]


def _accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """(correct, counted) as a 2-vector, labels -1 ignored."""
    valid = labels >= 0
    correct = ((logits.argmax(-1) == labels) & valid).sum()
    return torch.stack([correct, valid.sum()])


def read_asr_model_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict, Path]:
    """(weights, meta, file) of an ASR model file or of the experiment folder holding one."""
    p = Path(path)
    if p.is_dir():
        p = p / "model.safetensors"
    expect(p, ("model_file",), "an ASR model file", "pass the model.safetensors of `speakerforge asr train`")
    state, meta = load_model_file(p)
    if meta.get("kind") != "asr":
        raise CheckpointError(f"{p}: not an ASR model file (written by `speakerforge asr train`)")
    return state, meta, p
