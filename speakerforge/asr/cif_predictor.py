"""FunASR's CIF predictor (`CifPredictorV2` / `CifPredictorV3`) with FunASR's parameter names: CIF weights from a
conv + linear over the encoder frames, the integrated token embeddings, and V3's upsampled timestamp branch."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from speakerforge.asr.cif import fire_weights, funasr_cif, funasr_cif_v1
from speakerforge.asr.sanm import sequence_mask
from speakerforge.errors import ConfigError


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
