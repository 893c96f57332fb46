"""WeSpeaker's ReDimNet2 and its TF-style mel frontend, transcribed for the parity tests (not installed here).

From wenet-e2e/wespeaker `wespeaker/models/redimnet2.py` (`LayerNorm` .. `ReDimNet2`, the B6 constructor and
`ReDimNet2Wrap` with `spec=None` as `bin/extract.py` builds it for a `tfmel` model), `wespeaker/models/pooling_layers.py`
(`ASTP`) and `wespeaker/frontend/tfmel.py` (`TFMelBanks`; scipy's symmetric Hamming window written out). Same names,
same forward; only the parts the released B6 uses, and no training-only branches (spec augment).
"""

# ruff: noqa
# mypy: ignore-errors
from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def ShapeLogger(x):
    return x


class FreqEncoder(nn.Module):  # unused by B6 (use_freq_pos_enc=False)
    pass


class LayerNorm(nn.Module):
    def __init__(self, C, eps=1e-6, data_format="channels_last"):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(C))
        self.bias = nn.Parameter(torch.zeros(C))
        self.eps = eps
        self.data_format = data_format
        if self.data_format not in ["channels_last", "channels_first"]:
            raise NotImplementedError
        self.C = (C,)

    def forward(self, x):
        if self.data_format == "channels_last":
            return F.layer_norm(x, self.C, self.weight, self.bias, self.eps)
        elif self.data_format == "channels_first":
            u = x.mean(1, keepdim=True)
            s = (x - u).pow(2).mean(1, keepdim=True)
            x = (x - u) / torch.sqrt(s + self.eps)
            w = self.weight
            b = self.bias
            for _ in range(x.ndim - 2):
                w = w.unsqueeze(-1)
                b = b.unsqueeze(-1)
            x = w * x + b
            return x


class fwSEBlock(nn.Module):
    def __init__(self, num_freq, num_feats=64):
        super(fwSEBlock, self).__init__()
        self.squeeze = nn.Linear(num_freq, num_feats)
        self.exitation = nn.Linear(num_feats, num_freq)
        self.activation = nn.ReLU()

    def forward(self, inputs):
        x = torch.mean(inputs, dim=[1, 3])
        x = self.squeeze(x)
        x = self.activation(x)
        x = self.exitation(x)
        x = torch.sigmoid(x)
        x = x[:, None, :, None]
        x = inputs * x
        return x


class ResBasicBlock(nn.Module):
    def __init__(self, inc, outc, num_freq, stride=1, se_channels=64, Gdiv=4, use_fwSE=False):
        super().__init__()
        self.conv1 = nn.Conv2d(
            inc,
            inc if Gdiv is not None else outc,
            kernel_size=3,
            stride=stride,
            padding=1,
            bias=False,
            groups=inc // Gdiv if Gdiv is not None else 1,
        )
        if Gdiv is not None:
            self.conv1pw = nn.Conv2d(inc, outc, 1)
        else:
            self.conv1pw = nn.Identity()
        self.bn1 = nn.BatchNorm2d(outc)
        self.conv2 = nn.Conv2d(
            outc, outc, kernel_size=3, padding=1, bias=False, groups=outc // Gdiv if Gdiv is not None else 1
        )
        if Gdiv is not None:
            self.conv2pw = nn.Conv2d(outc, outc, 1)
        else:
            self.conv2pw = nn.Identity()
        self.bn2 = nn.BatchNorm2d(outc)
        self.relu = nn.ReLU(inplace=True)
        if use_fwSE:
            self.se = fwSEBlock(num_freq, se_channels)
        else:
            self.se = nn.Identity()
        if outc != inc:
            self.downsample = nn.Sequential(
                nn.Conv2d(inc, outc, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(outc),
            )
        else:
            self.downsample = nn.Identity()

    def forward(self, x):
        residual = x
        out = self.conv1pw(self.conv1(x))
        out = self.relu(out)
        out = self.bn1(out)
        out = self.conv2pw(self.conv2(out))
        out = self.bn2(out)
        out = self.se(out)
        out += self.downsample(residual)
        out = self.relu(out)
        return out


ConvNd = {1: nn.Conv1d, 2: nn.Conv2d}
BatchNormNd = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}


