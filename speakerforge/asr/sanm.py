"""FunASR's SAN-M blocks, with FunASR's parameter names and shapes: `SANMEncoder` and `ParaformerSANMDecoder`.

Written from FunASR's `funasr/models/sanm/` and `funasr/models/paraformer/decoder.py` (1.4.x), so that a FunASR
`model.pt` loads into these modules as it is and gives the same numbers (`tests/asr/test_funasr_parity.py`):
- SAN-M self-attention: one `linear_q_k_v` projection, scaled dot-product attention over the valid frames, plus an
  FSMN memory (a depthwise convolution `fsmn_block` over the values, with a residual) added to the output;
- the encoder scales its input by sqrt(output_size), adds FunASR's sinusoidal positions (positions from 1, sin and
  cos halves concatenated, computed at the input width), then runs `encoders0` (one layer from the input width to
  the model width, no residual there) and `encoders` (the other layers), pre-norm, then `after_norm`;
- a decoder layer is feed-forward first (`norm1`, `feed_forward` with its inner `norm`), then the FSMN memory over
  the tokens (`norm2`, `self_attn.fsmn_block`) with a residual from the layer input, then cross-attention to the
  encoder (`norm3`, `src_attn`); `decoders` have all three, `decoders2` no cross-attention, `decoders3` only the
  feed-forward (and no residual).
LayerNorm epsilon is FunASR's 1e-12. Masks are float `[B, 1, T]` (keys) or `[B, T, 1]` (tokens), 1 for valid.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch import Tensor

LN_EPS = 1e-12


def layer_norm(size: int) -> nn.LayerNorm:
    return nn.LayerNorm(size, eps=LN_EPS)


def sequence_mask(lengths: Tensor, max_len: int | None = None) -> Tensor:
    """`[B]` lengths -> float `[B, T]`, 1.0 on valid positions."""
    t = int(lengths.max().item()) if max_len is None else max_len
    return (torch.arange(t, device=lengths.device)[None, :] < lengths[:, None]).float()


def sinusoidal_positions(t: int, depth: int, device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor:
    """FunASR's `SinusoidalPositionEncoder` table `[t, depth]`: positions 1..t, sin half then cos half."""
    pos = torch.arange(1, t + 1, device=device).to(dtype)
    step = math.log(10000.0) / (depth / 2 - 1)
    inv = torch.exp(torch.arange(depth // 2, device=device).to(dtype) * -step)
    scaled = pos[:, None] * inv[None, :]
    return torch.cat([torch.sin(scaled), torch.cos(scaled)], dim=1)


def _fsmn_padding(kernel_size: int, shift: int) -> tuple[int, int]:
    left = (kernel_size - 1) // 2 + max(shift, 0)
    return left, kernel_size - 1 - left


def _attend(
    q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None, heads: int, dropout: nn.Module
) -> tuple[Tensor, Tensor]:
    """Scaled dot-product attention of `[B, Tq, D]` over `[B, Tk, D]` with `heads`; (weights `[B, heads, Tq, Tk]`,
    output `[B, Tq, D]`, dropout on the weights as FunASR). Masked keys get zero weight."""
    b, tq, d = q.shape
    dk = d // heads
    qh = q.reshape(b, tq, heads, dk).transpose(1, 2) * dk**-0.5
    kh = k.reshape(b, -1, heads, dk).transpose(1, 2)
    vh = v.reshape(b, -1, heads, dk).transpose(1, 2)
    scores = qh @ kh.transpose(-2, -1)
    if key_mask is not None:
        masked = key_mask.unsqueeze(1).eq(0)  # [B, 1, 1|Tq, Tk]
        attn = scores.masked_fill(masked, float("-inf")).softmax(-1).masked_fill(masked, 0.0)
    else:
        attn = scores.softmax(-1)
    return attn, (dropout(attn) @ vh).transpose(1, 2).reshape(b, tq, d)


class MultiHeadedAttentionSANM(nn.Module):
    """Self-attention with an FSMN memory over the values (encoder)."""

    def __init__(self, heads: int, in_size: int, size: int, dropout: float, kernel_size: int, shift: int = 0):
        super().__init__()
        self.h = heads
        self.linear_out = nn.Linear(size, size)
        self.linear_q_k_v = nn.Linear(in_size, size * 3)
        self.fsmn_block = nn.Conv1d(size, size, kernel_size, groups=size, bias=False)
        self.pad_fn = nn.ConstantPad1d(_fsmn_padding(kernel_size, shift), 0.0)
        self.dropout = nn.Dropout(dropout)

    def fsmn(self, v: Tensor, mask: Tensor | None) -> Tensor:
        if mask is not None:
            mask = mask.reshape(v.shape[0], -1, 1)
            v = v * mask
        x = self.fsmn_block(self.pad_fn(v.transpose(1, 2))).transpose(1, 2) + v
        x = self.dropout(x)
        return x if mask is None else x * mask

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        q, k, v = self.linear_q_k_v(x).chunk(3, dim=-1)
        memory = self.fsmn(v, mask)
        _, out = _attend(q, k, v, mask, self.h, self.dropout)
        return self.linear_out(out) + memory


class PositionwiseFeedForward(nn.Module):
    """Encoder feed-forward: `w_2(dropout(relu(w_1(x))))`."""

    def __init__(self, size: int, hidden: int, dropout: float):
        super().__init__()
        self.w_1 = nn.Linear(size, hidden)
        self.w_2 = nn.Linear(hidden, size)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_2(self.dropout(torch.relu(self.w_1(x))))


class EncoderLayerSANM(nn.Module):
    def __init__(self, in_size: int, size: int, self_attn: MultiHeadedAttentionSANM, ffn: int, dropout: float):
        super().__init__()
        self.self_attn = self_attn
        self.feed_forward = PositionwiseFeedForward(size, ffn, dropout)
        self.norm1 = layer_norm(in_size)
        self.norm2 = layer_norm(size)
        self.dropout = nn.Dropout(dropout)
        self.residual_attn = in_size == size

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        a = self.dropout(self.self_attn(self.norm1(x), mask))
        x = x + a if self.residual_attn else a
        return x + self.dropout(self.feed_forward(self.norm2(x)))


class SANMEncoder(nn.Module):
    """FunASR's `SANMEncoder` with `input_layer: pe`, `selfattention_layer_type: sanm`, pre-norm."""

    def __init__(
        self,
        input_size: int,
        output_size: int = 256,
        attention_heads: int = 4,
        linear_units: int = 2048,
        num_blocks: int = 6,
        dropout_rate: float = 0.1,
        attention_dropout_rate: float = 0.0,
        kernel_size: int = 11,
        sanm_shfit: int = 0,
    ):
        super().__init__()
        self.input_size, self._output_size = input_size, output_size

        def layer(i: int) -> EncoderLayerSANM:
            d_in = input_size if i == 0 else output_size
            attn = MultiHeadedAttentionSANM(
                attention_heads, d_in, output_size, attention_dropout_rate, kernel_size, sanm_shfit
            )
            return EncoderLayerSANM(d_in, output_size, attn, linear_units, dropout_rate)

        self.encoders0 = nn.ModuleList([layer(0)])
        self.encoders = nn.ModuleList(layer(i) for i in range(1, num_blocks))
        self.after_norm = layer_norm(output_size)

    def output_size(self) -> int:
        return self._output_size

    def forward(self, feats: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """`[B, T, input_size]` LFR features -> (`[B, T, output_size]`, lengths)."""
        mask = sequence_mask(lengths, feats.shape[1])[:, None, :]
        x = feats * self._output_size**0.5
        x = x + sinusoidal_positions(x.shape[1], x.shape[2], x.device, x.dtype)[None]
        for blk in [*self.encoders0, *self.encoders]:
            x = blk(x, mask)
        return self.after_norm(x), lengths


class MultiHeadedAttentionSANMDecoder(nn.Module):
    """The decoder's token context: an FSMN memory (no attention), named `self_attn` as in FunASR."""

    def __init__(self, size: int, dropout: float, kernel_size: int, shift: int = 0):
        super().__init__()
        self.fsmn_block = nn.Conv1d(size, size, kernel_size, groups=size, bias=False)
        self.pad_fn = nn.ConstantPad1d(_fsmn_padding(kernel_size, shift), 0.0)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        if mask is not None:
            mask = mask.reshape(x.shape[0], -1, 1)
            x = x * mask
        y = self.dropout(self.fsmn_block(self.pad_fn(x.transpose(1, 2))).transpose(1, 2) + x)
        return y if mask is None else y * mask


class MultiHeadedAttentionCrossAtt(nn.Module):
    """Cross-attention: `linear_q` on the queries, one `linear_k_v` on the memory."""

    def __init__(self, heads: int, size: int, dropout: float, memory_size: int | None = None):
        super().__init__()
        self.h = heads
        self.linear_q = nn.Linear(size, size)
        self.linear_k_v = nn.Linear(memory_size or size, size * 2)
        self.linear_out = nn.Linear(size, size)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, memory: Tensor, memory_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """(output `[B, Tq, D]`, attention weights `[B, heads, Tq, Tk]`)."""
        k, v = self.linear_k_v(memory).chunk(2, dim=-1)
        attn, out = _attend(self.linear_q(x), k, v, memory_mask, self.h, self.dropout)
        return self.linear_out(out), attn


class PositionwiseFeedForwardDecoderSANM(nn.Module):
    """Decoder feed-forward: `w_2(norm(dropout(relu(w_1(x)))))`, `w_2` without bias."""

    def __init__(self, size: int, hidden: int, dropout: float):
        super().__init__()
        self.w_1 = nn.Linear(size, hidden)
        self.w_2 = nn.Linear(hidden, size, bias=False)
        self.norm = layer_norm(hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_2(self.norm(self.dropout(torch.relu(self.w_1(x)))))


class DecoderLayerSANM(nn.Module):
    """Feed-forward, then FSMN token memory (optional), then cross-attention (optional); see the module docstring."""

    def __init__(
        self,
        size: int,
        ffn: int,
        dropout: float,
        fsmn: MultiHeadedAttentionSANMDecoder | None,
        src_attn: MultiHeadedAttentionCrossAtt | None,
    ):
        super().__init__()
        self.self_attn = fsmn
        self.src_attn = src_attn
        self.feed_forward = PositionwiseFeedForwardDecoderSANM(size, ffn, dropout)
        self.norm1 = layer_norm(size)
        if fsmn is not None:
            self.norm2 = layer_norm(size)
        if src_attn is not None:
            self.norm3 = layer_norm(size)
        self.dropout = nn.Dropout(dropout)

    def context(self, x: Tensor, token_mask: Tensor | None) -> Tensor:
        """Everything before the cross-attention: feed-forward and the FSMN memory with its residual."""
        t = self.feed_forward(self.norm1(x))
        if self.self_attn is None:
            return t
        return x + self.dropout(self.self_attn(self.norm2(t), token_mask))

    def forward(self, x: Tensor, token_mask: Tensor | None, memory: Tensor, memory_mask: Tensor | None) -> Tensor:
        x = self.context(x, token_mask)
        if self.src_attn is not None:
            x = x + self.dropout(self.src_attn(self.norm3(x), memory, memory_mask)[0])
        return x

    def attention(self, x: Tensor, token_mask: Tensor | None, memory: Tensor, memory_mask: Tensor | None) -> Tensor:
        """The cross-attention weights `[B, heads, Tq, Tk]` of this layer (FunASR's `get_attn_mat`)."""
        assert self.src_attn is not None
        return self.src_attn(self.norm3(self.context(x, token_mask)), memory, memory_mask)[1]


class ParaformerSANMDecoder(nn.Module):
    """FunASR's `ParaformerSANMDecoder`: `embed.0` (token embedding, unless `wo_input_layer`), `decoders`
    (att_layer_num layers), `decoders2` (num_blocks - att_layer_num, FSMN only), `decoders3` (one feed-forward),
    `after_norm`, `output_layer` (unless `use_output_layer: false`)."""

    def __init__(
        self,
        vocab_size: int,
        encoder_output_size: int,
        attention_heads: int = 4,
        linear_units: int = 2048,
        num_blocks: int = 6,
        dropout_rate: float = 0.1,
        self_attention_dropout_rate: float = 0.0,
        src_attention_dropout_rate: float = 0.0,
        use_output_layer: bool = True,
        wo_input_layer: bool = False,
        att_layer_num: int = 6,
        kernel_size: int = 21,
        sanm_shfit: int = 0,
    ):
        super().__init__()
        d = encoder_output_size
        self.embed = None if wo_input_layer else nn.Sequential(nn.Embedding(vocab_size, d))
        self.after_norm = layer_norm(d)
        self.output_layer = nn.Linear(d, vocab_size) if use_output_layer else None
        self.decoders = nn.ModuleList(
            DecoderLayerSANM(
                d,
                linear_units,
                dropout_rate,
                MultiHeadedAttentionSANMDecoder(d, self_attention_dropout_rate, kernel_size, sanm_shfit),
                MultiHeadedAttentionCrossAtt(attention_heads, d, src_attention_dropout_rate),
            )
            for _ in range(att_layer_num)
        )
        n2 = num_blocks - att_layer_num
        self.decoders2 = (
            nn.ModuleList(
                DecoderLayerSANM(
                    d,
                    linear_units,
                    dropout_rate,
                    MultiHeadedAttentionSANMDecoder(d, self_attention_dropout_rate, kernel_size, 0),
                    None,
                )
                for _ in range(n2)
            )
            if n2 > 0
            else None
        )
        self.decoders3 = nn.ModuleList([DecoderLayerSANM(d, linear_units, dropout_rate, None, None)])

    def embed_tokens(self, ids: Tensor) -> Tensor:
        if self.embed is None:
            raise ValueError("this decoder has no token embedding (wo_input_layer)")
        return self.embed(ids)

    def hidden(self, memory: Tensor, memory_lengths: Tensor, queries: Tensor, query_lengths: Tensor) -> Tensor:
        """`after_norm` states `[B, K, D]` of `queries` (CIF embeddings) attending to `memory`."""
        token_mask = sequence_mask(query_lengths)[:, :, None]
        memory_mask = sequence_mask(memory_lengths, memory.shape[1])[:, None, :]
        x = queries
        for layer in [*self.decoders, *(self.decoders2 or []), *self.decoders3]:
            x = layer(x, token_mask, memory, memory_mask)
        return self.after_norm(x)

    def forward(
        self, memory: Tensor, memory_lengths: Tensor, queries: Tensor, query_lengths: Tensor
    ) -> tuple[Tensor, Tensor]:
        """(logits `[B, K, V]` (the hidden states when there is no output layer), hidden states `[B, K, D]`)."""
        h = self.hidden(memory, memory_lengths, queries, query_lengths)
        return (self.output_layer(h) if self.output_layer is not None else h), h

    def attention_scores(
        self, memory: Tensor, memory_lengths: Tensor, queries: Tensor, query_lengths: Tensor, layer: int
    ) -> Tensor:
        """Cross-attention weights `[B, heads, K, M]` of `decoders[layer]` (FunASR's `forward_asf6` is layer 5)."""
        token_mask = sequence_mask(query_lengths)[:, :, None]
        memory_mask = sequence_mask(memory_lengths, memory.shape[1])[:, None, :]
        x = queries
        for blk in self.decoders[:layer]:
            x = blk(x, token_mask, memory, memory_mask)
        last: DecoderLayerSANM = self.decoders[layer]  # type: ignore[assignment]
        return last.attention(x, token_mask, memory, memory_mask)


class ContextualBiasDecoder(nn.Module):
    """FunASR's `ContextualBiasDecoder`: `norm3` then cross-attention (`src_attn`) from the tokens to the hotwords."""

    def __init__(self, heads: int, size: int, dropout: float):
        super().__init__()
        self.src_attn = MultiHeadedAttentionCrossAtt(heads, size, dropout)
        self.norm3 = layer_norm(size)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, memory: Tensor, memory_mask: Tensor | None) -> Tensor:
        return self.dropout(self.src_attn(self.norm3(x), memory, memory_mask)[0])


class ContextualParaformerDecoder(ParaformerSANMDecoder):
    """FunASR's `ContextualParaformerDecoder` (ContextualParaformer): `decoders` holds att_layer_num - 1 layers,
    then `last_decoder` (a full layer whose FSMN output and cross-attention output are kept apart), `bias_decoder`
    (the FSMN output attending to the hotword vectors), and `bias_output` (a 1x1 convolution without bias, 2D -> D,
    over the cross-attention output and the hotword attention output), added to the FSMN output; then `decoders2`,
    `decoders3`, `after_norm` and `output_layer` as in `ParaformerSANMDecoder`."""

    def __init__(
        self,
        vocab_size: int,
        encoder_output_size: int,
        attention_heads: int = 4,
        linear_units: int = 2048,
        num_blocks: int = 6,
        dropout_rate: float = 0.1,
        self_attention_dropout_rate: float = 0.0,
        src_attention_dropout_rate: float = 0.0,
        use_output_layer: bool = True,
        wo_input_layer: bool = False,
        att_layer_num: int = 6,
        kernel_size: int = 21,
        sanm_shfit: int = 0,
    ):
        if att_layer_num < 1:
            raise ValueError("ContextualParaformerDecoder needs att_layer_num >= 1 (its last_decoder)")
        # the parent builds decoders (att_layer_num - 1), decoders2 (num_blocks - att_layer_num) and decoders3
        super().__init__(
            vocab_size,
            encoder_output_size,
            attention_heads,
            linear_units,
            num_blocks - 1,
            dropout_rate,
            self_attention_dropout_rate,
            src_attention_dropout_rate,
            use_output_layer,
            wo_input_layer,
            att_layer_num - 1,
            kernel_size,
            sanm_shfit,
        )
        d = encoder_output_size
        self.dropout = nn.Dropout(dropout_rate)
        self.bias_decoder = ContextualBiasDecoder(attention_heads, d, src_attention_dropout_rate)
        self.bias_output = nn.Conv1d(d * 2, d, 1, bias=False)
        self.last_decoder = DecoderLayerSANM(
            d,
            linear_units,
            dropout_rate,
            MultiHeadedAttentionSANMDecoder(d, self_attention_dropout_rate, kernel_size, sanm_shfit),
            MultiHeadedAttentionCrossAtt(attention_heads, d, src_attention_dropout_rate),
        )

    def hidden_with_context(
        self,
        memory: Tensor,
        memory_lengths: Tensor,
        queries: Tensor,
        query_lengths: Tensor,
        context: Tensor,
        clas_scale: float = 1.0,
    ) -> Tensor:
        """`after_norm` states `[B, K, D]`; `context` `[B, H, D]` are the hotword vectors (all valid)."""
        token_mask = sequence_mask(query_lengths)[:, :, None]
        memory_mask = sequence_mask(memory_lengths, memory.shape[1])[:, None, :]
        x = queries
        for layer in self.decoders:
            x = layer(x, token_mask, memory, memory_mask)
        last: DecoderLayerSANM = self.last_decoder
        assert last.src_attn is not None
        x_self = last.context(x, token_mask)
        x_src = last.src_attn(last.norm3(x_self), memory, memory_mask)[0]
        cx = self.bias_decoder(x_self, context, None)
        x = torch.cat([x_src, cx * clas_scale], dim=2)
        x = x_self + self.dropout(self.bias_output(x.transpose(1, 2)).transpose(1, 2))
        for layer in [*(self.decoders2 or []), *self.decoders3]:
            x = layer(x, token_mask, memory, memory_mask)
        return self.after_norm(x)

    def forward_with_context(
        self,
        memory: Tensor,
        memory_lengths: Tensor,
        queries: Tensor,
        query_lengths: Tensor,
        context: Tensor,
        clas_scale: float = 1.0,
    ) -> tuple[Tensor, Tensor]:
        """(logits `[B, K, V]`, hidden states `[B, K, D]`) with the hotword vectors `context` `[B, H, D]`."""
        h = self.hidden_with_context(memory, memory_lengths, queries, query_lengths, context, clas_scale)
        return (self.output_layer(h) if self.output_layer is not None else h), h
