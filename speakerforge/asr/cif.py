"""Continuous integrate-and-fire (CIF) as FunASR's predictors run it.

Frame t carries weight alpha_t; with c_t the cumulative sum, token k integrates the part of [c_{t-1}, c_t] that
falls in [k, k+1) (`fire_weights`, every (token, frame) pair at once); `funasr_cif` and `funasr_cif_v1` are FunASR's
frame loops, float32 accumulation included, which its training and decoding use.
"""

from __future__ import annotations

import torch
from torch import Tensor


def fire_weights(alphas: Tensor, num_tokens: Tensor) -> Tensor:
    """`[B, K, T]` weights of FunASR's integrate-and-fire: token k integrates the part of each frame's weight that
    falls in [k, k+1) of the running sum, and nothing past the last integer boundary (FunASR drops the remainder;
    its tail frame is what completes a last token). Rows at or past an utterance's count are zero."""
    c = alphas.cumsum(-1)
    prev = c - alphas
    k_max = int(num_tokens.max().item()) if num_tokens.numel() else 0
    k = torch.arange(k_max, device=alphas.device, dtype=alphas.dtype)[None, :, None]
    w = (torch.minimum(c[:, None, :], k + 1) - torch.maximum(prev[:, None, :], k)).clamp_min(0)
    return w * (k < num_tokens.to(alphas.dtype)[:, None, None])


def funasr_cif(hidden: Tensor, alphas: Tensor, threshold: float = 1.0) -> Tensor:
    """FunASR's training-time `cif` as it runs: a frame loop accumulating in float32, firing when the running sum
    reaches `threshold`; `[B, round(sum).max(), D]`, zero rows where a token never fired. Scaled alphas that sum
    to 9.99999 leave the last token unfired (a zero embedding) there, and FunASR trains with that."""
    b, t, d = hidden.shape
    integrate = hidden.new_zeros(b)
    frame = hidden.new_zeros(b, d)
    fires, frames = [], []
    for i in range(t):
        alpha = alphas[:, i]
        completion = 1.0 - integrate
        integrate = integrate + alpha
        fires.append(integrate)
        fire = integrate >= threshold
        integrate = torch.where(fire, integrate - 1.0, integrate)
        cur = torch.where(fire, completion, alpha)
        frame = frame + cur[:, None] * hidden[:, i]
        frames.append(frame)
        frame = torch.where(fire[:, None], (alpha - cur)[:, None] * hidden[:, i], frame)
    fired = torch.stack(fires, 1) >= threshold
    stacked = torch.stack(frames, 1)
    k_max = int(torch.round(alphas.sum(-1)).max().item()) if b else 0
    out = hidden.new_zeros(b, k_max, d)
    for j in range(b):
        rows = stacked[j, fired[j]][:k_max]
        out[j, : rows.shape[0]] = rows
    return out


def funasr_cif_v1(hidden: Tensor, alphas: Tensor) -> Tensor:
    """FunASR's `cif_v1` (CifPredictorV2) as it runs: a token fires at each frame where the running sum (float64
    cumsum cast to float32) passes an integer, at most once per frame; its embedding is the weighted sum since the
    previous fire. `[B, round(sum).max(), D]`, zero rows where a token never fired."""
    b, t, d = hidden.shape
    prefix = torch.cumsum(alphas, dim=1, dtype=torch.float64).to(torch.float32)
    floor = torch.floor(prefix)
    prev_floor = torch.floor(torch.roll(prefix, 1, dims=1))
    prev_floor[:, 0] = 0
    fire_idx = (floor - prev_floor) > 0
    k_max = int(torch.round(alphas.sum(-1)).int().max().item()) if b else 0
    out = hidden.new_zeros(b, k_max, d)
    if not bool(fire_idx.any()):
        return out
    fires = torch.where(fire_idx, 1.0, 0.0).to(prefix.dtype) + prefix - floor
    frames = torch.cumsum(alphas.unsqueeze(-1) * hidden, dim=1)[fire_idx]
    batch_len = fire_idx.sum(1)
    starts = torch.roll(torch.cumsum(batch_len, 0), 1, 0)
    starts[0] = 0
    shift = torch.roll(frames, 1, 0)
    shift[starts] = 0
    remains = (fires - torch.floor(fires))[fire_idx].unsqueeze(-1) * hidden[fire_idx]
    shift_remains = torch.roll(remains, 1, 0)
    shift_remains[starts] = 0
    frames = frames - shift + shift_remains - remains
    keep = torch.arange(k_max, device=hidden.device).expand(b, -1) < batch_len.unsqueeze(1)
    out[keep] = frames[: int(keep.sum())]
    return out
