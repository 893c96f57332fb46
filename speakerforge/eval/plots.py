"""DET curves (NIST style: miss vs false-alarm probability on normal-deviate axes), one or several systems per plot."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from speakerforge.atomic import atomic_path
from speakerforge.eval.metrics import P_TARGETS, ErrorRates, error_rates, metrics_from_rates

log = logging.getLogger(__name__)

# Percent values NIST DET plots label; the axes show the subset that the data can resolve.
_TICKS = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 40, 60, 80, 90, 95, 98, 99]
_COLORS = ["#1f4e99", "#c0392b", "#2e8b57", "#8e44ad", "#d4881e", "#17809a", "#555555"]
_GRID_POINTS = 1500  # samples per axis in probit space; enough for a smooth curve from 1e7 trials


def probit(p: np.ndarray | float) -> np.ndarray:
    """Inverse of the standard normal CDF (Acklam's rational approximation, relative error < 1.2e-9)."""
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-15, 1 - 1e-15)
    a = [
        -3.969683028665376e01,
        2.209460984245205e02,
        -2.759285104469687e02,
        1.383577518672690e02,
        -3.066479806614716e01,
        2.506628277459239e00,
    ]
    b = [
        -5.447609879822406e01,
        1.615858368580409e02,
        -1.556989798598866e02,
        6.680131188771972e01,
        -1.328068155288572e01,
    ]
    c = [
        -7.784894002430293e-03,
        -3.223964580411365e-01,
        -2.400758277161838e00,
        -2.549732539343734e00,
        4.374664141464968e00,
        2.938163982698783e00,
    ]
    d = [7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00]
    out = np.empty_like(p)
    lo, hi = p < 0.02425, p > 1 - 0.02425
    mid = ~(lo | hi)
    q = p[mid] - 0.5
    r = q * q
    out[mid] = (
        (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5])
        * q
        / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)
    )
    for mask, sign in ((lo, 1.0), (hi, -1.0)):
        q = np.sqrt(-2 * np.log(p[mask] if sign > 0 else 1 - p[mask]))
        out[mask] = sign * (
            (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5])
            / ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1)
        )
    return out


def _curve_points(rates: ErrorRates, lo: float) -> tuple[np.ndarray, np.ndarray]:
    """A few thousand DET points, evenly spread in probit space along both axes (P_fa, P_miss)."""
    grid = np.array([0.5 * math.erfc(-z / math.sqrt(2)) for z in np.linspace(probit(lo / 2), 0.0, _GRID_POINTS)])
    grid = np.concatenate([grid, 1 - grid[::-1]])
    n = rates.p_miss.size
    idx = np.concatenate(
        [
            np.searchsorted(rates.p_miss, grid),  # p_miss ascends
            n - 1 - np.searchsorted(rates.p_fa[::-1], grid),  # p_fa descends
            [0, n - 1],
        ]
    )
    idx = np.unique(np.clip(idx, 0, n - 1))
    # Start from the implicit "accept everything" point so the curve reaches the top-left corner.
    p_fa = np.concatenate([[1.0], rates.p_fa[idx]])
    p_miss = np.concatenate([[0.0], rates.p_miss[idx]])
    return p_fa, p_miss


def _axis_range(rates: Sequence[ErrorRates], metrics: Sequence[dict]) -> tuple[float, float]:
    """Axis limits (fractions, snapped to tick values) that show every EER and minDCF point with a margin."""
    points = [m["eer"] / 100 for m in metrics]
    points += [v for m in metrics for d in m["min_dcf"].values() for v in (d["p_fa"], d["p_miss"])]
    # Below about one trial of the smaller class there is nothing to resolve.
    resolution = max(1.0 / min(r.n_target, r.n_nontarget) for r in rates)
    low = float(probit(max(min([p for p in points if p > 0], default=resolution), resolution))) - 0.35
    high = max(float(probit(max(points))) + 0.25, float(probit(0.4)))
    lo = max([t for t in _TICKS if probit(t / 100) <= low], default=_TICKS[0]) / 100
    hi = min([t for t in _TICKS if probit(t / 100) >= high], default=_TICKS[-1]) / 100
    return lo, hi


def _thin_ticks(lo: float, hi: float) -> list[float]:
    """Tick values (percent) inside the range, dropping those that would crowd their neighbour."""
    span = probit(hi) - probit(lo)
    kept: list[float] = []
    for t in _TICKS:
        if lo * 100 - 1e-12 <= t <= hi * 100 + 1e-12:
            if not kept or probit(t / 100) - probit(kept[-1] / 100) >= span / 16:
                kept.append(t)
    return kept


