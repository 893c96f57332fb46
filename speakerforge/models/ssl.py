"""Self-supervised heads (DINO/RDINO, SDPN), the student/teacher branch, SDPN prototypes and the EMA teacher update.

Layouts follow 3D-Speaker's `speakerlab.models.rdino.RDINO_Head` and `speakerlab.models.sdpn.SDPN_Head`:
- DINO head: MLP `in -> hidden (-> hidden)* -> add_dim` (RDINO's extra 8192-d layer, whose output is also the input of
  the VICReg-style regulariser), `add_dim -> bottleneck`, L2 normalisation, then a weight-normalised linear layer
  `bottleneck -> out_dim` without bias. `add_dim=0` is the plain DINO head (`hidden -> bottleneck` directly).
  The last layer uses `torch.nn.utils.parametrizations.weight_norm`, so its magnitude `original0` and direction
  `original1` are ordinary registered parameters (saved, optimized, visible to the freeze logic); with
  `norm_last_layer` the magnitude is fixed at 1 and `fixed_parameters()` names it so the trainer keeps it frozen.
- SDPN head: MLP `in -> hidden (-> hidden)* -> bottleneck` and L2 normalisation.
- Prototypes (SDPN): `num x dim`, initialised U(-1/sqrt(dim), 1/sqrt(dim)); the objective that uses them owns them
  as a registered `nn.Parameter` (`speakerforge.train.ssl_objectives.SDPNObjective`).

The teacher is a second `SSLBranch` of the same shape whose parameters never require grad and are updated by
`ema_update` after each optimizer step with the momentum `ema_momentum(step, total)` (a pure function of the step).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import weight_norm

__all__ = ["DINOHead", "SDPNHead", "SSLBranch", "ema_momentum", "ema_update", "init_prototypes"]


def _init_linear(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02, a=-2.0, b=2.0)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def _mlp(in_dim: int, hidden_dim: int, out_dim: int, layers: int, use_bn: bool) -> nn.Module:
    """`layers` linear layers with (BatchNorm and) GELU between them; the last one is plain."""
    if layers < 1:
        raise ValueError(f"a projection head needs at least 1 layer, got {layers}")
    if layers == 1:
        return nn.Linear(in_dim, out_dim)
    mods: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers - 1):
        mods.append(nn.Linear(dim, hidden_dim))
        if use_bn:
            mods.append(nn.BatchNorm1d(hidden_dim))
        mods.append(nn.GELU())
        dim = hidden_dim
    mods.append(nn.Linear(dim, out_dim))
    return nn.Sequential(*mods)


class DINOHead(nn.Module):
    """Projection head of DINO/RDINO: `x [B, in_dim] -> (reg_out [B, add_dim or bottleneck], logits [B, out_dim])`."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        layers: int = 3,
        add_dim: int = 8192,
        use_bn: bool = False,
        norm_last_layer: bool = True,
    ):
        super().__init__()
        self.norm_last_layer = norm_last_layer
        self.mlp = _mlp(in_dim, hidden_dim, add_dim or bottleneck_dim, layers, use_bn)
        self.add_layer = nn.Linear(add_dim, bottleneck_dim) if add_dim else None
        self.apply(_init_linear)
        last = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        with torch.no_grad():
            last.parametrizations.weight.original0.fill_(1.0)
        self.last_layer = last

    def fixed_parameters(self) -> list[str]:
        """Names (relative to this head) of parameters that must never train: the unit magnitude of the last layer."""
        return ["last_layer.parametrizations.weight.original0"] if self.norm_last_layer else []

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        reg_out = self.mlp(x)
        z = self.add_layer(reg_out) if self.add_layer is not None else reg_out
        z = F.normalize(z, dim=-1, p=2)
        return reg_out, self.last_layer(z)


class SDPNHead(nn.Module):
    """Projection head of SDPN: `x [B, in_dim] -> L2-normalised [B, bottleneck_dim]`."""

    def __init__(
        self, in_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256, layers: int = 3, use_bn: bool = False
    ):
        super().__init__()
        self.mlp = _mlp(in_dim, hidden_dim, bottleneck_dim, layers, use_bn)
        self.apply(_init_linear)

    def fixed_parameters(self) -> list[str]:
        return []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(x), dim=-1, p=2)


class SSLBranch(nn.Module):
    """A student or a teacher: `backbone` (any registry model) followed by `head`.

    The names `backbone` and `head` are part of the checkpoint layout: `finetune --init EXP --init-part teacher` reads
    `teacher.backbone.*`.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, feats: torch.Tensor):
        """`[B, T, F]` features -> (backbone embeddings `[B, E]`, head output)."""
        emb = self.backbone(feats)
        return emb, self.head(emb.float())


def init_prototypes(num: int, dim: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """`[num, dim]` drawn from U(-1/sqrt(dim), 1/sqrt(dim)), as SDPN initialises them."""
    bound = (1.0 / dim) ** 0.5
    return torch.empty(num, dim).uniform_(-bound, bound, generator=generator)


def ema_momentum(step: int, total_steps: int, base: float = 0.996, final: float = 1.0) -> float:
    """Teacher momentum at `step`: cosine from `base` (step 0) to `final` (step `total_steps`)."""
    t = min(1.0, max(0.0, step / max(1, total_steps)))
    return final + 0.5 * (base - final) * (1.0 + math.cos(math.pi * t))


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """`teacher <- momentum * teacher + (1 - momentum) * student`, parameter by parameter (buffers: the teacher's own).

    Computed as `lerp(teacher, student, 1 - momentum)`, so a parameter that is equal in both stays bit-identical.
    """
    t_params = dict(teacher.named_parameters())
    s_params = dict(student.named_parameters())
    if t_params.keys() != s_params.keys():
        missing = sorted(set(t_params) ^ set(s_params))
        raise ValueError(f"teacher and student differ in parameters: {missing[:5]}")
    w = 1.0 - momentum
    for name, t in t_params.items():
        t.lerp_(s_params[name].detach().to(t.dtype), w)
