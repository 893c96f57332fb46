"""FunASR's training losses for the Paraformer family, written from FunASR 1.4.x so that a step here computes what
a FunASR training step computes (`tests/asr/test_funasr_training.py` checks each against FunASR's own):
- `label_smoothing_loss`: FunASR's `LabelSmoothingLoss` (KL divergence to the smoothed one-hot, padding -1 ignored;
  divided by the number of tokens with `length_normalized_loss`, else by the batch size);
- `mae_loss`: the predictor's token-count loss (L1 between the target lengths and the summed CIF weights);
- `add_eos`: FunASR's `add_sos_eos` output side (`predictor_bias: 1`: every target gets `</s>`);
- `glancing_inputs`: Paraformer's `sampler` (the decoder run once without gradient on the CIF embeddings; for each
  utterance `sampling_ratio` x its wrong tokens, at random positions, are replaced by the targets' embeddings).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

IGNORE_ID = -1


def label_smoothing_loss(logits: Tensor, target: Tensor, smoothing: float, normalize_length: bool) -> Tensor:
    """FunASR's `LabelSmoothingLoss` of `[B, K, V]` logits against `[B, K]` ids (-1: ignored)."""
    b, _, v = logits.shape
    x = logits.reshape(-1, v)
    t = target.reshape(-1)
    ignore = t == IGNORE_ID
    with torch.no_grad():
        true_dist = torch.full_like(x, smoothing / (v - 1))
        true_dist.scatter_(1, t.masked_fill(ignore, 0).unsqueeze(1), 1.0 - smoothing)
    logp = torch.log_softmax(x, dim=1)
    kl = true_dist * (torch.log(true_dist.clamp_min(1e-30)) - logp)
    kl = torch.where(true_dist > 0, kl, torch.zeros_like(kl))
    denom = int((~ignore).sum()) if normalize_length else b
    return kl.masked_fill(ignore.unsqueeze(1), 0).sum() / denom


def mae_loss(token_length: Tensor, pre_token_length: Tensor, normalize_length: bool) -> Tensor:
    """FunASR's `mae_loss`: summed |target length - CIF weight sum|, over the tokens or the batch size."""
    denom = token_length.sum().float() if normalize_length else token_length.shape[0]
    return (token_length.to(pre_token_length.dtype) - pre_token_length).abs().sum() / denom


def add_eos(targets: Tensor, lengths: Tensor, eos: int) -> Tensor:
    """`[B, L]` ids padded with -1 -> `[B, L + 1]` with `eos` after each target, padded with -1."""
    out = torch.full((targets.shape[0], targets.shape[1] + 1), IGNORE_ID, dtype=targets.dtype, device=targets.device)
    out[:, : targets.shape[1]] = targets
    out[torch.arange(targets.shape[0], device=targets.device), lengths.long()] = eos
    return out


def accuracy(logits: Tensor, target: Tensor) -> Tensor:
    """`[correct, counted]` argmax tokens over the targets that are not -1 (FunASR's `th_accuracy` as a pair)."""
    valid = target != IGNORE_ID
    k = min(logits.shape[1], target.shape[1])
    correct = ((logits[:, :k].argmax(-1) == target[:, :k]) & valid[:, :k]).sum()
    return torch.stack([correct, valid.sum()])


def glancing_inputs(
    decode: Callable[[Tensor], Tensor],
    embed: Callable[[Tensor], Tensor],
    ys: Tensor,
    ys_lengths: Tensor,
    acoustic: Tensor,
    sampling_ratio: float,
    count_padding: bool = False,
) -> tuple[Tensor, Tensor]:
    """(decoder inputs `[B, K, D]`, first-pass logits) as Paraformer's `sampler`: `decode(embeds)` is the decoder
    on the encoder output, `embed(ids)` the decoder's token embedding; randomness from torch's global generator
    (`torch.randperm` per utterance, as FunASR draws it). `count_padding`: ContextualParaformer's `sampler`, which
    zeroes the padding before it counts, so every utterance counts (and draws positions over) the batch's longest
    length, padding predicted as id 0 counting as right."""
    tgt_mask = (torch.arange(int(ys_lengths.max()), device=ys.device)[None, :] < ys_lengths[:, None])[:, :, None]
    ys_embed = embed(ys * tgt_mask[:, :, 0])
    if count_padding:
        ys = ys * tgt_mask[:, :, 0]
    with torch.no_grad():
        first = decode(acoustic)
        nonpad = ys.ne(IGNORE_ID)
        seq_lens = nonpad.sum(1)
        same = ((first.argmax(-1) == ys) & nonpad).sum(1)
        keep = torch.ones_like(nonpad)
        for i in range(ys.shape[0]):
            n = int(((seq_lens[i] - same[i]).float() * sampling_ratio).long())
            if n > 0:
                keep[i].scatter_(0, torch.randperm(int(seq_lens[i]))[:n].to(keep.device), 0)
        keep = keep.eq(1).masked_fill(~nonpad, False).unsqueeze(2)
    mixed = acoustic.masked_fill(~keep, 0) + ys_embed.masked_fill(keep, 0)
    return mixed * tgt_mask, first * tgt_mask
