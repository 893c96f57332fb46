"""Training curves (loss, accuracy, LR, margin against the global step) as a PNG in the experiment folder."""

from __future__ import annotations

import json
from pathlib import Path

from speakerforge.atomic import atomic_write


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
