"""Classification heads for supervised speaker training: a cosine classifier and the margin softmax losses.

The split follows 3D-Speaker: `CosineClassifier` owns the only parameter (`weight`, one row per class centre, so a
training model that registers it as `classifier` exposes `classifier.weight` to freeze lists and checkpoints) and
returns cosines; `AAMSoftmax` / `AMSoftmax` hold no parameters and turn cosines plus labels into scaled logits and a
cross-entropy loss. Their margin is changed with `set_margin(m)`, driven by `margin_at_step`, a pure function of the
global step, so a resumed run gets the same margin as an uninterrupted one without saving any scheduler state.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from speakerforge.errors import ConfigError

__all__ = [
    "CosineClassifier",
    "AAMSoftmax",
    "AMSoftmax",
    "build_margin_loss",
    "margin_at_step",
]


class CosineClassifier(nn.Module):
    """Cosine similarity between embeddings and class centres; with `sub_centers=K`, the max over K centres per class.

    `weight` has shape `[num_classes * K, embedding_dim]`, rows ordered class-major (row `c * K + k`), which is the
    layout of WeSpeaker's sub-centre projection and, for `K = 1`, of 3D-Speaker's `CosineClassifier` and WeSpeaker's
    `projection.weight`, so their classifier weights load as they are.
    """

    def __init__(self, embedding_dim: int, num_classes: int, sub_centers: int = 1):
        super().__init__()
        if sub_centers < 1:
            raise ConfigError(f"sub_centers must be >= 1, got {sub_centers}")
        self.embedding_dim = embedding_dim
        self.num_classes = num_classes
        self.sub_centers = sub_centers
        self.weight = nn.Parameter(torch.empty(num_classes * sub_centers, embedding_dim))
        nn.init.xavier_uniform_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, D]` embeddings -> `[B, num_classes]` cosines."""
        cosine = F.linear(F.normalize(x), F.normalize(self.weight))
        if self.sub_centers > 1:
            cosine = cosine.view(-1, self.num_classes, self.sub_centers).amax(dim=2)
        return cosine

    def extra_repr(self) -> str:
        return f"embedding_dim={self.embedding_dim}, num_classes={self.num_classes}, sub_centers={self.sub_centers}"


class _MarginSoftmax(nn.Module):
    """Common part of the margin losses: replace the target cosine by a penalised one, scale, cross-entropy."""

    def __init__(self, margin: float, scale: float):
        super().__init__()
        self.scale = float(scale)
        self.set_margin(margin)

    def set_margin(self, margin: float) -> None:
        """Change the margin (called by the training loop with `margin_at_step(...)`)."""
        self.margin = float(margin)

    def _target_logit(self, cosine: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def logits(self, cosine: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scaled logits `[B, C]` with the margin applied to each row's target class only."""
        target = F.one_hot(labels.long(), cosine.shape[1]).to(torch.bool)
        return self.scale * torch.where(target, self._target_logit(cosine), cosine)

    def forward(self, cosine: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the margin logits."""
        return F.cross_entropy(self.logits(cosine, labels), labels.long())

    def extra_repr(self) -> str:
        return f"margin={self.margin}, scale={self.scale}"


class AAMSoftmax(_MarginSoftmax):
    """Additive angular margin (ArcFace): the target logit is `s * cos(theta + m)`.

    Past `theta = pi - m`, `cos(theta + m)` would rise again; there the target logit continues as
    `cos(theta) - (1 - cos(m))`, which meets `cos(theta + m)` at the threshold (the `th`/`mmm` form of 3D-Speaker's
    and WeSpeaker's `ArcMarginLoss`, rather than InsightFace's first-order `m * sin(m)` offset). With `easy_margin`,
    the margin is applied only where `cos(theta) > 0`.
    """

    def __init__(self, margin: float = 0.2, scale: float = 32.0, easy_margin: bool = False):
        super().__init__(margin, scale)
        self.easy_margin = easy_margin

    def set_margin(self, margin: float) -> None:
        """Change the margin and the constants that depend on it."""
        super().set_margin(margin)
        self.cos_m = math.cos(self.margin)
        self.sin_m = math.sin(self.margin)
        self.threshold = math.cos(math.pi - self.margin)
        self.below_threshold_offset = 1.0 - math.cos(self.margin)

    def _target_logit(self, cosine: torch.Tensor) -> torch.Tensor:
        # The clamp keeps the square root real (and its gradient finite) when rounding puts |cos| at or above 1.
        sine = torch.sqrt((1.0 - cosine * cosine).clamp(min=1e-12))
        phi = cosine * self.cos_m - sine * self.sin_m
        if self.easy_margin:
            return torch.where(cosine > 0, phi, cosine)
        return torch.where(cosine > self.threshold, phi, cosine - self.below_threshold_offset)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, easy_margin={self.easy_margin}"


class AMSoftmax(_MarginSoftmax):
    """Additive cosine margin (CosFace / AM-softmax): the target logit is `s * (cos(theta) - m)`."""

    def __init__(self, margin: float = 0.2, scale: float = 32.0):
        super().__init__(margin, scale)

    def _target_logit(self, cosine: torch.Tensor) -> torch.Tensor:
        return cosine - self.margin


_LOSSES = {"aam": AAMSoftmax, "am": AMSoftmax}


def build_margin_loss(kind: str, **kwargs: float | bool) -> _MarginSoftmax:
    """Margin loss by name: `aam` (ArcFace, `AAMSoftmax`) or `am` (CosFace, `AMSoftmax`)."""
    if kind not in _LOSSES:
        raise ConfigError(f"unknown margin loss {kind!r}; known: {', '.join(_LOSSES)}")
    try:
        return _LOSSES[kind](**kwargs)
    except TypeError as exc:
        raise ConfigError(f"margin loss {kind!r}: {exc}") from None


# The exponential schedule covers this fraction of the way as a geometric approach: ratio = 1 - 1e-3 ** progress,
# as in 3D-Speaker's MarginScheduler ("exp"); it jumps the last 0.1 % to the final value at `end_step`.
_EXP_FLOOR = 1e-3


def margin_at_step(
    step: int,
    *,
    start_step: int,
    end_step: int,
    initial: float,
    final: float,
    kind: str = "linear",
) -> float:
    """Margin at a global step: `initial` before `start_step`, `final` from `end_step`, rising in between.

    `kind="linear"` interpolates linearly; `kind="exponential"` rises fast first (3D-Speaker's `exp` schedule).
    """
    if end_step < start_step:
        raise ConfigError(f"margin schedule: end_step ({end_step}) is before start_step ({start_step})")
    if kind not in ("linear", "exponential"):
        raise ConfigError(f"margin schedule kind must be 'linear' or 'exponential', got {kind!r}")
    if step < start_step:
        return float(initial)
    if step >= end_step:
        return float(final)
    progress = (step - start_step) / (end_step - start_step)
    ratio = progress if kind == "linear" else 1.0 - _EXP_FLOOR**progress
    return float(initial + (final - initial) * ratio)
