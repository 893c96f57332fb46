"""EER and normalised minDCF by sorting (O(N log N)): ten million trials in seconds.

The numbers equal 3D-Speaker's `speakerlab/utils/score_metrics.py` (the NIST SRE16 script: `compute_pmiss_pfa_rbst`,
`compute_eer`, `compute_c_norm`), ties included:

* Scores are ordered with numpy's default `np.argsort` on the array as given, and every position in that order is
  an operating point: "reject the first i+1 trials". Inside a run of tied scores the points therefore follow the
  order argsort happens to leave the tied trials in, exactly as in the reference. With heavily tied scores this
  makes EER/minDCF depend on that order (and slightly optimistic); score with more decimals to avoid ties.
* EER: the first point where P_miss >= P_fa and the one before it are joined by a straight line, which is
  intersected with P_miss = P_fa. When the very first point already has P_miss >= P_fa (the reference raises an
  IndexError there), the implicit point "accept everything" (P_miss 0, P_fa 1) is used as the one before.
* minDCF: min over the points of c_miss P_miss p + c_fa P_fa (1 - p), divided by min(c_miss p, c_fa (1 - p)).

Thresholds are the score of the trial at the chosen point: at that operating point, trials scoring strictly above
the threshold are accepted (ties at the threshold are split as described above).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from speakerforge.errors import DataError

log = logging.getLogger(__name__)

P_TARGETS = (0.01, 0.05)


@dataclass
class ErrorRates:
    """Miss and false-alarm rates at every point of the sorted score list (the DET curve)."""

    scores: np.ndarray  # as given
    order: np.ndarray  # argsort of `scores`: point i rejects trials order[:i + 1]
    p_miss: np.ndarray  # fraction of targets rejected at each point
    p_fa: np.ndarray  # fraction of nontargets accepted at each point
    n_target: int
    n_nontarget: int

    def threshold(self, i: int) -> float:
        """Score of the trial at point i: trials scoring above it are accepted there."""
        return float(self.scores[self.order[i]])

    @property
    def thresholds(self) -> np.ndarray:
        """All sorted scores (float64); materialised only on request, as it is a 1e7-element gather."""
        return self.scores[self.order].astype(np.float64)


def check_scores(
    scores: np.ndarray,
    labels: np.ndarray | None = None,
    describe: Callable[[int], str] | None = None,
    source: str | None = None,
) -> None:
    """Raise DataError on empty input, NaN/inf scores, bad labels, or a single class.

    `describe(i)` names trial i; `source` (the file the labels come from) prefixes the messages about the whole list.
    """
    at = f"{source}: " if source else ""
    if scores.ndim != 1 or scores.size == 0:
        raise DataError(f"{at}no trials to evaluate (got scores of shape {scores.shape})")
    bad = ~np.isfinite(scores)
    if bad.any():
        first = int(np.argmax(bad))
        name = describe(first) if describe else f"trial {first + 1}"
        raise DataError(
            f"{int(bad.sum())} of {scores.size} scores are NaN or inf (first: {name}, score "
            f"{scores[first]}); fix the scoring step (e.g. zero or non-finite embeddings)"
        )
    if labels is None:
        return
    if labels.shape != scores.shape:
        raise DataError(f"{at}{scores.size} scores but {labels.size} labels; they must pair up one to one")
    n_target = int(np.count_nonzero(labels == 1))
    if n_target + int(np.count_nonzero(labels == 0)) != labels.size:
        other = sorted(set(np.unique(labels).tolist()) - {0, 1})[:5]
        raise DataError(f"{at}labels must be 0 (nontarget) or 1 (target), found {other}")
    if n_target == 0 or n_target == labels.size:
        kind = "nontarget" if n_target == 0 else "target"
        raise DataError(
            f"{at}all {labels.size} trials are {kind} trials; EER and minDCF need both target and "
            "nontarget trials (wrong trial list or labels?)"
        )


def _as_arrays(
    scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores)
    if not np.issubdtype(s.dtype, np.floating):
        s = s.astype(np.float64)  # argsort of the float array as given is what fixes the order of ties
    lab = np.asarray(labels)
    if lab.dtype == bool:
        lab = lab.astype(np.int8)
    return s, lab


def error_rates(
    scores: Sequence[float] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    describe: Callable[[int], str] | None = None,
    source: str | None = None,
) -> ErrorRates:
    """P_miss and P_fa at every sorted position (see module docstring for ties)."""
    s, lab = _as_arrays(scores, labels)
    check_scores(s, lab, describe, source)
    order = np.argsort(s)
    is_target = (lab == 1)[order]  # gather one byte per trial, not eight
    n_target = int(np.count_nonzero(is_target))
    n_nontarget = is_target.size - n_target
    # Integer cumulative counts are exact; dividing them gives the reference's float64 values bit for bit.
    count_type = np.int32 if is_target.size < 2**31 else np.int64
    p_miss = np.cumsum(is_target, dtype=count_type).astype(np.float64)
    p_miss /= n_target
    p_fa = np.cumsum(~is_target, dtype=count_type).astype(np.float64)
    p_fa /= n_nontarget
    np.subtract(1.0, p_fa, out=p_fa)
    return ErrorRates(s, order, p_miss, p_fa, n_target, n_nontarget)


def eer_point(rates: ErrorRates) -> tuple[float, float, int]:
    """(EER as a fraction, threshold, index of the first point with P_miss >= P_fa)."""
    diff = rates.p_miss - rates.p_fa
    x1 = int(np.argmax(diff >= 0))  # the last point has P_miss = 1, P_fa = 0, so one always exists
    below = np.flatnonzero(diff < 0)
    if below.size:
        x2 = int(below[-1])
        miss2, fa2 = rates.p_miss[x2], rates.p_fa[x2]
    else:  # implicit first point: accept everything
        miss2, fa2 = 0.0, 1.0
    miss1, fa1 = rates.p_miss[x1], rates.p_fa[x1]
    a = (miss1 - fa1) / (fa2 - fa1 - (miss2 - miss1))
    return float(miss1 + a * (miss2 - miss1)), rates.threshold(x1), x1


def min_dcf_point(
    rates: ErrorRates, p_target: float, c_miss: float = 1.0, c_fa: float = 1.0
) -> tuple[float, float, int]:
    """(normalised minDCF, threshold, index of the minimising point)."""
    cost = c_miss * rates.p_miss * p_target + c_fa * rates.p_fa * (1 - p_target)
    i = int(np.argmin(cost))
    return float(cost[i] / min(c_miss * p_target, c_fa * (1 - p_target))), rates.threshold(i), i


def metrics_from_rates(
    rates: ErrorRates, p_targets: Sequence[float] = P_TARGETS, c_miss: float = 1.0, c_fa: float = 1.0
) -> dict:
    """The `compute_metrics` dictionary from precomputed error rates."""
    eer, eer_thr, _ = eer_point(rates)
    out: dict = {
        "n_trials": rates.n_target + rates.n_nontarget,
        "n_target": rates.n_target,
        "n_nontarget": rates.n_nontarget,
        "eer": 100.0 * eer,
        "eer_threshold": eer_thr,
        "c_miss": c_miss,
        "c_fa": c_fa,
        "min_dcf": {},
    }
    for p in p_targets:
        if not 0 < p < 1:
            raise DataError(f"p_target must be between 0 and 1, got {p}")
        value, thr, i = min_dcf_point(rates, p, c_miss, c_fa)
        out["min_dcf"][f"{p:g}"] = {
            "value": value,
            "threshold": thr,
            "p_miss": float(rates.p_miss[i]),
            "p_fa": float(rates.p_fa[i]),
        }
    return out


def compute_metrics(
    scores: Sequence[float] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    p_targets: Sequence[float] = P_TARGETS,
    c_miss: float = 1.0,
    c_fa: float = 1.0,
    describe: Callable[[int], str] | None = None,
) -> dict:
    """EER (%) and normalised minDCF per p_target, with the threshold of each, as a JSON-ready dict.

    `labels` are 1 (target) / 0 (nontarget). `describe(i)` names trial i in error messages. Keys: n_trials,
    n_target, n_nontarget, eer, eer_threshold, c_miss, c_fa, min_dcf -> {"0.01": {value, threshold, p_miss, p_fa}}.

    >>> m = compute_metrics([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    >>> round(m["eer"], 3), m["eer_threshold"], m["min_dcf"]["0.01"]["value"]
    (50.0, 0.35, 0.5)
    """
    return metrics_from_rates(error_rates(scores, labels, describe), p_targets, c_miss, c_fa)


def format_metrics(m: dict) -> str:
    """One human-readable line, e.g. `EER 1.234% (thr 0.412)  minDCF(0.01) 0.1234  minDCF(0.05) 0.0789`."""
    parts = [f"EER {m['eer']:.3f}% (thr {m['eer_threshold']:.4f})"]
    parts += [f"minDCF({p}) {d['value']:.4f}" for p, d in m["min_dcf"].items()]
    parts.append(f"[{m['n_trials']} trials: {m['n_target']} target, {m['n_nontarget']} nontarget]")
    return "  ".join(parts)