class ConvNeXtLikeBlock(nn.Module):
    def __init__(self, C, dim=2, kernel_sizes=None, Gdiv=1, padding="same", activation="gelu"):
        super().__init__()
        if kernel_sizes is None:
            kernel_sizes = [(3, 3)]
        self.dwconvs = nn.ModuleList(
            modules=[
                ConvNd[dim](C, C, kernel_size=ks, padding=padding, groups=C // Gdiv if Gdiv is not None else 1)
                for ks in kernel_sizes
            ]
        )
        self.norm = BatchNormNd[dim](C * len(kernel_sizes))
        if activation == "gelu":
            self.act = nn.GELU()
        elif activation == "relu":
            self.act = nn.ReLU()
        self.pwconv1 = ConvNd[dim](C * len(kernel_sizes), C, 1)

    def forward(self, x):
        skip = x
        x = torch.cat([dwconv(x) for dwconv in self.dwconvs], dim=1)
        x = self.act(self.norm(x))
        x = self.pwconv1(x)
        x = skip + x
        return x


class MultiHeadAttention(nn.Module):
    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.head_dim = embed_dim // num_heads
        if (self.head_dim * num_heads) != self.embed_dim:
            raise ValueError("embed_dim must be divisible by num_heads")
        self.scaling = self.head_dim**-0.5
        self.k_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)

    def _shape(self, tensor: torch.Tensor, seq_len: int, bsz: int):
        return tensor.view(bsz, seq_len, self.num_heads, self.head_dim).transpose(1, 2).contiguous()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        bsz, tgt_len, _ = hidden_states.size()
        query_states = self.q_proj(hidden_states) * self.scaling
        key_states = self._shape(self.k_proj(hidden_states), -1, bsz)
        value_states = self._shape(self.v_proj(hidden_states), -1, bsz)
        proj_shape = (bsz * self.num_heads, -1, self.head_dim)
        query_states = self._shape(query_states, tgt_len, bsz).view(*proj_shape)
        key_states = key_states.view(*proj_shape)
        value_states = value_states.view(*proj_shape)
        src_len = key_states.size(1)
        attn_weights = torch.bmm(query_states, key_states.transpose(1, 2))
        attn_weights = F.softmax(attn_weights, dim=-1)
        attn_probs = F.dropout(attn_weights, p=self.dropout, training=self.training)
        attn_output = torch.bmm(attn_probs, value_states)
        attn_output = attn_output.view(bsz, self.num_heads, tgt_len, self.head_dim)
        attn_output = attn_output.transpose(1, 2)
        attn_output = attn_output.reshape(bsz, tgt_len, self.embed_dim)
        attn_output = self.out_proj(attn_output)
        return attn_output


class NewGELUActivation(nn.Module):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return 0.5 * input * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (input + 0.044715 * torch.pow(input, 3.0))))


class GELUActivation(nn.Module):
    def __init__(self, use_gelu_python: bool = False):
        super().__init__()
        self.act = F.gelu if not use_gelu_python else self._gelu_python

    def _gelu_python(self, input: torch.Tensor) -> torch.Tensor:
        return input * 0.5 * (1.0 + torch.erf(input / math.sqrt(2.0)))

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.act(input)


class FastGELUActivation(nn.Module):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return 0.5 * input * (1.0 + torch.tanh(input * 0.7978845608 * (1.0 + 0.044715 * input * input)))


class QuickGELUActivation(nn.Module):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return input * torch.sigmoid(1.702 * input)


ACT2CLS = {
    "gelu": GELUActivation,
    "gelu_new": NewGELUActivation,
    "gelu_fast": FastGELUActivation,
    "linear": nn.Identity,
    "relu": nn.ReLU,
    "silu": nn.SiLU,
}
ACT2FN = {k: v() if isinstance(v, type) else v for k, v in ACT2CLS.items()}


class FeedForward(nn.Module):
    def __init__(
        self,
        hidden_size: int,
        intermediate_size: int,
        hidden_act: str = "gelu_new",
        activation_dropout: float = 0.0,
        hidden_dropout: float = 0.0,
    ):
        super().__init__()
        self.intermediate_dropout = nn.Dropout(activation_dropout)
        self.intermediate_dense = nn.Linear(hidden_size, intermediate_size)
        self.intermediate_act_fn = ACT2FN.get(hidden_act, GELUActivation())
        self.output_dense = nn.Linear(intermediate_size, hidden_size)
        self.output_dropout = nn.Dropout(hidden_dropout)

    def forward(self, hidden_states):
        hidden_states = self.intermediate_dense(hidden_states)
        hidden_states = self.intermediate_act_fn(hidden_states)
        hidden_states = self.intermediate_dropout(hidden_states)
        hidden_states = self.output_dense(hidden_states)
        hidden_states = self.output_dropout(hidden_states)
        return hidden_states


class TransformerEncoderLayer(nn.Module):
    def __init__(
        self,
        n_state: int,
        n_mlp: int,
        n_head: int,
        channel_last: bool = False,
        act: str = "gelu_new",
        act_do: float = 0.0,
        att_do: float = 0.0,
        hid_do: float = 0.0,
        ln_eps: float = 1e-6,
    ):
        super().__init__()
        self.channel_last = channel_last
        self.attention = MultiHeadAttention(embed_dim=n_state, num_heads=n_head, dropout=att_do)
        self.layer_norm = nn.LayerNorm(n_state, eps=ln_eps)
        self.feed_forward = FeedForward(
            hidden_size=n_state,
            hidden_act=act,
            intermediate_size=n_mlp,
            activation_dropout=act_do,
            hidden_dropout=hid_do,
        )
        self.final_layer_norm = nn.LayerNorm(n_state, eps=ln_eps)

    def forward(self, hidden_states):
        if not self.channel_last:
            hidden_states = hidden_states.permute(0, 2, 1)
        attn_residual = hidden_states
        hidden_states = self.attention(hidden_states)
        hidden_states = attn_residual + hidden_states
        hidden_states = self.layer_norm(hidden_states)
        hidden_states = hidden_states + self.feed_forward(hidden_states)
        hidden_states = self.final_layer_norm(hidden_states)
        outputs = hidden_states
        if not self.channel_last:
            outputs = outputs.permute(0, 2, 1)
        return outputs


