"""The building blocks of the small SeACo-Paraformer (`speakerforge.asr.model`), under FunASR's module names: low frame
rate stacking, the SAN-M-like encoder, the CIF predictor, the decoder, the hotword bias encoder and the seaco
decoder, each sized by `ModelArgs`."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch import Tensor

from speakerforge.asr import cif as cif_ops


@dataclass
class ModelArgs:
    """`model.args` of an ASR config (validated with `speakerforge.config.from_dict`)."""

    num_mel_bins: int = 80
    lfr_m: int = 5  # frames stacked
    lfr_n: int = 3  # frame step (30 ms at a 10 ms shift)
    d_model: int = 144
    heads: int = 4
    ffn_dim: int = 384
    encoder_layers: int = 4
    decoder_layers: int = 2
    seaco_layers: int = 1
    fsmn_kernel: int = 11
    seaco_kernel: int = 11  # FSMN memory over the query tokens in each seaco_decoder layer (0: none)
    bias_memory: str = "word"  # word (FunASR) | token
    bias_bidirectional: bool = False
    dropout: float = 0.1
    ctc: bool = True
    sampling_ratio: float = 0.75  # Paraformer's glancing sampler in training (0: off)


def lfr(feats: Tensor, lengths: Tensor, m: int, n: int) -> tuple[Tensor, Tensor]:
    """Low frame rate: stack `m` frames every `n` (left-padded with the first frame, as FunASR), `[B, T, F]`."""
    b, t, f = feats.shape
    pad_left = (m - 1) // 2
    x = torch.cat([feats[:, :1].expand(b, pad_left, f), feats, feats.new_zeros(b, m, f)], dim=1)
    out_len = torch.div(lengths + n - 1, n, rounding_mode="floor")
    t_out = int(out_len.max().item()) if b else 0
    idx = torch.arange(t_out, device=feats.device)[:, None] * n + torch.arange(m, device=feats.device)[None, :]
    return x[:, idx].reshape(b, t_out, m * f), out_len


def sinusoid(t: int, d: int, device: torch.device) -> Tensor:
    pos = torch.arange(t, device=device, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, d, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / d))
    pe = torch.zeros(t, d, device=device)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)
    return pe


class FeedForward(nn.Sequential):
    def __init__(self, d: int, hidden: int, dropout: float):
        super().__init__(nn.Linear(d, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, d))


class SanmBlock(nn.Module):
    """Self-attention + FSMN-like depthwise convolution memory + feed-forward, pre-norm residuals."""

    def __init__(self, d: int, heads: int, ffn: int, kernel: int, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.fsmn = nn.Conv1d(d, d, kernel, padding=kernel // 2, groups=d, bias=False)
        self.norm2 = nn.LayerNorm(d)
        self.ffn = FeedForward(d, ffn, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, pad: Tensor) -> Tensor:
        h = self.norm1(x)
        a, _ = self.attn(h, h, h, key_padding_mask=pad, need_weights=False)
        mem = self.fsmn(h.masked_fill(pad[..., None], 0).transpose(1, 2)).transpose(1, 2)
        x = x + self.drop(a) + self.drop(mem)
        return x + self.drop(self.ffn(self.norm2(x)))


class Encoder(nn.Module):
    def __init__(self, a: ModelArgs):
        super().__init__()
        self.lfr_m, self.lfr_n = a.lfr_m, a.lfr_n
        self.input_layer = nn.Linear(a.num_mel_bins * a.lfr_m, a.d_model)
        self.blocks = nn.ModuleList(
            SanmBlock(a.d_model, a.heads, a.ffn_dim, a.fsmn_kernel, a.dropout) for _ in range(a.encoder_layers)
        )
        self.after_norm = nn.LayerNorm(a.d_model)

    def forward(self, feats: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        x, lengths = lfr(feats, lengths, self.lfr_m, self.lfr_n)
        x = self.input_layer(x)
        x = x + sinusoid(x.shape[1], x.shape[2], x.device)
        pad = torch.arange(x.shape[1], device=x.device)[None, :] >= lengths[:, None]
        for blk in self.blocks:
            x = blk(x, pad)
        return self.after_norm(x), lengths


class Predictor(nn.Module):
    """CIF weights from encoder frames (FunASR's CifPredictorV2 shape: conv, ReLU, linear, sigmoid)."""

    def __init__(self, d: int):
        super().__init__()
        self.conv = nn.Conv1d(d, d, 3, padding=1)
        self.output = nn.Linear(d, 1)

    def forward(
        self, enc: Tensor, enc_lengths: Tensor, target_lengths: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(token embeddings `[B, K, D]`, token mask, raw alpha sums `[B]`, token counts `[B]`).

        With `target_lengths` (training) the alphas are scaled to fire exactly that many tokens.
        """
        valid = torch.arange(enc.shape[1], device=enc.device)[None, :] < enc_lengths[:, None]
        # padding zeroed first: the convolution would otherwise read a batch-mate's padding frames at the edge
        h = torch.relu(self.conv(enc.masked_fill(~valid[..., None], 0).transpose(1, 2))).transpose(1, 2)
        alphas = torch.sigmoid(self.output(h)).squeeze(-1)
        alphas = alphas * valid
        raw_sum = alphas.sum(-1)
        if target_lengths is not None:
            alphas = cif_ops.scale_to_targets(alphas, target_lengths)
            n = target_lengths.long()
        else:
            n = cif_ops.num_fired(alphas).clamp_min(1)
        emb, mask = cif_ops.cif(enc, alphas, n)
        return emb, mask, raw_sum, n


class DecoderLayer(nn.Module):
    """Pre-norm layer: token context (self-attention, or FSMN memory with `memory_kernel`, or none), cross-attention
    to `mem`, feed-forward."""

    def __init__(self, d: int, heads: int, ffn: int, dropout: float, self_attn: bool = True, memory_kernel: int = 0):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True) if self_attn else None
        self.fsmn = (
            nn.Conv1d(d, d, memory_kernel, padding=memory_kernel // 2, groups=d, bias=False)
            if memory_kernel and not self_attn
            else None
        )
        self.norm1 = nn.LayerNorm(d) if self_attn or self.fsmn is not None else None
        self.norm2 = nn.LayerNorm(d)
        self.src_attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.norm3 = nn.LayerNorm(d)
        self.ffn = FeedForward(d, ffn, dropout)
        self.drop = nn.Dropout(dropout)

    def context(self, x: Tensor, x_pad: Tensor | None) -> Tensor:
        """The token-context sub-layer (self-attention or FSMN memory) with its residual; `x` itself if none."""
        if self.self_attn is not None:
            h = self.norm1(x)
            return x + self.drop(self.self_attn(h, h, h, key_padding_mask=x_pad, need_weights=False)[0])
        if self.fsmn is not None:
            h = self.norm1(x)
            if x_pad is not None:
                h = h.masked_fill(x_pad[..., None], 0)
            return x + self.drop(self.fsmn(h.transpose(1, 2)).transpose(1, 2))
        return x

    def forward(self, x: Tensor, x_pad: Tensor | None, mem: Tensor, mem_pad: Tensor | None) -> Tensor:
        x = self.context(x, x_pad)
        h = self.norm2(x)
        x = x + self.drop(self.src_attn(h, mem, mem, key_padding_mask=mem_pad, need_weights=False)[0])
        return x + self.drop(self.ffn(self.norm3(x)))


class Decoder(nn.Module):
    """Non-autoregressive decoder; `embed` is the token embedding shared with the hotword branch."""

    def __init__(self, a: ModelArgs, vocab_size: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, a.d_model)
        self.layers = nn.ModuleList(
            DecoderLayer(a.d_model, a.heads, a.ffn_dim, a.dropout) for _ in range(a.decoder_layers)
        )
        self.after_norm = nn.LayerNorm(a.d_model)
        self.output_layer = nn.Linear(a.d_model, vocab_size)

    def forward(self, tokens_in: Tensor, token_mask: Tensor, enc: Tensor, enc_pad: Tensor) -> tuple[Tensor, Tensor]:
        """(logits `[B, K, V]`, hidden states `[B, K, D]`)."""
        x = tokens_in
        for layer in self.layers:
            x = layer(x, ~token_mask, enc, enc_pad)
        h = self.after_norm(x)
        return self.output_layer(h), h


class BiasEncoder(nn.Module):
    """LSTM over hotwords' token embeddings -> the memory the seaco decoder attends to (see the module docstring)."""

    def __init__(self, d: int, per_token: bool = False, bidirectional: bool = False):
        super().__init__()
        if bidirectional and d % 2:
            raise ValueError(f"bias_bidirectional needs an even d_model, got {d}")
        self.per_token, self.bidirectional = per_token, bidirectional
        self.lstm = nn.LSTM(
            d, d // 2 if bidirectional else d, num_layers=1, batch_first=True, bidirectional=bidirectional
        )

    def forward(self, emb: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """`[H, L, D]`, lengths `[H]` -> (memory `[M, D]`, the hotword of each memory row `[M]`)."""
        packed = nn.utils.rnn.pack_padded_sequence(
            emb, lengths.cpu().clamp_min(1), batch_first=True, enforce_sorted=False
        )
        out, (h_n, _) = self.lstm(packed)
        h = emb.shape[0]
        if self.per_token:
            out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=emb.shape[1])
            valid = torch.arange(emb.shape[1], device=emb.device)[None, :] < lengths.clamp_min(1)[:, None]
            owner = torch.arange(h, device=emb.device)[:, None].expand_as(valid)
            return out[valid], owner[valid]
        # the final state of each direction: forward after the last valid token, backward after the first
        return h_n.transpose(0, 1).reshape(h, -1), torch.arange(h, device=emb.device)


class SeacoDecoder(nn.Module):
    """Layers of FSMN memory over the query tokens (as FunASR's SANM seaco decoder: which part of a word a token is
    depends on its neighbours) and cross-attention from the queries (CIF embeddings or decoder states) to the
    hotword representations."""

    def __init__(self, a: ModelArgs):
        super().__init__()
        self.layers = nn.ModuleList(
            DecoderLayer(a.d_model, a.heads, a.ffn_dim, a.dropout, self_attn=False, memory_kernel=a.seaco_kernel)
            for _ in range(a.seaco_layers)
        )
        self.after_norm = nn.LayerNorm(a.d_model)

    def forward(self, queries: Tensor, hotwords: Tensor, query_pad: Tensor | None = None) -> Tensor:
        mem = hotwords.unsqueeze(0).expand(queries.shape[0], -1, -1)
        x = queries
        for layer in self.layers:
            x = layer(x, query_pad, mem, None)
        return self.after_norm(x)

    def scores(self, queries: Tensor, hotwords: Tensor) -> Tensor:
        """Attention probability of each hotword `[B, K, H]` in the last layer (heads averaged), for filtering."""
        mem = hotwords.unsqueeze(0).expand(queries.shape[0], -1, -1)
        x = queries
        for layer in self.layers[:-1]:
            x = layer(x, None, mem, None)
        last = self.layers[-1]
        x = last.context(x, None)
        _, w = last.src_attn(last.norm2(x), mem, mem, need_weights=True, average_attn_weights=True)
        return w
