"""A run's `metrics.jsonl` and the training curves (loss, accuracy, LR, margin against the global step) drawn from it
as a PNG in the experiment folder."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from speakerforge.atomic import atomic_write, atomic_write_text

log = logging.getLogger(__name__)


class MetricsLog:
    """`EXP/metrics.jsonl`, one row per logged step, and `EXP/training_curves.png` redrawn from it now and then."""

    def __init__(self, exp: Path):
        self.path = exp / "metrics.jsonl"
        self.png = exp / "training_curves.png"
        self._last_plot = time.time()

    def truncate(self, global_step: int) -> None:
        """After a resume, drop rows logged after the checkpoint so curves show each step once."""
        if not self.path.is_file():
            return
        text = self.path.read_text(encoding="utf-8", errors="replace")
        rows = [line for line in text.splitlines() if line.strip()]
        keep = []
        for r in rows:
            try:
                row = json.loads(r)
            except json.JSONDecodeError:  # a row torn by a kill or a full disk mid-append
                log.warning("%s: dropping an unreadable row (torn by an interrupted write): %.60s", self.path, r)
                continue
            if isinstance(row, dict) and row.get("step", 0) <= global_step:
                keep.append(r)
        if len(keep) != len(rows) or (text and not text.endswith("\n")):
            atomic_write_text(self.path, "".join(r + "\n" for r in keep))

    def append(self, row: dict[str, Any]) -> None:
        # One write per row; a row torn by a kill or a full disk is dropped by the next run (`truncate`).
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def plot(self, force: bool) -> None:
        """Redraw the curves at most every two minutes (matplotlib is slow to start), or now when `force`."""
        if not (force or time.time() - self._last_plot > 120):
            return
        try:
            plot_training_curves(self.path, self.png)
        except Exception as exc:  # a plot must never stop a training run
            log.warning("could not draw training curves: %s", exc)
        self._last_plot = time.time()


def plot_training_curves(metrics_jsonl: str | Path, out_png: str | Path) -> Path:
    """Draw the rows of `metrics.jsonl`; stage boundaries are marked so staged runs read at a glance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in Path(metrics_jsonl).read_text().splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"{metrics_jsonl}: no rows")
    steps = [r["step"] for r in rows]
    panels = [("loss", "training loss"), ("acc", "training accuracy"), ("lr", "learning rate"), ("margin", "margin")]
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5), sharex=True)
    boundaries = [rows[i]["step"] for i in range(1, len(rows)) if rows[i].get("stage") != rows[i - 1].get("stage")]
    for ax, (key, title) in zip(axes.flat, panels):
        ax.plot(steps, [r.get(key, float("nan")) for r in rows], lw=1.4)
        for b in boundaries:
            ax.axvline(b, color="grey", ls="--", lw=0.8)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("global step")
    fig.suptitle(
        f"{Path(metrics_jsonl).parent.name}: {len(rows)} logged steps"
        + (f", {len(boundaries) + 1} stages" if boundaries else "")
    )
    fig.tight_layout()
    atomic_write(out_png, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    return Path(out_png)
