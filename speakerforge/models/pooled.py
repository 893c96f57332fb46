"""What the 2D-convolution speaker networks (ResNet, SimAM-ResNet, ERes2Net, Gemini DF-ResNet) share after their
trunk: statistics pooling over time, then `seg_1` and, with `two_emb_layer`, ReLU, a non-affine BatchNorm and `seg_2`
(the embedding is then `seg_2`'s output). Both toolkits name these `pool`, `seg_1`, `seg_bn_1`, `seg_2` on the model
itself, so this is a mixin and the checkpoint keys stay where the toolkits put them.

It also holds their inference policy: channels-last layout, and a large batch run in slices that keep the feature
maps in cache (`fuse.run_in_slices`), once `optimize_for_inference` has set `slice_frames`.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from speakerforge.models.fuse import fold_bn_into_linear, run_in_slices
from speakerforge.models.pooling import build_pooling

__all__ = ["PooledEmbedding2d"]


class PooledEmbedding2d(nn.Module):
    """Base of a 2D speaker network: subclasses build their trunk, call `build_embedding_layers`, and define
    `frame_features(x)`: `[B, T, F]` fbank -> `[B, C, F', T']`."""

    # oneDNN runs these small-channel 2D convs several times faster in channels-last layout, and a large batch
    # faster in slices that keep the feature maps in cache (see fuse.py)
    channels_last_inference = True
    inference_slice_frames = 1200
    slice_frames = 0  # set by optimize_for_inference
    two_emb_layer = False

    def build_embedding_layers(self, pooling: str, stats_in: int, embedding_dim: int, two_emb_layer: bool) -> None:
        """`pool` over `stats_in` (channels x frequency) features, then `seg_1` (and `seg_bn_1`, `seg_2`)."""
        self.two_emb_layer = two_emb_layer
        self.pool = build_pooling(pooling, stats_in)
        n_stats: int = self.pool.n_stats  # type: ignore[assignment]
        self.seg_1 = nn.Linear(stats_in * n_stats, embedding_dim)
        if two_emb_layer:
            self.seg_bn_1: nn.Module = nn.BatchNorm1d(embedding_dim, affine=False)
            self.seg_2: nn.Module = nn.Linear(embedding_dim, embedding_dim)
        else:
            self.seg_bn_1 = nn.Identity()
            self.seg_2 = nn.Identity()

    def frame_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, T, feat_dim]` fbank -> `[B, embedding_dim]` embedding."""
        if self.slice_frames and not self.training:
            return run_in_slices(self.embed, x, self.slice_frames)
        return self.embed(x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The forward of one batch, whole."""
        emb = self.seg_1(self.pool(self.frame_features(x).contiguous()))
        if self.two_emb_layer:
            emb = self.seg_2(self.seg_bn_1(F.relu(emb)))
        return emb

    def fold_embedding_layers(self) -> None:
        """relu -> bn -> seg_2: the BN is affine on seg_2's input, so it folds into seg_2 (a BN *before* a linear)."""
        if self.two_emb_layer and isinstance(self.seg_bn_1, nn.BatchNorm1d):
            fold_bn_into_linear(self.seg_2, self.seg_bn_1, bn_before=True)
            self.seg_bn_1 = nn.Identity()
