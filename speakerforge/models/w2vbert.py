"""W2V-BERT 2.0 with an adapter MFA head: WeSpeaker's `W2VBert_Adapter_MFA` over its `w2vbert` frontend.

The encoder is Hugging Face's `Wav2Vec2BertModel` as `facebook/w2v-bert-2.0` configures it (24 conformer layers of
width 1024, 16 heads, relative-key position embeddings clipped to 64 frames left and 8 right, a causal depthwise
convolution of kernel 31), written here with its sub-module names so that a checkpoint's tensors keep theirs. The
head adapts every hidden state (the projected input and each layer's output) to 128 channels, concatenates them,
and pools them with WeSpeaker's ASP into a 256-d bottleneck.

Input is the frontend's features before stacking: 80-bin Kaldi fbank, normalised per utterance and bin to zero mean
and unit (unbiased) variance (`FeatureSpec(var_norm=True)`). The model stacks frame pairs into 160-d frames as
`SeamlessM4TFeatureExtractor` does: an odd frame count gets a zero frame appended, and the stacked frame that holds
it is masked out of attention and convolution (it still enters the pooling, as in WeSpeaker).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from typing import Any, cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from speakerforge.errors import CheckpointError
from speakerforge.models.pooling import build_pooling
from speakerforge.models.registry import register_model

__all__ = ["W2VBertMFA", "W2VBertEncoder", "stack_frames", "merge_lora", "wespeaker_encoder_tensors"]

log = logging.getLogger(__name__)

LAYER_NORM_EPS = 1e-5

# ----------------------------------------------------------------------------------------------------------------
# WeSpeaker's checkpoints: the encoder sits under its `w2vbert` frontend (`frontend.encoder.`), wrapped by PEFT in a
# stage-1 (LoRA) checkpoint. `models.convert` renames the keys; these make the tensors those of a plain encoder.

_ENCODER = "frontend.encoder."
_PEFT_PREFIX = _ENCODER + "base_model.model."
_LORA = re.compile(r"(.*)\.lora_([AB])\.([^.]+)\.weight$")
# PEFT scales a LoRA update by lora_alpha / r; every WeSpeaker W2V-BERT recipe (and its LoRA config's defaults) has
# alpha = 2r, and the checkpoint does not store alpha.
WESPEAKER_LORA_SCALE = 2.0
# The spec-augment vector Hugging Face keeps for pre-training; WeSpeaker deletes it, older checkpoints may hold it.
_UNUSED = (_ENCODER + "masked_spec_embed",)


def merge_lora(state_dict: Mapping[str, torch.Tensor], scale: float = WESPEAKER_LORA_SCALE) -> dict[str, torch.Tensor]:
    """A stage-1 checkpoint (PEFT's LoRA wrapper around the encoder: `base_model.model.` prefix, `base_layer` +
    `lora_A`/`lora_B` per adapted linear) -> the plain encoder's tensors, each `W + scale * B @ A`, as WeSpeaker's
    `tools/merge_lora.py` (`merge_and_unload`) writes them. A checkpoint without LoRA tensors is returned as is."""
    if not any(k.startswith(_PEFT_PREFIX) for k in state_dict):
        return dict(state_dict)
    halves: dict[str, dict[str, torch.Tensor]] = {}
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        m = _LORA.match(key)
        if m:
            halves.setdefault(m[1], {})[m[2]] = value
            continue
        if key.startswith(_PEFT_PREFIX):
            key = _ENCODER + key[len(_PEFT_PREFIX) :]
        out[key.replace(".base_layer.", ".")] = value
    for module, pair in sorted(halves.items()):
        target = _ENCODER + module.removeprefix(_PEFT_PREFIX) + ".weight"
        missing = [f"lora_{half}" for half in "AB" if half not in pair] + (["base_layer"] if target not in out else [])
        if missing:
            raise CheckpointError(f"LoRA tensors of {module} come without their {' and '.join(missing)}")
        update = pair["B"].to(torch.float32) @ pair["A"].to(torch.float32)
        out[target] = out[target] + (scale * update).to(out[target].dtype)
    log.info("checkpoint: merged %d LoRA pair(s) into the encoder (scale alpha/r = %g)", len(halves), scale)
    return out


def wespeaker_encoder_tensors(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A WeSpeaker checkpoint's tensors with any LoRA merged and the unused pre-training vector set aside."""
    return {k: v for k, v in merge_lora(state_dict).items() if k not in _UNUSED}


