"""Self-supervised objectives: DINO (with centring and RDINO's VICReg-style regulariser) and SDPN (prototypes,
Sinkhorn, mean-entropy maximisation, KoLeo), and `SSLModule`, the student + EMA teacher + objective that the trainer
optimises and checkpoints as one module.

Everything an objective learns or accumulates is registered: the SDPN prototypes are an `nn.Parameter` of
`SDPNObjective` (so in `module.parameters()`, the optimizer and every checkpoint: 3D-Speaker #191 kept them as a plain
tensor that was neither optimized nor saved), the DINO centre is a buffer of `DINOObjective` (saved, restored).

Crop order: every view tensor is crop-major, `[n_views * B, ...]` (all examples of crop 0, then crop 1, ...), so
`x.view(n_views, B, ...)` separates the crops. Under torchrun the batch statistics that the references reduce over
GPUs (DINO centre, VICReg batch, Sinkhorn sums, ME-MAX mean) are reduced the same way here.

Formulas (3D-Speaker `speakerlab/loss/{dino_loss,sdpn_loss,keleo_loss}.py`):
- DINO: `mean over pairs (teacher view i, student view v != i) of -sum softmax((t_i - c) / T_t) log_softmax(s_v / T_s)`;
  then `c <- m c + (1 - m) mean(t)`.
- VICReg (RDINO): on the head MLP output averaged over the global crops, for student `x` and teacher `y`:
  `std_coeff * (mean relu(1 - std x) + mean relu(1 - std y)) / 2 + cov_coeff * (sum offdiag(cov x)^2 + same y) / D`.
- SDPN: `p = softmax(norm(a) norm(P)^T / tau)` for student anchors, `q = sinkhorn(sharpen(softmax(norm(t)
  norm(P)^T / tau), T))` for teacher targets (no gradient); `loss = mean -sum q log p`; ME-MAX
  `sum p_bar log p_bar + log K` with `p_bar` the batch mean of `p`; KoLeo `-mean log ||x - nn(x)||` on the
  L2-normalised backbone embeddings of each crop, summed over crops.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from speakerforge.models.ssl import SSLBranch, init_prototypes

__all__ = [
    "DINOObjective",
    "SDPNObjective",
    "SSLModule",
    "koleo_loss",
    "sharpen",
    "sinkhorn",
    "teacher_temperature",
    "vicreg_regulariser",
    "vicreg_weight",
]


# ------------------------------------------------------------------------------------------------ distributed helpers
def _world() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def _all_reduce_(t: torch.Tensor) -> torch.Tensor:
    if _world() > 1:
        dist.all_reduce(t)
    return t


class _MeanOverRanks(torch.autograd.Function):
    """Forward: the mean over ranks; backward: the local gradient unchanged (as speakerlab's `AllReduce`)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        if _world() > 1:
            x = x.contiguous() / _world()
            dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


def _gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows of every rank concatenated, with gradients flowing back to each rank's own rows."""
    if _world() <= 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


# ------------------------------------------------------------------------------------------------ schedules
def teacher_temperature(epoch: int, warmup_temp: float, temp: float, warmup_epochs: int) -> float:
    """DINO teacher temperature: linear from `warmup_temp` to `temp` over `warmup_epochs` epochs, then `temp`."""
    if warmup_epochs <= 0 or epoch >= warmup_epochs:
        return temp
    if warmup_epochs == 1:
        return warmup_temp
    return warmup_temp + (temp - warmup_temp) * epoch / (warmup_epochs - 1)


def vicreg_weight(epoch: int, start: float, weight: float, warmup_epochs: int) -> float:
    """RDINO's regulariser weight: linear from `start` to `weight` over `warmup_epochs` epochs, then `weight`."""
    return teacher_temperature(epoch, start, weight, warmup_epochs)


# ------------------------------------------------------------------------------------------------ DINO
class DINOObjective(nn.Module):
    """Cross-entropy between centred, sharpened teacher outputs and student outputs; owns the centre (a buffer)."""

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9):
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(
        self, student_out: torch.Tensor, teacher_out: torch.Tensor, n_student: int, n_teacher: int, teacher_temp: float
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(loss, rows where the student's argmax equals the teacher's, rows compared); updates the centre.

        Student view `i < n_teacher` is the same crop as teacher view `i`; those pairs are skipped.
        """
        s = (student_out.float() / self.student_temp).chunk(n_student)
        t_logits = teacher_out.detach().float()
        q = F.softmax((t_logits - self.center) / teacher_temp, dim=-1).chunk(n_teacher)
        total = student_out.new_zeros((), dtype=torch.float32)
        agree = torch.zeros((), dtype=torch.long, device=student_out.device)
        pairs = 0
        for i, qi in enumerate(q):
            for v, sv in enumerate(s):
                if v == i:
                    continue
                total = total + torch.sum(-qi * F.log_softmax(sv, dim=-1), dim=-1).mean()
                agree = agree + (sv.argmax(-1) == qi.argmax(-1)).sum()
                pairs += 1
        if pairs == 0:
            raise ValueError("DINO needs at least two views (a student view other than the teacher's)")
        self.update_center(t_logits)
        return total / pairs, agree, pairs * q[0].shape[0]

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor) -> None:
        """EMA of the teacher outputs' batch mean (over all ranks)."""
        batch_sum = _all_reduce_(teacher_out.sum(dim=0, keepdim=True))
        batch_center = batch_sum / (teacher_out.shape[0] * _world())
        self.center.mul_(self.center_momentum).add_(batch_center * (1 - self.center_momentum))


def _off_diagonal(x: torch.Tensor) -> torch.Tensor:
    n = x.shape[0]
    return x.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def vicreg_regulariser(
    student_reg: torch.Tensor, teacher_reg: torch.Tensor, n_global: int, std_coeff: float = 10.0, cov_coeff: float = 1.0
) -> torch.Tensor:
    """RDINO's variance + covariance terms on the global crops' head-MLP outputs (see module docstring)."""
    dim = student_reg.shape[-1]
    x = _gather_rows(student_reg.float().view(n_global, -1, dim).mean(0))
    y = _gather_rows(teacher_reg.detach().float().view(n_global, -1, dim).mean(0))
    n = x.shape[0]
    x = x - x.mean(dim=0)
    y = y - y.mean(dim=0)
    std_x = torch.sqrt(x.var(dim=0) + 1e-4)
    std_y = torch.sqrt(y.var(dim=0) + 1e-4)
    std_loss = torch.mean(F.relu(1 - std_x)) / 2 + torch.mean(F.relu(1 - std_y)) / 2
    cov_x = (x.T @ x) / (n - 1)
    cov_y = (y.T @ y) / (n - 1)
    cov_loss = _off_diagonal(cov_x).pow(2).sum() / dim + _off_diagonal(cov_y).pow(2).sum() / dim
    return std_coeff * std_loss + cov_coeff * cov_loss


# ------------------------------------------------------------------------------------------------ SDPN
def sharpen(p: torch.Tensor, temperature: float) -> torch.Tensor:
    """`p ** (1 / T)`, renormalised per row."""
    sharp = p ** (1.0 / temperature)
    return sharp / sharp.sum(dim=1, keepdim=True)


@torch.no_grad()
def sinkhorn(q: torch.Tensor, iterations: int = 3) -> torch.Tensor:
    """Balance `[B, K]` soft assignments: each prototype gets 1/K of the total mass, each row sums to 1.

    Alternating row/column normalisation of `Q^T` (SwAV/MSN/SDPN); the prototype sums are reduced over ranks. After
    the last iteration the rows sum to exactly 1 and the per-prototype column sums are close to B/K.
    """
    q = q.T.float().clone()  # [K, B]
    k, b = q.shape
    b_total = b * _world()
    q /= _all_reduce_(q.sum())
    for _ in range(iterations):
        q /= _all_reduce_(q.sum(dim=1, keepdim=True))
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= b_total
    q *= b_total
    return q.T


def koleo_loss(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Kozachenko-Leonenko entropy estimate on L2-normalised rows: `-mean log(distance to nearest other row)`."""
    if x.shape[0] < 2:
        return x.new_zeros(())
    x = F.normalize(x.float(), eps=eps, p=2, dim=-1)
    with torch.no_grad():
        dots = x @ x.T
        dots.fill_diagonal_(-1.0)
        nearest = dots.argmax(dim=1)
    distances = F.pairwise_distance(x, x[nearest], p=2, eps=eps)
    return -torch.log(distances + eps).mean()


class SDPNObjective(nn.Module):
    """Prototype-assignment distillation; owns the learnable prototypes `[num_prototypes, dim]` (`prototypes`)."""

    def __init__(
        self, num_prototypes: int, dim: int, tau: float = 0.1, sharpen_temp: float = 0.25, sinkhorn_iters: int = 3
    ):
        super().__init__()
        self.tau = tau
        self.sharpen_temp = sharpen_temp
        self.sinkhorn_iters = sinkhorn_iters
        self.prototypes = nn.Parameter(init_prototypes(num_prototypes, dim))

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x.float(), dim=-1) @ F.normalize(self.prototypes, dim=-1).T / self.tau

    def forward(
        self, anchors: torch.Tensor, targets: torch.Tensor, n_anchor: int, n_target: int
    ) -> dict[str, torch.Tensor]:
        """Terms for student anchors `[n_anchor * B, D]` and teacher targets `[n_target * B, D]`.

        Every anchor crop of an example is matched with every target crop of the same example (SDPN: one target
        crop, four anchors). Returns `ploss`, `memax` (both with gradients), `agree` and `count`.
        """
        log_p = F.log_softmax(self._logits(anchors), dim=-1)
        probs = log_p.exp()
        with torch.no_grad():
            q = sharpen(F.softmax(self._logits(targets.detach()), dim=-1), self.sharpen_temp)
            if self.sinkhorn_iters > 0:
                q = sinkhorn(q, self.sinkhorn_iters)
        k = log_p.shape[-1]
        log_p_v = log_p.view(n_anchor, -1, k)
        q_mean = q.view(n_target, -1, k).mean(dim=0)  # the mean over target crops gives the mean over all pairs
        ploss = -(q_mean.unsqueeze(0) * log_p_v).sum(dim=-1).mean()
        avg = _MeanOverRanks.apply(probs.mean(dim=0))
        memax = torch.sum(torch.xlogy(avg, avg)) + math.log(float(k))  # 0 log 0 = 0
        with torch.no_grad():
            q_top = q.view(n_target, -1, k).argmax(-1)
            p_top = log_p_v.argmax(-1)
            agree = (p_top.unsqueeze(0) == q_top.unsqueeze(1)).sum()
        return {"ploss": ploss, "memax": memax, "agree": agree, "count": n_anchor * n_target * q_mean.shape[0]}


# ------------------------------------------------------------------------------------------------ the trained module
class SSLModule(nn.Module):
    """`student` and `teacher` (each an `SSLBranch`: `backbone` + `head`) and `objective`; forward = the loss.

    The teacher's parameters never require grad; the trainer never hands them to the optimizer and updates them by EMA
    after each step. Its BatchNorm layers run in training mode (batch statistics, own running statistics), as in
    3D-Speaker's RDINO/SDPN, where `teacher.train()` is called every epoch.
    """

    def __init__(
        self,
        method: str,
        student: SSLBranch,
        teacher: SSLBranch,
        objective: nn.Module,
        weights: dict[str, float] | None = None,
        vicreg: dict[str, float] | None = None,
    ):
        super().__init__()
        if method not in ("dino", "sdpn"):
            raise ValueError(f"unknown SSL method {method!r}")
        self.method = method
        self.student = student
        self.teacher = teacher
        self.objective = objective
        self.weights = dict(weights or {})
        self.vicreg = dict(vicreg or {})
        teacher.load_state_dict(student.state_dict())
        teacher.requires_grad_(False)

    def fixed_parameters(self) -> list[str]:
        """Student parameters that never train (DINO's unit last-layer magnitude); the teacher is excluded anyway."""
        return [f"student.head.{n}" for n in self.student.head.fixed_parameters()]

    def forward(
        self,
        global_feats: torch.Tensor,
        local_feats: torch.Tensor | None,
        n_global: int,
        n_local: int,
        teacher_temp: float = 0.04,
        reg_weight: float = 0.0,
    ) -> tuple[torch.Tensor, torch.Tensor, int, dict[str, torch.Tensor]]:
        """(loss, agreeing rows, compared rows, loss terms) for crop-major global and local feature batches."""
        if self.method == "dino":
            return self._dino(global_feats, local_feats, n_global, n_local, teacher_temp, reg_weight)
        return self._sdpn(global_feats, local_feats, n_global, n_local)

    def _dino(self, global_feats, local_feats, n_global, n_local, teacher_temp, reg_weight):
        with torch.no_grad():
            _, (t_reg, t_out) = self.teacher(global_feats)
        _, (s_reg, s_out) = self.student(global_feats)
        outs = [s_out]
        if n_local:
            _, (_, s_local) = self.student(local_feats)
            outs.append(s_local)
        student_out = torch.cat(outs, dim=0)
        dino, agree, count = self.objective(student_out, t_out, n_global + n_local, n_global, teacher_temp)
        terms: dict[str, torch.Tensor] = {"dino": dino.detach()}
        loss = dino
        if self.vicreg.get("weight", 0.0) > 0:
            reg = vicreg_regulariser(s_reg, t_reg, n_global, self.vicreg["std_coeff"], self.vicreg["cov_coeff"])
            loss = loss + reg_weight * reg
            terms["vicreg"] = reg.detach()
        return loss, agree, count, terms

    def _sdpn(self, global_feats, local_feats, n_global, n_local):
        with torch.no_grad():
            _, targets = self.teacher(global_feats)
        emb, anchors = self.student(local_feats)
        out = self.objective(anchors, targets, n_local, n_global)
        koleo = sum(koleo_loss(chunk) for chunk in emb.chunk(n_local))
        loss = out["ploss"] + self.weights["memax"] * out["memax"] + self.weights["koleo"] * koleo
        terms = {"ploss": out["ploss"].detach(), "memax": out["memax"].detach(), "koleo": koleo.detach()}
        return loss, out["agree"], out["count"], terms


def describe_terms(terms: dict[str, Any]) -> dict[str, float]:
    """Loss terms as plain floats for the log."""
    return {k: float(v) for k, v in terms.items()}
