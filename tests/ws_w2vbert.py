"""WeSpeaker's W2V-BERT 2.0 adapter-MFA model and its frontend, transcribed for the parity tests (transformers and
peft are not installed here).

From huggingface/transformers 4.57 `models/wav2vec2_bert/modeling_wav2vec2_bert.py` (`Wav2Vec2BertFeatureProjection`
.. `Wav2Vec2BertModel.forward`, the `relative_key` position branch, eval mode: no dropout, layerdrop or spec
augment), `models/seamless_m4t/feature_extraction_seamless_m4t.py` (`SeamlessM4TFeatureExtractor.__call__` for a
list of waveforms with `padding="longest"`) with the parts of `audio_utils.py` it calls (`mel_filter_bank` with the
Kaldi mel scale, `window_function("povey")`, `spectrogram`), and wenet-e2e/wespeaker `wespeaker/frontend/w2vbert.py`
(`W2VBertFrontend.forward`), `wespeaker/models/w2vbert_adapter_mfa.py` and `pooling_layers.ASP`. Same names, same
forward. `lora_state_dict` writes a checkpoint as PEFT's LoRA wrapper saves it (stage 1 of WeSpeaker's recipe).
"""

# ruff: noqa
# mypy: ignore-errors
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn


@dataclass
class Wav2Vec2BertConfig:
    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    intermediate_size: int = 4096
    feature_projection_input_dim: int = 160
    layer_norm_eps: float = 1e-5
    conv_depthwise_kernel_size: int = 31
    left_max_position_embeddings: int = 64
    right_max_position_embeddings: int = 8


# ---------------------------------------------------------------------------------------------------------------
# transformers: SeamlessM4TFeatureExtractor and the audio_utils it uses


def hertz_to_mel_kaldi(freq):
    return 1127.0 * np.log(1.0 + (freq / 700.0))


def _create_triangular_filter_bank(fft_freqs, filter_freqs):
    filter_diff = np.diff(filter_freqs)
    slopes = np.expand_dims(filter_freqs, 0) - np.expand_dims(fft_freqs, 1)
    down_slopes = -slopes[:, :-2] / filter_diff[:-1]
    up_slopes = slopes[:, 2:] / filter_diff[1:]
    return np.maximum(np.zeros(1), np.minimum(down_slopes, up_slopes))


def mel_filter_bank(num_frequency_bins, num_mel_filters, min_frequency, max_frequency, sampling_rate):
    # mel_scale="kaldi", triangularize_in_mel_space=True, norm=None
    mel_min = hertz_to_mel_kaldi(min_frequency)
    mel_max = hertz_to_mel_kaldi(max_frequency)
    mel_freqs = np.linspace(mel_min, mel_max, num_mel_filters + 2)
    fft_bin_width = sampling_rate / ((num_frequency_bins - 1) * 2)
    fft_freqs = hertz_to_mel_kaldi(fft_bin_width * np.arange(num_frequency_bins))
    return _create_triangular_filter_bank(fft_freqs, mel_freqs)


def povey_window(window_length):
    return np.power(np.hanning(window_length), 0.85)  # periodic=False