class to1d(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.size()
        bs, c, f, t = size
        return x.permute((0, 2, 1, 3)).reshape((bs, c * f, t))


class to2d(nn.Module):
    def __init__(self, f, c):
        super().__init__()
        self.f = f
        self.c = c

    def forward(self, x):
        bs, cf, t = x.size()
        out = x.reshape((bs, self.f, self.c, t)).permute((0, 2, 1, 3))
        return out


class weigth1d(nn.Module):
    def __init__(self, N, C, sequential=False, requires_grad=True):
        super().__init__()
        self.N = N
        self.sequential = sequential
        self.w = nn.Parameter(torch.zeros(1, N, C, 1), requires_grad=requires_grad)

    def forward(self, xs):
        w = F.softmax(self.w, dim=1)
        if not self.sequential:
            xs = torch.cat([t.unsqueeze(1) for t in xs], dim=1)
            x = (w * xs).sum(dim=1)
        else:
            s = torch.zeros_like(xs[0])
            for i, t in enumerate(xs):
                s += t * w[:, i, :, :]
            x = s
        return x


class ConvBlock2d(nn.Module):
    def __init__(self, c, f, block_type="convnext_like", Gdiv=1, kernel_sizes=None):
        super().__init__()
        if kernel_sizes is None:
            kernel_sizes = [(3, 3)]
        if block_type == "convnext_like":
            self.conv_block = ConvNeXtLikeBlock(
                c, dim=2, kernel_sizes=kernel_sizes, Gdiv=Gdiv, padding="same", activation="gelu"
            )
        elif block_type == "convnext_like_relu":
            self.conv_block = ConvNeXtLikeBlock(
                c, dim=2, kernel_sizes=kernel_sizes, Gdiv=Gdiv, padding="same", activation="relu"
            )
        elif block_type == "basic_resnet":
            self.conv_block = ResBasicBlock(
                c, c, f, stride=1, se_channels=min(64, max(c, 32)), Gdiv=Gdiv, use_fwSE=False
            )
        elif block_type == "basic_resnet_fwse":
            self.conv_block = ResBasicBlock(
                c, c, f, stride=1, se_channels=min(64, max(c, 32)), Gdiv=Gdiv, use_fwSE=True
            )
        else:
            raise NotImplementedError()

    def forward(self, x):
        return self.conv_block(x)


class PosEncConv(nn.Module):
    def __init__(self, C, ks, groups=None):
        super().__init__()
        assert ks % 2 == 1
        self.conv = nn.Conv1d(C, C, ks, padding=ks // 2, groups=C if groups is None else groups)
        self.norm = LayerNorm(C, eps=1e-6, data_format="channels_first")

    def forward(self, x):
        return x + self.norm(self.conv(x))


class TimeContextBlock1d(nn.Module):
    def __init__(self, C, hC, pos_ker_sz=59, block_type="att", red_dim_conv=None, exp_dim_conv=None):
        super().__init__()
        assert pos_ker_sz
        self.red_dim_conv = nn.Sequential(nn.Conv1d(C, hC, 1), LayerNorm(hC, eps=1e-6, data_format="channels_first"))
        if block_type == "fc":
            self.tcm = nn.Sequential(
                nn.Conv1d(hC, hC * 2, 1),
                LayerNorm(hC * 2, eps=1e-6, data_format="channels_first"),
                nn.GELU(),
                nn.Conv1d(hC * 2, hC, 1),
            )
        elif block_type == "conv":
            self.tcm = nn.Sequential(
                *[ConvNeXtLikeBlock(hC, dim=1, kernel_sizes=[7, 15, 31], Gdiv=1, padding="same") for i in range(4)]
            )
        elif block_type == "att":
            self.tcm = nn.Sequential(
                PosEncConv(hC, ks=pos_ker_sz, groups=hC), TransformerEncoderLayer(n_state=hC, n_mlp=hC * 2, n_head=4)
            )
        elif block_type == "conv+att":
            self.tcm = nn.Sequential(
                ConvNeXtLikeBlock(hC, dim=1, kernel_sizes=[7], Gdiv=1, padding="same"),
                ConvNeXtLikeBlock(hC, dim=1, kernel_sizes=[19], Gdiv=1, padding="same"),
                ConvNeXtLikeBlock(hC, dim=1, kernel_sizes=[31], Gdiv=1, padding="same"),
                ConvNeXtLikeBlock(hC, dim=1, kernel_sizes=[59], Gdiv=1, padding="same"),
                TransformerEncoderLayer(n_state=hC, n_mlp=hC, n_head=4),
            )
        else:
            raise NotImplementedError()
        self.exp_dim_conv = nn.Conv1d(hC, C, 1)

    def forward(self, x):
        skip = x
        x = self.red_dim_conv(x)
        x = self.tcm(x)
        x = self.exp_dim_conv(x)
        return skip + x


class ReDimNet2(nn.Module):
    # UNet-like ReDimNet
    def __init__(
        self,
        F=72,
        C=24,
        spec_in_channels=1,  # Phase + Magnitude
        causal="none",
        out_channels=None,
        block_1d_type="tf-att",
        block_2d_type="basic_resnet",
        return_2d_output=False,
        fm_weigthing_type="NC",
        use_freq_pos_enc=False,
        compress_tconvs=True,
        stages_setup=None,
        group_divisor=1,
        dual_agg=False,
        agg_gnorm=False,
        # Subnet stuff
        return_all_outputs=False,
        offset_fm_weights=0,
        is_subnet=False,
    ):
        super().__init__()
        if stages_setup is None:
            stages_setup = [
                # Encoder part:
                ((1, 1), 2, 4, [(3, 3)], None),  # 16
                ((2, 1), 3, 3, [(3, 3)], None),  # 32
                ((1, 2), 4, 2, [(3, 3)], None),  # 64,
                ((2, 1), 5, 1, [(3, 3)], 48),  # 128
                ((1, 2), 4, 1, [(3, 3)], 64),  # 128
                ((2, 1), 3, 1, [(3, 3)], 96),  # 128
            ]
        self.F = F
        self.C = C

        if causal == "full":
            block_1d_type = block_1d_type + "-causal"
            block_2d_type = block_2d_type + "-causal"
            self.causal = True
        elif causal == "only_1d":
            block_1d_type = block_1d_type + "-causal"
            self.causal = True
        elif causal == "none":
            self.causal = False
        else:
            raise NotImplementedError()

        self.block_1d_type = block_1d_type
        self.block_2d_type = block_2d_type

        self.stages_setup = stages_setup
        self.fm_weigthing_type = fm_weigthing_type
        self.dual_agg = dual_agg
        self.agg_gnorm = agg_gnorm

        # Subnet stuff
        self.is_subnet = is_subnet
        self.offset_fm_weights = offset_fm_weights
        self.return_all_outputs = return_all_outputs

        self.build(
            F,
            C,
            spec_in_channels,
            out_channels,
            stages_setup,
            group_divisor,
            compress_tconvs,
            return_2d_output,
            use_freq_pos_enc,
        )

    def build(
        self,
        F,
        C,
        spec_in_channels,
        out_channels,
        stages_setup,
        group_divisor,
        compress_tconvs,
        return_2d_output,
        use_freq_pos_enc,
    ):
        self.F = F
        self.C = C

        c = C
        f = F

        stt = 1
        sft = 1

        max_stt = stt

        self.num_stages = len(stages_setup)

        append_to1d_before_tcm = True
        Block1d = functools.partial(TimeContextBlock1d, block_type=self.block_1d_type)
        Block2d = functools.partial(ConvBlock2d, block_type=self.block_2d_type)

        if self.fm_weigthing_type == "NC":
            agg1d = functools.partial(weigth1d, C=F * C)
        elif self.fm_weigthing_type == "N":
            agg1d = functools.partial(weigth1d, C=None)
        else:
            raise NotImplementedError()

        if not self.is_subnet:
            self.stem = nn.Sequential(
                nn.Conv2d(spec_in_channels, int(c), kernel_size=3, stride=1, padding="same"),
                LayerNorm(int(c), eps=1e-6, data_format="channels_first"),
                to1d(),
            )
        else:
            # Subnet stem: aggregate offset_fm_weights incoming 1D feature maps,
            # reshape to 2D, then apply a standard conv+norm stem before to1d().
            assert self.offset_fm_weights > 0, "offset_fm_weights must be > 0 when is_subnet=True"
            self.stem = nn.Sequential(
                agg1d(N=self.offset_fm_weights, requires_grad=self.offset_fm_weights > 1),
                to2d(f=F, c=C),
                nn.Conv2d(int(c), int(c), kernel_size=3, stride=1, padding="same"),
                LayerNorm(int(c), eps=1e-6, data_format="channels_first"),
                to1d(),
            )

        if self.agg_gnorm:
            self.stem_gnorm = nn.GroupNorm(num_groups=C, num_channels=C * F)

        # Track accumulated feature-map count for the weight1d N parameter.
        # Starts at offset_fm_weights+1 to account for the
        # subnet offset + stem output.
        feat_count = self.offset_fm_weights + 1
        self._stage_has_dual = []

        for stage_ind, (stride, num_blocks, conv_exp, kernel_sizes, att_block_red) in enumerate(stages_setup):
            (sf, st) = stride
            tot_stride = np.prod((sf, st))
            num_feats_to_weight = feat_count
            # if tot_stride > 1:
            layers = []
            sft = sft * sf
            stt = stt * st
            layers.append(agg1d(N=num_feats_to_weight, requires_grad=num_feats_to_weight > 1))
            layers.append(to2d(f=f, c=c))
            if use_freq_pos_enc:
                layers.append(FreqEncoder(c=c, bins=f))

            layers.append(
                ShapeLogger(
                    nn.Conv2d(
                        int(c),
                        int(sf * c * conv_exp),
                        kernel_size=(sf, stt),
                        stride=(sf, stt),
                        padding=0,
                        groups=1 if not compress_tconvs else math.gcd(int(c), int(sf * c * conv_exp)),
                    )
                )
            )

            c = sf * c
            assert f % sf == 0
            f = f // sf

            if stt >= max_stt:
                max_stt = stt

            for block_ind in range(num_blocks):
                layers.append(Block2d(c=int(c * conv_exp), f=f, kernel_sizes=kernel_sizes, Gdiv=group_divisor))

            if conv_exp != 1:
                _group_divisor = group_divisor
                layers.append(
                    nn.Sequential(
                        nn.Conv2d(int(c * conv_exp), c, kernel_size=1, stride=1, padding="same"),
                        nn.BatchNorm2d(c, eps=1e-6),
                    )
                )

            has_dual = self.dual_agg and att_block_red is not None

            if has_dual:
                # Split the stage so the 1D-attention branch runs in
                # parallel with a plain 2D->1D reshape branch; both are
                # upsampled (+gnorm) and aggregated alongside prior
                # feature maps.
                if append_to1d_before_tcm:
                    layers.append(to1d())
                setattr(self, f"stage{stage_ind}_pre", nn.Sequential(*layers))

                blk_1d = Block1d(C * F, hC=(C * F) // att_block_red)
                setattr(self, f"stage{stage_ind}_1d", blk_1d)

                up_2d = [ShapeLogger(nn.Upsample(scale_factor=stt, mode="nearest"))]
                if self.agg_gnorm:
                    up_2d.append(nn.GroupNorm(num_groups=C, num_channels=C * F))
                setattr(self, f"stage{stage_ind}_up_2d", nn.Sequential(*up_2d))

                up_1d = [ShapeLogger(nn.Upsample(scale_factor=stt, mode="nearest"))]
                if self.agg_gnorm:
                    up_1d.append(nn.GroupNorm(num_groups=C, num_channels=C * F))
                setattr(self, f"stage{stage_ind}_up_1d", nn.Sequential(*up_1d))

                self._stage_has_dual.append(True)
                feat_count += 2
            else:
                if append_to1d_before_tcm:
                    layers.append(to1d())
                if att_block_red is not None:
                    if append_to1d_before_tcm:
                        layers.append(Block1d(C * F, hC=(C * F) // att_block_red))
                    else:
                        layers.append(Block1d(C=c, F=f, hC=att_block_red))
                if not append_to1d_before_tcm:
                    layers.append(to1d())
                layers.append(ShapeLogger(nn.Upsample(scale_factor=stt, mode="nearest")))
                if self.agg_gnorm:
                    layers.append(nn.GroupNorm(num_groups=C, num_channels=C * F))
                setattr(self, f"stage{stage_ind}", nn.Sequential(*layers))

                self._stage_has_dual.append(False)
                feat_count += 1

        self.fin_wght1d = agg1d(N=feat_count, requires_grad=feat_count > 1)

        self.time_stride = max_stt
        self.freq_stride = sft
        self.head = nn.Identity()
        if return_2d_output:
            self.fin_to2d = to2d(f=f, c=c)
            if out_channels is not None:
                self.head = nn.Conv2d(c, out_channels, 1)
        else:
            self.fin_to2d = nn.Identity()
            if out_channels is not None:
                self.head = nn.Conv1d(C * F, out_channels, 1)

    def run_stage(self, prev_outs_1d, stage_ind):
        if self._stage_has_dual[stage_ind]:
            pre = getattr(self, f"stage{stage_ind}_pre")
            blk_1d = getattr(self, f"stage{stage_ind}_1d")
            up_2d = getattr(self, f"stage{stage_ind}_up_2d")
            up_1d = getattr(self, f"stage{stage_ind}_up_1d")
            x_pre = pre(prev_outs_1d)
            x_2d = up_2d(x_pre)
            x_1d = up_1d(blk_1d(x_pre))
            return [x_2d, x_1d]
        stage = getattr(self, f"stage{stage_ind}")
        return [stage(prev_outs_1d)]

    def forward(self, inp):
        if not self.is_subnet:
            bs, _, _, T = inp.size()
            inp = inp[:, :, :, : (T // self.time_stride) * self.time_stride]
            # Needed for right reshape operations
            x = self.stem(inp)
            if self.agg_gnorm:
                x = self.stem_gnorm(x)
            outputs_1d = [x]
        else:
            assert isinstance(inp, list), "Subnet-mode ReDimNet2 expects a list of 1D feature maps as input"
            outputs_1d = list(inp)
            x = self.stem(inp)
            if self.agg_gnorm:
                x = self.stem_gnorm(x)
            outputs_1d.append(x)

        for stage_ind in range(self.num_stages):
            outputs_1d.extend(self.run_stage(outputs_1d, stage_ind))
        x = self.fin_wght1d(outputs_1d)
        outputs_1d.append(x)
        x = self.fin_to2d(x)
        x = self.head(x)

        if self.return_all_outputs:
            return x, outputs_1d
        return x


class ASTP(nn.Module):
    """Attentive statistics pooling: Channel- and context-dependent
    statistics pooling, first used in ECAPA_TDNN.
    """

    def __init__(self, in_dim, bottleneck_dim=128, global_context_att=False, **kwargs):
        super(ASTP, self).__init__()
        self.in_dim = in_dim
        self.global_context_att = global_context_att

        # Use Conv1d with stride == 1 rather than Linear, then we don't
        # need to transpose inputs.
        if global_context_att:
            self.linear1 = nn.Conv1d(in_dim * 3, bottleneck_dim, kernel_size=1)  # equals W and b in the paper
        else:
            self.linear1 = nn.Conv1d(in_dim, bottleneck_dim, kernel_size=1)  # equals W and b in the paper
        self.linear2 = nn.Conv1d(bottleneck_dim, in_dim, kernel_size=1)  # equals V and k in the paper

    def forward(self, x):
        """
        x: a 3-dimensional tensor in tdnn-based architecture (B,F,T)
            or a 4-dimensional tensor in resnet architecture (B,C,F,T)
            0-dim: batch-dimension, last-dim: time-dimension (frame-dimension)
        """
        if len(x.shape) == 4:
            x = x.reshape(x.shape[0], x.shape[1] * x.shape[2], x.shape[3])
        assert len(x.shape) == 3

        if self.global_context_att:
            context_mean = torch.mean(x, dim=-1, keepdim=True).expand_as(x)
            context_std = torch.sqrt(torch.var(x, dim=-1, keepdim=True) + 1e-7).expand_as(x)
            x_in = torch.cat((x, context_mean, context_std), dim=1)
        else:
            x_in = x

        # DON'T use ReLU here! ReLU may be hard to converge.
        alpha = torch.tanh(self.linear1(x_in))  # alpha = F.relu(self.linear1(x_in))
        alpha = torch.softmax(self.linear2(alpha), dim=2)
        mean = torch.sum(alpha * x, dim=2)
        var = torch.sum(alpha * (x**2), dim=2) - mean**2
        std = torch.sqrt(var.clamp(min=1e-7))
        return torch.cat([mean, std], dim=1)

    def get_out_dim(self):
        self.out_dim = 2 * self.in_dim
        return self.out_dim


def hz2mel(hz):
    return 2595 * np.log10(1 + hz / 700.0)


def mel2hz(mel):
    return 700 * (10 ** (mel / 2595.0) - 1)


def get_filterbanks(low_freq=20, high_freq=7600, nfilt=80, nfft=512, samplerate=16000):
    lowmel = hz2mel(low_freq)
    highmel = hz2mel(high_freq)
    melpoints = np.linspace(lowmel, highmel, nfilt + 2)
    lower_edge_mel = melpoints[:-2].reshape(1, -1)
    center_mel = melpoints[1:-1].reshape(1, -1)
    upper_edge_mel = melpoints[2:].reshape(1, -1)
    spectrogram_bins_mel = hz2mel(np.linspace(0, samplerate // 2, nfft))[1:].reshape(-1, 1)
    lower_slopes = (spectrogram_bins_mel - lower_edge_mel) / (center_mel - lower_edge_mel)
    upper_slopes = (upper_edge_mel - spectrogram_bins_mel) / (upper_edge_mel - center_mel)
    mel_weights_matrix = np.maximum(0.0, np.minimum(lower_slopes, upper_slopes))
    return np.vstack([np.zeros((1, nfilt)), mel_weights_matrix])[:, :].astype("float32")


class NormalizeAudio(nn.Module):
    def __init__(self, eps: float = 1e-6):
        super().__init__()
        self.eps = eps

    def forward(self, x):
        if x.ndim == 2:
            x = x.unsqueeze(1)
        return (x - x.mean(dim=2, keepdims=True)) / (x.std(dim=2, keepdims=True, unbiased=False) + self.eps)


class PreEmphasis(nn.Module):
    def __init__(self, coef: float = 0.97):
        super().__init__()
        self.coef = coef
        self.register_buffer("flipped_filter", torch.FloatTensor([-self.coef, 1.0]).unsqueeze(0).unsqueeze(0))

    def forward(self, x):
        if x.ndim == 2:
            x = x.unsqueeze(1)
        x = F.pad(x, (1, 0), "reflect")
        return F.conv1d(x, self.flipped_filter).squeeze(1)


class SpectralFeaturesTF(nn.Module):
    def __init__(
        self,
        frame_length=400,
        frame_step=160,
        fft_length=512,
        sample_rate=16000,
        window="hann",
        normalize_spectrogram=False,
        normalize_signal=False,
        eps=1e-8,
        mode="melbanks",
        low_freq=20,
        high_freq=7600,
        num_bins=80,
        log_mels=True,
        fft_mode="abs",
        sqrt_real_imag=False,
        return_img=False,
        **kwargs,
    ):
        super().__init__()
        self.length = frame_length
        self.shift = frame_step
        self.sqrt_real_imag = sqrt_real_imag
        self.normalize_spectrogram = normalize_spectrogram
        self.normalize_signal = normalize_signal
        self.window = window
        self.eps = eps
        self.nfft = fft_length if fft_length else frame_length
        self.samplerate = sample_rate
        self.features = mode
        self.low_freq = low_freq
        self.high_freq = high_freq
        self.num_bins = num_bins
        self.return_img = return_img
        if mode in ["melbanks", "mfcc"]:
            fft_mode = "abs"
        self.fft_mode = fft_mode
        self.log_mels = log_mels
        self.build()

    def build(self):
        if self.window:
            if self.window == "hamming":  # scipy.signal.windows.hamming (symmetric)
                self.window = 0.54 - 0.46 * np.cos(2 * np.pi * np.arange(self.length) / (self.length - 1))
            elif self.window in ["hann", "hanning"]:
                self.window = np.array(
                    [0.5 - 0.5 * (np.cos((2 * np.pi * l) / (self.length - 1))) for l in range(self.length)]
                )
            elif self.window == "sqrt_hann":
                self.window = (
                    np.array([0.5 - 0.5 * (np.cos((2 * np.pi * l) / (self.length - 1))) for l in range(self.length)])
                    ** 0.5
                )
            elif self.window == "kaiser":
                self.window = windows.kaiser(self.length)
            else:
                self.window = np.ones(self.length)
        self.window = self.window.astype("float32")
        real_kernel = (
            np.asarray([np.cos(2 * np.pi * np.arange(0, self.nfft) * n / self.nfft) for n in range(self.nfft)])
            .astype("float32")
            .T
        )
        self.real_kernel = real_kernel[: self.length, : self.nfft // 2]
        if self.window is not None:
            self.real_kernel *= self.window[:, None]
        self.real_kernel = self.real_kernel[:, None, :]
        image_kernel = (
            np.asarray([np.sin(2 * np.pi * np.arange(0, self.nfft) * n / self.nfft) for n in range(self.nfft)])
            .astype("float32")
            .T
        )
        self.image_kernel = image_kernel[: self.length, : self.nfft // 2]
        if self.window is not None:
            self.image_kernel *= self.window[:, None]
        self.image_kernel = self.image_kernel[:, None, :]
        self.register_buffer("real_kernel_pt", torch.from_numpy(self.real_kernel).permute(2, 1, 0).float())
        self.register_buffer("image_kernel_pt", torch.from_numpy(self.image_kernel).permute(2, 1, 0).float())
        if self.features in ["melbanks"]:
            linear_to_mel_weight_matrix = get_filterbanks(
                nfilt=self.num_bins,
                nfft=self.nfft // 2,
                samplerate=self.samplerate,
                low_freq=self.low_freq,
                high_freq=self.high_freq,
            )
            linear_to_mel_weight_matrix = linear_to_mel_weight_matrix[:, :, None]
            self.register_buffer("melbanks_pt", torch.from_numpy(linear_to_mel_weight_matrix).permute(1, 0, 2).float())

    def forward(self, inputs):
        dtype = inputs.dtype
        inputs = inputs.float()
        if inputs.ndim == 2:
            inputs = inputs.unsqueeze(1)
        if self.normalize_signal:
            inputs = (inputs - inputs.mean(dim=2, keepdims=True)) / (
                inputs.std(dim=2, keepdims=True, unbiased=False) + self.eps
            )
        real_part = F.conv1d(inputs, self.real_kernel_pt, stride=self.shift, padding=self.shift // 2)
        imag_part = F.conv1d(inputs, self.image_kernel_pt, stride=self.shift, padding=self.shift // 2)
        if self.features == "complex":
            return [real_part, imag_part]
        fft = torch.square(real_part) + torch.square(imag_part)
        if self.sqrt_real_imag:
            fft = torch.sqrt(fft)
        feat = fft.clip(self.eps, 1 / self.eps)
        if self.fft_mode == "log":
            feat = torch.log(feat)
        if self.features in ["melbanks"]:
            mel_spectrograms = F.conv1d(feat, self.melbanks_pt, stride=1, padding=0)
            mel_spectrograms = mel_spectrograms.clip(self.eps, 1 / self.eps)
            if self.log_mels:
                feat = torch.log(mel_spectrograms)
            else:
                feat = mel_spectrograms
        if self.normalize_spectrogram:
            feat = (feat - feat.mean(dim=(1, 2), keepdims=True)) / (
                feat.std(dim=(1, 2), keepdims=True, unbiased=False) + self.eps
            )
        if self.return_img:
            feat = feat[:, None, :, :]
        return feat.to(dtype)


class TFMelBanks(nn.Module):
    def __init__(
        self,
        sample_rate=16000,
        n_fft=512,
        win_length=400,
        hop_length=160,
        f_min=20,
        f_max=7600,
        n_mels=80,
        do_spec_aug=False,
        norm_signal=False,
        do_preemph=True,
        freq_start_bin=0,
        freq_mask_width=(0, 8),
        time_mask_width=(0, 10),
        eps=1e-8,
    ):
        super(TFMelBanks, self).__init__()
        self.torchfbank = torch.nn.Sequential(
            NormalizeAudio(eps) if norm_signal else nn.Identity(),
            PreEmphasis() if do_preemph else nn.Identity(),
            SpectralFeaturesTF(
                frame_length=win_length,
                frame_step=hop_length,
                fft_length=n_fft,
                sample_rate=sample_rate,
                window="hamming",
                normalize_spectrogram=False,
                normalize_signal=False,
                eps=eps,
                mode="melbanks",
                low_freq=f_min,
                high_freq=f_max,
                num_bins=n_mels,
                log_mels=False,
                fft_mode="abs",
                sqrt_real_imag=False,
                return_img=False,
            ),
        )
        self.eps = eps
        if do_spec_aug:
            self.specaug = FbankAug(
                freq_start_bin=freq_start_bin, freq_mask_width=freq_mask_width, time_mask_width=time_mask_width
            )
        else:
            self.specaug = nn.Identity()

    def forward(self, x):
        xdtype = x.dtype
        x = x.float()
        with torch.no_grad():
            with torch.autocast("cpu", enabled=False):
                x = self.torchfbank(x) + self.eps
                x = x.log()
                x = x - torch.mean(x, dim=-1, keepdim=True)
                if self.training:
                    x = self.specaug(x)
        return x.to(xdtype)


class ReDimNet2Wrap(nn.Module):
    """`ReDimNet2Wrap(feat_dim, embed_dim, pooling_func="ASTP", spec=None)` with B6's arguments passed in."""

    def __init__(self, F=72, C=64, embed_dim=192, out_channels=224, return_2d_output=True, stages_setup=None):
        super().__init__()
        self.backbone = ReDimNet2(
            F=F,
            C=C,
            out_channels=out_channels,
            return_2d_output=return_2d_output,
            block_1d_type="conv+att",
            block_2d_type="basic_resnet",
            stages_setup=stages_setup,
        )
        if out_channels is None:
            out_channels = C * F
        elif return_2d_output:
            out_channels = (F // self.backbone.freq_stride) * out_channels
        self.pool = ASTP(in_dim=out_channels, global_context_att=True)
        self.pool_out_dim = self.pool.get_out_dim()
        self.bn = nn.BatchNorm1d(self.pool_out_dim)
        self.linear = nn.Linear(self.pool_out_dim, embed_dim)

    def forward(self, x):
        if x.ndim == 3:
            x = x.unsqueeze(1)
        out = self.backbone(x)
        if out.ndim == 4:
            bs, C, F, T = out.size()
            out = out.reshape(bs, C * F, T)
        out = self.bn(self.pool(out))
        return self.linear(out)


B6_STAGES = [
    [[1, 1], 3, 3, [[3, 3]], 64],
    [[2, 1], 4, 2, [[3, 3]], 64],
    [[1, 2], 5, 2, [[3, 3]], 48],
    [[2, 1], 5, 1, [[3, 3]], 48],
    [[1, 2], 4, 0.75, [[3, 3]], 32],
    [[2, 1], 3, 0.5, [[3, 3]], 24],
]


class ReDimNet2B6(ReDimNet2Wrap):
    """B6 reading `[B, T, F]`, as every model in `bench/models.py` is fed."""

    def __init__(self, embed_dim=192):
        super().__init__(C=64, embed_dim=embed_dim, stages_setup=B6_STAGES)

    def forward(self, x):
        return super().forward(x.transpose(1, 2))


# `ReDimNet2B0`..`B5` of redimnet2.py: (C, out_channels, stages_setup); return_2d_output=False
VARIANTS = {
    "b0": (
        12,
        64,
        [
            [[1, 1], 2, 2, [[3, 3]], 36],
            [[2, 1], 3, 1, [[3, 3]], 36],
            [[1, 2], 4, 1, [[3, 3]], 36],
            [[2, 1], 5, 1, [[3, 3]], 36],
            [[1, 2], 4, 1, [[3, 3]], 18],
            [[2, 1], 3, 1, [[3, 3]], 18],
        ],
    ),
    "b1": (
        16,
        64,
        [
            [[1, 1], 2, 2, [[3, 3]], 32],
            [[2, 1], 3, 1, [[3, 3]], 32],
            [[1, 2], 4, 1, [[3, 3]], 32],
            [[2, 1], 5, 1, [[3, 3]], 32],
            [[1, 2], 4, 1, [[3, 3]], 16],
            [[2, 1], 3, 1, [[3, 3]], 16],
        ],
    ),
    "b2": (
        20,
        64,
        [
            [[1, 1], 2, 2, [[3, 5]], 40],
            [[2, 1], 3, 1, [[3, 5]], 30],
            [[1, 2], 4, 1, [[3, 5]], 30],
            [[3, 1], 5, 1, [[3, 5]], 20],
            [[1, 2], 4, 1, [[3, 7]], 20],
            [[2, 1], 3, 1, [[3, 7]], 10],
        ],
    ),
    "b3": (
        24,
        64,
        [
            [[1, 1], 2, 2, [[3, 3]], 36],
            [[2, 1], 3, 1, [[3, 3]], 36],
            [[1, 2], 4, 1, [[3, 3]], 36],
            [[2, 1], 5, 1, [[3, 3]], 36],
            [[1, 2], 4, 1, [[3, 3]], 18],
            [[2, 1], 3, 1, [[3, 3]], 18],
        ],
    ),
    "b4": (
        32,
        None,
        [
            [[1, 1], 2, 4, [[3, 3]], 24],
            [[2, 1], 3, 3, [[3, 3]], 24],
            [[1, 2], 4, 2, [[3, 3]], 24],
            [[2, 1], 5, 1, [[3, 3]], 24],
            [[1, 2], 4, 1, [[3, 3]], 24],
            [[2, 1], 3, 1, [[3, 3]], 24],
        ],
    ),
    "b5": (
        48,
        256,
        [
            [[1, 1], 2, 4, [[3, 3]], 48],
            [[2, 1], 3, 3, [[3, 3]], 48],
            [[1, 2], 4, 2, [[3, 3]], 48],
            [[2, 1], 5, 1, [[3, 3]], 48],
            [[1, 2], 4, 1, [[3, 3]], 32],
            [[2, 1], 3, 1, [[3, 3]], 32],
        ],
    ),
}


def variant(name, embed_dim=192):
    """WeSpeaker's `ReDimNet2B{0..5}` (feat_dim 72, ASTP), as `ReDimNet2Wrap` builds them."""
    c, out, stages = VARIANTS[name]  # B4 (out None): no head, the 1D maps pooled directly
    return ReDimNet2Wrap(C=c, embed_dim=embed_dim, out_channels=out, return_2d_output=False, stages_setup=stages)
