"""Training objectives as modules: everything an objective learns is a registered parameter of it.

The trainer optimises and checkpoints exactly `TrainModule.parameters()` / `state_dict()`, so a tensor that must train
(a classifier, SSL prototypes) cannot be forgotten by the optimizer or the checkpoint (3D-Speaker #191).
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn as nn

from speakerforge.models.heads import CosineClassifier, build_margin_loss


class SupervisedModule(nn.Module):
    """`backbone` (embedding network) + `classifier` (cosine centres) + margin softmax loss."""

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        kind: str = "aam",
        scale: float = 32.0,
        margin: float = 0.0,
        sub_centers: int = 1,
        easy_margin: bool = False,
    ):
        super().__init__()
        self.backbone = backbone
        dim = int(cast(Any, backbone).embedding_dim)  # nn.Module types attributes loosely
        self.classifier = CosineClassifier(dim, num_classes, sub_centers=sub_centers)
        kwargs = {"margin": margin, "scale": scale}
        if kind == "aam":
            kwargs["easy_margin"] = easy_margin
        self.loss = build_margin_loss(kind, **kwargs)

    def set_margin(self, margin: float) -> None:
        self.loss.set_margin(margin)

    def forward(self, feats: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (loss, number of correct predictions) for a batch of features `[B, T, F]`."""
        emb = self.backbone(feats)
        cosine = self.classifier(emb.float())
        loss = self.loss(cosine, labels)
        correct = (cosine.argmax(dim=1) == labels).sum()
        return loss, correct