def stack_frames(x: torch.Tensor, stride: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """`[B, T, F]` -> (`[B, ceil(T / stride), stride * F]`, valid `[B, ceil(T / stride)]` bool).

    Written without a branch on `T` so that a traced (ONNX) graph keeps a dynamic length: the padding is always
    appended and then cut back to a multiple of `stride`."""
    b, t, f = x.shape
    padded = torch.cat([x, x.new_zeros(b, stride - 1, f)], dim=1)
    n = (t + stride - 1) // stride
    stacked = padded[:, : n * stride].reshape(b, n, stride * f)
    # the extractor's attention mask is its frame mask at the last frame of each stack
    valid = torch.arange(n, device=x.device) * stride + (stride - 1) < t
    return stacked, valid.unsqueeze(0).expand(b, n)


class FeatureProjection(nn.Module):
    def __init__(self, in_dim: int, hidden: int):
        super().__init__()
        self.layer_norm = nn.LayerNorm(in_dim, eps=LAYER_NORM_EPS)
        self.projection = nn.Linear(in_dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(self.layer_norm(x))


class FeedForward(nn.Module):
    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.intermediate_dense = nn.Linear(hidden, intermediate)
        self.output_dense = nn.Linear(intermediate, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_dense(F.silu(self.intermediate_dense(x)))


class ConvolutionModule(nn.Module):
    """Pointwise conv + GLU, causal depthwise conv, LayerNorm, swish, pointwise conv. The pointwise convs keep
    their Conv1d weights (`[out, in, 1]`, as released) and run as matrix products on `[B, T, C]`."""

    def __init__(self, hidden: int, kernel: int):
        super().__init__()
        self.layer_norm = nn.LayerNorm(hidden, eps=LAYER_NORM_EPS)
        self.pointwise_conv1 = nn.Conv1d(hidden, 2 * hidden, 1, bias=False)
        self.depthwise_conv = nn.Conv1d(hidden, hidden, kernel, groups=hidden, bias=False)
        self.depthwise_layer_norm = nn.LayerNorm(hidden, eps=LAYER_NORM_EPS)
        self.pointwise_conv2 = nn.Conv1d(hidden, hidden, 1, bias=False)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        x = self.layer_norm(x).masked_fill(~valid.unsqueeze(-1), 0.0)  # padding must not leak into the conv
        x = F.glu(F.linear(x, self.pointwise_conv1.weight[..., 0]), dim=-1).transpose(1, 2)
        x = self.depthwise_conv(F.pad(x, (self.depthwise_conv.kernel_size[0] - 1, 0))).transpose(1, 2)
        return F.linear(F.silu(self.depthwise_layer_norm(x)), self.pointwise_conv2.weight[..., 0])


class SelfAttention(nn.Module):
    """Multi-head attention with learned relative-key position embeddings (`distance_embedding`): the score of
    query `l` and key `r` gains `q_l . E[clip(r - l)] / sqrt(d)`, computed once per distance and gathered."""

    def __init__(self, hidden: int, heads: int, left: int, right: int):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"w2vbert hidden_size {hidden} is not divisible by num_heads {heads}")
        self.heads, self.head_size = heads, hidden // heads
        self.linear_q = nn.Linear(hidden, hidden)
        self.linear_k = nn.Linear(hidden, hidden)
        self.linear_v = nn.Linear(hidden, hidden)
        self.linear_out = nn.Linear(hidden, hidden)
        self.distance_embedding = nn.Embedding(left + right + 1, self.head_size)

    def forward(self, x: torch.Tensor, distance: torch.Tensor, key_bias: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape

        def heads(linear: nn.Module) -> torch.Tensor:
            return cast(torch.Tensor, linear(x)).view(b, t, self.heads, self.head_size).transpose(1, 2)

        q, k, v = heads(self.linear_q), heads(self.linear_k), heads(self.linear_v)
        scale = 1.0 / math.sqrt(self.head_size)
        per_distance = q @ self.distance_embedding.weight.to(q.dtype).t()  # [B, H, T, distances]
        position = per_distance.gather(-1, distance.expand(b, self.heads, t, t)) * scale
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=position + key_bias, scale=scale)
        return cast(torch.Tensor, self.linear_out(out.transpose(1, 2).reshape(b, t, -1)))


class ConformerLayer(nn.Module):
    def __init__(self, hidden: int, heads: int, intermediate: int, kernel: int, left: int, right: int):
        super().__init__()
        self.ffn1_layer_norm = nn.LayerNorm(hidden, eps=LAYER_NORM_EPS)
        self.ffn1 = FeedForward(hidden, intermediate)
        self.self_attn_layer_norm = nn.LayerNorm(hidden, eps=LAYER_NORM_EPS)
        self.self_attn = SelfAttention(hidden, heads, left, right)
        self.conv_module = ConvolutionModule(hidden, kernel)
        self.ffn2_layer_norm = nn.LayerNorm(hidden, eps=LAYER_NORM_EPS)
        self.ffn2 = FeedForward(hidden, intermediate)
        self.final_layer_norm = nn.LayerNorm(hidden, eps=LAYER_NORM_EPS)

    def forward(
        self, x: torch.Tensor, valid: torch.Tensor, distance: torch.Tensor, key_bias: torch.Tensor
    ) -> torch.Tensor:
        x = x + 0.5 * self.ffn1(self.ffn1_layer_norm(x))
        x = x + self.self_attn(self.self_attn_layer_norm(x), distance, key_bias)
        x = x + self.conv_module(x, valid)
        x = x + 0.5 * self.ffn2(self.ffn2_layer_norm(x))
        return cast(torch.Tensor, self.final_layer_norm(x))


class W2VBertEncoder(nn.Module):
    """Stacked fbank `[B, T, in_dim]` -> the hidden states: the projected (masked) input and every layer's output."""

    def __init__(
        self,
        in_dim: int,
        hidden: int,
        layers: int,
        heads: int,
        intermediate: int,
        kernel: int,
        left: int,
        right: int,
    ):
        super().__init__()
        self.left, self.right = left, right
        self.feature_projection = FeatureProjection(in_dim, hidden)
        self.layers = nn.ModuleList(
            ConformerLayer(hidden, heads, intermediate, kernel, left, right) for _ in range(layers)
        )

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> list[torch.Tensor]:
        h = self.feature_projection(x).masked_fill(~valid.unsqueeze(-1), 0.0)
        t = h.shape[1]
        pos = torch.arange(t, device=h.device)
        distance = ((pos[None, :] - pos[:, None]).clamp(-self.left, self.right) + self.left)[None, None]
        # masked keys get the dtype's lowest value, as in Hugging Face (a row with no valid key stays uniform)
        key_bias = (~valid).to(h.dtype)[:, None, None, :] * torch.finfo(h.dtype).min
        states = [h]
        for layer in self.layers:
            h = layer(h, valid, distance, key_bias)
            states.append(h)
        return states


@register_model("w2vbert_mfa")
class W2VBertMFA(nn.Module):
    """Normalised 80-bin fbank `[B, T, feat_dim]` -> `[B, embedding_dim]`: W2V-BERT 2.0 and an adapter MFA head.

    The defaults are the released model (`facebook/w2v-bert-2.0`, 580M parameters in the encoder); `hidden_size`,
    `num_layers`, `num_heads` and `intermediate_size` shrink it for tests. `mfa_layers` is how many of the last
    hidden states the head reads (-1: all, `num_layers + 1`)."""

    def __init__(
        self,
        feat_dim: int = 80,
        embedding_dim: int = 256,
        hidden_size: int = 1024,
        num_layers: int = 24,
        num_heads: int = 16,
        intermediate_size: int = 4096,
        conv_kernel: int = 31,
        left_positions: int = 64,
        right_positions: int = 8,
        stride: int = 2,
        adapter_dim: int = 128,
        mfa_layers: int = -1,
        pooling: str = "ASP",
        dropout: float = 0.0,
    ):
        super().__init__()
        states = num_layers + 1
        self.mfa_layers = states if mfa_layers == -1 else mfa_layers
        if not 1 <= self.mfa_layers <= states:
            raise ValueError(f"w2vbert_mfa mfa_layers={mfa_layers}: choose -1 (all) or 1..{states}")
        self.feat_dim, self.embedding_dim, self.stride = feat_dim, embedding_dim, stride
        self.encoder = W2VBertEncoder(
            feat_dim * stride,
            hidden_size,
            num_layers,
            num_heads,
            intermediate_size,
            conv_kernel,
            left_positions,
            right_positions,
        )
        self.adapter_layers = nn.ModuleList(
            nn.Sequential(
                nn.Linear(hidden_size, adapter_dim),
                nn.LayerNorm(adapter_dim),
                nn.ReLU(),
                nn.Linear(adapter_dim, adapter_dim),
            )
            for _ in range(self.mfa_layers)
        )
        pooled_in = adapter_dim * self.mfa_layers
        kwargs: dict[str, Any] = {"bottleneck_dim": adapter_dim} if pooling.upper() in ("ASP", "ASTP") else {}
        self.pool = build_pooling(pooling, pooled_in, **kwargs)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.bottleneck = nn.Linear(pooled_in * int(cast(Any, self.pool).n_stats), embedding_dim)

    def frame_features(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, T, F]` -> the adapted hidden states concatenated, `[B, adapter_dim * mfa_layers, T']`."""
        stacked, valid = stack_frames(x, self.stride)
        states = self.encoder(stacked, valid)[-self.mfa_layers :]
        return torch.cat([adapt(h) for adapt, h in zip(self.adapter_layers, states)], dim=-1).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, T, feat_dim]` normalised fbank -> `[B, embedding_dim]`."""
        return cast(torch.Tensor, self.bottleneck(self.drop(self.pool(self.frame_features(x)))))