_MARKERS = ["s", "D", "^", "v"]


def plot_det(
    path: str | Path,
    systems: Mapping[str, tuple[np.ndarray, np.ndarray] | ErrorRates],
    title: str | None = None,
    p_targets: Sequence[float] = P_TARGETS,
) -> dict[str, dict]:
    """Write a DET plot PNG of systems `{name: (scores, labels) or ErrorRates}`; return each system's metrics."""
    # A Figure with an Agg canvas, not pyplot: no global backend switch, no figure registry to leak into.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not systems:
        raise ValueError("plot_det needs at least one system")
    rates = {name: r if isinstance(r, ErrorRates) else error_rates(*r) for name, r in systems.items()}
    metrics = {name: metrics_from_rates(r, p_targets) for name, r in rates.items()}
    lo, hi = _axis_range(list(rates.values()), list(metrics.values()))
    lim = (float(probit(lo)), float(probit(hi)))

    fig = Figure(figsize=(6.4, 6.0), dpi=150, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(lim, lim, color="0.6", lw=0.8, ls=(0, (4, 3)), zorder=1)
    for k, (name, r) in enumerate(rates.items()):
        _plot_system(ax, name, r, metrics[name], _COLORS[k % len(_COLORS)], lo, lim)
    _style_det_axes(ax, lim, _thin_ticks(lo, hi), title)
    _det_legends(fig, ax, p_targets)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    log.info("wrote %s", path)
    return metrics


def _plot_system(ax: Any, name: str, r: ErrorRates, m: dict, color: str, lo: float, lim: tuple[float, float]) -> None:
    """One system's curve, its EER point and its minDCF operating points (markers kept on the frame when off
    range)."""

    def axis(p: np.ndarray | float) -> np.ndarray:
        return np.clip(probit(p), *lim)

    p_fa, p_miss = _curve_points(r, lo)
    ax.plot(
        probit(p_fa),
        probit(p_miss),
        color=color,
        lw=1.8,
        zorder=3,
        solid_joinstyle="round",
        label=f"{name}: EER {m['eer']:.2f}%, "
        + ", ".join(f"minDCF$_{{{p}}}$ {d['value']:.3f}" for p, d in m["min_dcf"].items()),
    )
    e = axis(m["eer"] / 100)
    ax.plot(e, e, "o", ms=7, mfc="white", mec=color, mew=1.8, zorder=4, clip_on=False)
    for j, d in enumerate(m["min_dcf"].values()):
        ax.plot(
            axis(d["p_fa"]),
            axis(d["p_miss"]),
            _MARKERS[j % len(_MARKERS)],
            ms=6.5,
            color=color,
            mec="white",
            mew=0.8,
            zorder=5,
            clip_on=False,
        )


def _style_det_axes(ax: Any, lim: tuple[float, float], ticks: list[float], title: str | None) -> None:
    ax.set_xlim(lim)
    ax.set_ylim(lim)
    ax.set_aspect("equal")
    labels = [f"{t:g}" for t in ticks]
    ax.set_xticks(probit(np.array(ticks) / 100), labels)
    ax.set_yticks(probit(np.array(ticks) / 100), labels)
    ax.tick_params(labelsize=9)
    ax.grid(True, color="0.88", lw=0.7)
    ax.set_axisbelow(True)
    ax.set_xlabel("False alarm probability (%)", fontsize=11)
    ax.set_ylabel("Miss probability (%)", fontsize=11)
    ax.set_title(title or "DET curve", fontsize=12)


def _det_legends(fig: Any, ax: Any, p_targets: Sequence[float]) -> None:
    """The systems below the axes (a legend inside would hide part of some curve, whatever corner it took); the
    point markers' key inside."""
    from matplotlib.lines import Line2D

    point_keys = [Line2D([], [], ls="", marker="o", ms=7, mfc="white", mec="0.3", mew=1.8, label="EER")]
    point_keys += [
        Line2D(
            [],
            [],
            ls="",
            marker=_MARKERS[j % len(_MARKERS)],
            ms=6,
            color="0.3",
            mec="white",
            label=f"minDCF, $p_{{target}}$={p:g}",
        )
        for j, p in enumerate(p_targets)
    ]
    handles, _ = ax.get_legend_handles_labels()
    fig.legend(handles=handles, loc="outside lower center", fontsize=8.5, frameon=False)
    ax.legend(
        handles=point_keys,
        loc="upper right",
        fontsize=7.5,
        frameon=True,
        framealpha=0.95,
        edgecolor="0.8",
        handletextpad=0.3,
        borderpad=0.5,
    )