def spectrogram(waveform, window, frame_length, hop_length, fft_length, preemphasis, mel_filters, mel_floor):
    # power=2.0, center=False, log_mel="log", remove_dc_offset=True, dither=0, dtype=float32
    waveform = waveform.astype(np.float64)
    window = window.astype(np.float64)
    num_frames = int(1 + np.floor((waveform.size - frame_length) / hop_length))
    spec = np.empty((num_frames, fft_length // 2 + 1), dtype=np.complex64)
    buffer = np.zeros(fft_length)
    timestep = 0
    for frame_idx in range(num_frames):
        buffer[:frame_length] = waveform[timestep : timestep + frame_length]
        buffer[:frame_length] = buffer[:frame_length] - buffer[:frame_length].mean()
        buffer[1:frame_length] -= preemphasis * buffer[: frame_length - 1]
        buffer[0] *= 1 - preemphasis
        buffer[:frame_length] *= window
        spec[frame_idx] = np.fft.rfft(buffer)
        timestep += hop_length
    spec = np.abs(spec, dtype=np.float64) ** 2.0
    spec = spec.T
    spec = np.maximum(mel_floor, np.dot(mel_filters.T, spec))
    spec = np.log(spec)
    return np.asarray(spec, np.float32)


class SeamlessM4TFeatureExtractor:
    def __init__(self, num_mel_bins=80, sampling_rate=16000, stride=2):
        self.num_mel_bins, self.stride = num_mel_bins, stride
        self.mel_filters = mel_filter_bank(257, num_mel_bins, 20, sampling_rate // 2, sampling_rate)
        self.window = povey_window(400)

    def _extract_fbank_features(self, waveform):
        waveform = np.squeeze(waveform) * (2**15)
        return spectrogram(
            waveform, self.window, 400, 160, 512, 0.97, self.mel_filters, mel_floor=1.192092955078125e-07
        ).T

    def normalized(self, raw_speech):
        """The per-utterance features before padding (do_normalize_per_mel_bins=True)."""
        features = [self._extract_fbank_features(np.asarray(w, dtype=np.float32)) for w in raw_speech]
        return [
            (x - np.expand_dims(x.mean(0), 0)) / np.sqrt(np.expand_dims(x.var(0, ddof=1), 0) + 1e-7) for x in features
        ]

    def pad_and_stack(self, features):
        """`pad(padding="longest", pad_to_multiple_of=2)`, then the stride reshape and the attention mask."""
        longest = max(len(x) for x in features)
        if longest % 2:
            longest += 1
        input_features = np.stack([np.pad(x, ((0, longest - len(x)), (0, 0))) for x in features])
        attention_mask = np.stack([np.pad(np.ones(len(x), np.int32), (0, longest - len(x))) for x in features])
        batch_size, num_frames, num_channels = input_features.shape
        remainder = num_frames % self.stride
        if remainder != 0:
            input_features = input_features[:, : num_frames - remainder, :]
            attention_mask = attention_mask[:, : num_frames - remainder]
        input_features = np.reshape(input_features, (batch_size, num_frames // self.stride, num_channels * self.stride))
        indices = np.arange(0, num_frames - remainder)
        attention_mask = attention_mask[:, indices % self.stride == 1]
        return torch.from_numpy(input_features), torch.from_numpy(attention_mask)

    def __call__(self, raw_speech):
        return self.pad_and_stack(self.normalized(raw_speech))


# ---------------------------------------------------------------------------------------------------------------
# transformers: Wav2Vec2BertModel (relative_key positions)


class Wav2Vec2BertFeatureProjection(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layer_norm = nn.LayerNorm(config.feature_projection_input_dim, eps=config.layer_norm_eps)
        self.projection = nn.Linear(config.feature_projection_input_dim, config.hidden_size)

    def forward(self, hidden_states):
        norm_hidden_states = self.layer_norm(hidden_states)
        hidden_states = self.projection(norm_hidden_states)
        return hidden_states, norm_hidden_states


class Wav2Vec2BertFeedForward(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.intermediate_dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = nn.SiLU()  # ACT2FN["swish"]
        self.output_dense = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states):
        hidden_states = self.intermediate_dense(hidden_states)
        hidden_states = self.intermediate_act_fn(hidden_states)
        hidden_states = self.output_dense(hidden_states)
        return hidden_states


class Wav2Vec2BertConvolutionModule(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.pointwise_conv1 = nn.Conv1d(config.hidden_size, 2 * config.hidden_size, 1, 1, 0, bias=False)
        self.glu = nn.GLU(dim=1)
        self.depthwise_conv = nn.Conv1d(
            config.hidden_size,
            config.hidden_size,
            config.conv_depthwise_kernel_size,
            stride=1,
            padding=0,
            groups=config.hidden_size,
            bias=False,
        )
        self.depthwise_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.activation = nn.SiLU()
        self.pointwise_conv2 = nn.Conv1d(config.hidden_size, config.hidden_size, 1, 1, 0, bias=False)

    def forward(self, hidden_states, attention_mask=None):
        hidden_states = self.layer_norm(hidden_states)
        if attention_mask is not None:
            hidden_states = hidden_states.masked_fill(~attention_mask.bool().unsqueeze(-1), 0.0)
        hidden_states = hidden_states.transpose(1, 2)
        hidden_states = self.pointwise_conv1(hidden_states)
        hidden_states = self.glu(hidden_states)
        hidden_states = torch.nn.functional.pad(hidden_states, (self.depthwise_conv.kernel_size[0] - 1, 0))
        hidden_states = self.depthwise_conv(hidden_states)
        hidden_states = self.depthwise_layer_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        hidden_states = self.activation(hidden_states)
        hidden_states = self.pointwise_conv2(hidden_states)
        hidden_states = hidden_states.transpose(1, 2)
        return hidden_states


class Wav2Vec2BertSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        hidden_size = config.hidden_size
        self.head_size = hidden_size // config.num_attention_heads
        self.num_heads = config.num_attention_heads
        self.linear_q = nn.Linear(hidden_size, hidden_size)
        self.linear_k = nn.Linear(hidden_size, hidden_size)
        self.linear_v = nn.Linear(hidden_size, hidden_size)
        self.linear_out = nn.Linear(hidden_size, hidden_size)
        self.left_max_position_embeddings = config.left_max_position_embeddings
        self.right_max_position_embeddings = config.right_max_position_embeddings
        num_positions = self.left_max_position_embeddings + self.right_max_position_embeddings + 1
        self.distance_embedding = nn.Embedding(num_positions, self.head_size)

    def forward(self, hidden_states, attention_mask=None):
        batch_size, sequence_length, hidden_size = hidden_states.size()
        query = self.linear_q(hidden_states).view(batch_size, -1, self.num_heads, self.head_size)
        key = self.linear_k(hidden_states).view(batch_size, -1, self.num_heads, self.head_size)
        value = self.linear_v(hidden_states).view(batch_size, -1, self.num_heads, self.head_size)
        query = query.transpose(1, 2)
        key = key.transpose(1, 2)
        value = value.transpose(1, 2)
        scores = torch.matmul(query, key.transpose(-2, -1)) / math.sqrt(self.head_size)

        query_length, key_length = query.shape[2], key.shape[2]
        position_ids_l = torch.arange(query_length, dtype=torch.long).view(-1, 1)
        position_ids_r = torch.arange(key_length, dtype=torch.long).view(1, -1)
        distance = position_ids_r - position_ids_l
        distance = torch.clamp(distance, -self.left_max_position_embeddings, self.right_max_position_embeddings)
        positional_embedding = self.distance_embedding(distance + self.left_max_position_embeddings)
        positional_embedding = positional_embedding.to(dtype=query.dtype)
        relative_position_attn_weights = torch.einsum("bhld,lrd->bhlr", query, positional_embedding)
        scores = scores + (relative_position_attn_weights / math.sqrt(self.head_size))

        if attention_mask is not None:
            scores = scores + attention_mask
        probs = torch.softmax(scores, dim=-1)
        hidden_states = torch.matmul(probs, value)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, self.num_heads * self.head_size)
        hidden_states = self.linear_out(hidden_states)
        return hidden_states, probs


class Wav2Vec2BertEncoderLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        embed_dim = config.hidden_size
        self.ffn1_layer_norm = nn.LayerNorm(embed_dim, eps=config.layer_norm_eps)
        self.ffn1 = Wav2Vec2BertFeedForward(config)
        self.self_attn_layer_norm = nn.LayerNorm(embed_dim, eps=config.layer_norm_eps)
        self.self_attn = Wav2Vec2BertSelfAttention(config)
        self.conv_module = Wav2Vec2BertConvolutionModule(config)
        self.ffn2_layer_norm = nn.LayerNorm(embed_dim, eps=config.layer_norm_eps)
        self.ffn2 = Wav2Vec2BertFeedForward(config)
        self.final_layer_norm = nn.LayerNorm(embed_dim, eps=config.layer_norm_eps)

    def forward(self, hidden_states, attention_mask=None, conv_attention_mask=None):
        residual = hidden_states
        hidden_states = self.ffn1_layer_norm(hidden_states)
        hidden_states = self.ffn1(hidden_states)
        hidden_states = hidden_states * 0.5 + residual
        residual = hidden_states
        hidden_states = self.self_attn_layer_norm(hidden_states)
        hidden_states, attn_weigts = self.self_attn(hidden_states=hidden_states, attention_mask=attention_mask)
        hidden_states = hidden_states + residual
        residual = hidden_states
        hidden_states = self.conv_module(hidden_states, attention_mask=conv_attention_mask)
        hidden_states = residual + hidden_states
        residual = hidden_states
        hidden_states = self.ffn2_layer_norm(hidden_states)
        hidden_states = self.ffn2(hidden_states)
        hidden_states = hidden_states * 0.5 + residual
        hidden_states = self.final_layer_norm(hidden_states)
        return hidden_states, attn_weigts


class Wav2Vec2BertEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList([Wav2Vec2BertEncoderLayer(config) for _ in range(config.num_hidden_layers)])

    def forward(self, hidden_states, attention_mask=None):
        all_hidden_states = ()
        conv_attention_mask = attention_mask
        if attention_mask is not None:
            hidden_states = hidden_states.masked_fill(~attention_mask.bool().unsqueeze(-1), 0.0)
            attention_mask = 1.0 - attention_mask[:, None, None, :].to(dtype=hidden_states.dtype)
            attention_mask = attention_mask * torch.finfo(hidden_states.dtype).min
            attention_mask = attention_mask.expand(
                attention_mask.shape[0], 1, attention_mask.shape[-1], attention_mask.shape[-1]
            )
        for layer in self.layers:
            all_hidden_states = all_hidden_states + (hidden_states,)
            hidden_states = layer(
                hidden_states, attention_mask=attention_mask, conv_attention_mask=conv_attention_mask
            )[0]
        all_hidden_states = all_hidden_states + (hidden_states,)
        return hidden_states, all_hidden_states


class Wav2Vec2BertModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.feature_projection = Wav2Vec2BertFeatureProjection(config)
        self.encoder = Wav2Vec2BertEncoder(config)

    def forward(self, input_features, attention_mask=None):
        hidden_states, extract_features = self.feature_projection(input_features)
        return self.encoder(hidden_states, attention_mask=attention_mask)


# ---------------------------------------------------------------------------------------------------------------
# WeSpeaker: the w2vbert frontend (as a LoRA-merged / stage 2-3 model: the encoder called directly), the adapter MFA
# model and ASP


class W2VBertFrontend(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.processor = SeamlessM4TFeatureExtractor()
        self.encoder = Wav2Vec2BertModel(config)

    def forward(self, wavs, wavs_len):
        features = self.processor(list(wavs.cpu()))
        last_hidden_state, all_hidden_states = self.encoder(*features)
        return all_hidden_states, last_hidden_state


class ASP(nn.Module):
    def __init__(self, input_dim=None, hidden_dim=None):
        super().__init__()
        self.feature_dim = input_dim
        self.out_dim = self.feature_dim * 2
        hidden_dim = hidden_dim or 128
        self.attention = nn.Sequential(
            nn.Conv1d(self.feature_dim, hidden_dim, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.BatchNorm1d(hidden_dim),
            nn.Conv1d(hidden_dim, self.feature_dim, kernel_size=1),
            nn.Softmax(dim=2),
        )

    def forward(self, x: torch.Tensor):
        if x.dim() == 4:
            x = x.reshape(x.size(0), -1, x.size(-1))
        elif x.dim() == 3 and x.shape[1] != self.feature_dim:
            x = x.transpose(1, 2)
        w = self.attention(x)
        mu = torch.sum(x * w, dim=2)
        sg = torch.sqrt((torch.sum((x**2) * w, dim=2) - mu**2).clamp(min=1e-5))
        return torch.cat([mu, sg], dim=1)


class W2VBert_Adapter_MFA(nn.Module):
    def __init__(
        self,
        feat_dim: int,
        embed_dim: int = 256,
        pooling_func: str = "ASP",
        n_mfa_layers: int = -1,
        adapter_dim: int = 128,
        dropout: float = 0.0,
        num_frontend_hidden_layers: int = 24,
    ):
        super().__init__()
        num_available_states = num_frontend_hidden_layers + 1
        self.n_mfa_layers = num_available_states if n_mfa_layers == -1 else n_mfa_layers
        self.adapter_layers = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Linear(feat_dim, adapter_dim),
                    nn.LayerNorm(adapter_dim),
                    nn.ReLU(True),
                    nn.Linear(adapter_dim, adapter_dim),
                )
                for _ in range(self.n_mfa_layers)
            ]
        )
        pooling_input_dim = adapter_dim * self.n_mfa_layers
        self.pooling = ASP(input_dim=pooling_input_dim, hidden_dim=adapter_dim)
        self.bottleneck = nn.Linear(self.pooling.out_dim, embed_dim)
        self.drop = nn.Identity()

    def forward(self, all_hidden_states: tuple):
        hidden_states_to_use = all_hidden_states[-self.n_mfa_layers :]
        adapter_outputs = []
        for i in range(self.n_mfa_layers):
            adapter_outputs.append(self.adapter_layers[i](hidden_states_to_use[i]))
        combined_features = torch.cat(adapter_outputs, dim=-1)
        combined_features = combined_features.transpose(1, 2)
        pooled_embedding = self.pooling(combined_features)
        pooled_embedding = self.drop(pooled_embedding)
        embedding = self.bottleneck(pooled_embedding)
        return torch.tensor(0.0), embedding


def build(config: Wav2Vec2BertConfig, embed_dim: int = 256, n_mfa_layers: int = -1) -> nn.Module:
    """`get_speaker_model("W2VBert_Adapter_MFA")(...)` with `model.add_module("frontend", W2VBertFrontend(...))`, as
    `bin/extract.py` builds it; `forward_features` is the embedding of the frontend's unstacked features."""
    model = W2VBert_Adapter_MFA(
        config.hidden_size, embed_dim, n_mfa_layers=n_mfa_layers, num_frontend_hidden_layers=config.num_hidden_layers
    )
    model.add_module("frontend", W2VBertFrontend(config))
    return model


def embed_waves(model: nn.Module, wavs: torch.Tensor) -> torch.Tensor:
    """`bin/extract.py` for a non-fbank frontend: `features, _ = model.frontend(wavs, wavs_len)`, then the model."""
    features, _ = model.frontend(wavs, torch.full((wavs.shape[0],), wavs.shape[1]))
    return model(features)[-1]


def embed_features(model: nn.Module, feats: torch.Tensor) -> torch.Tensor:
    """The same from the extractor's normalised features `[B, T, 80]` (before the pad and stride reshape)."""
    stacked, mask = model.frontend.processor.pad_and_stack([f.numpy() for f in feats])
    _, states = model.frontend.encoder(stacked, attention_mask=mask)
    return W2VBert_Adapter_MFA.forward(model, states)[-1]


def lora_state_dict(model: nn.Module, rank: int = 4, alpha: int = 8, seed: int = 0) -> tuple[dict, dict]:
    """(the checkpoint PEFT's LoRA wrapper saves for `model`, the merged weights it stands for): `linear_q` and
    `linear_v` become `base_layer` + `lora_A.default` `[r, in]` + `lora_B.default` `[out, r]` under
    `frontend.encoder.base_model.model.`; merging adds `B @ A * alpha / r` to each base weight."""
    g = torch.Generator().manual_seed(seed)
    saved, merged = {}, {}
    for key, value in model.state_dict().items():
        value = value.clone()  # the caller loads `merged` into the model: the saved base weights must stay
        if not key.startswith("frontend.encoder."):
            saved[key] = merged[key] = value
            continue
        inner = key[len("frontend.encoder.") :]
        peft = "frontend.encoder.base_model.model." + inner
        module, _, name = inner.rpartition(".")
        if module.endswith(("self_attn.linear_q", "self_attn.linear_v")):
            saved[f"frontend.encoder.base_model.model.{module}.base_layer.{name}"] = value
            if name == "weight":
                a = torch.randn(rank, value.shape[1], generator=g) * 0.1
                b = torch.randn(value.shape[0], rank, generator=g) * 0.1
                saved[f"frontend.encoder.base_model.model.{module}.lora_A.default.weight"] = a
                saved[f"frontend.encoder.base_model.model.{module}.lora_B.default.weight"] = b
                merged[key] = value + (b @ a) * (alpha / rank)
            else:
                merged[key] = value
        else:
            saved[peft] = merged[key] = value
    return saved, merged


class W2VBertMFAOnFeatures(W2VBert_Adapter_MFA):
    """The released model (with its frontend's encoder) reading the extractor's normalised features `[B, T, 80]`,
    as `bench/models.py` feeds every model; its state dict is WeSpeaker's (`wespeaker_arch` names our converter)."""

    wespeaker_arch = "w2vbert_mfa"

    def __init__(self, embed_dim=256):
        super().__init__(1024, embed_dim)
        self.add_module("frontend", W2VBertFrontend(Wav2Vec2BertConfig()))

    def forward(self, feats):
        return embed_features(self, feats)
