"""One table of the levers measured by `levers.sh`: EER per dev set and scoring, from exp/real/levers/*/accuracy.md.

.venv/bin/python recipes/shared-data/levers_table.py [--levers exp/real/levers] [--baseline baseline]
"""

from __future__ import annotations

import argparse
from pathlib import Path

SETS = ("cv-fa", "cv-multi", "libri")
SCORINGS = ("cosine", "mean-sub", "as-norm")


def read_accuracy(path: Path) -> dict[tuple[str, str], tuple[float, float]]:
    """{(set, scoring): (EER ours, EER resemblyzer)} from a bench/accuracy.py table."""
    out = {}
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 9 and cells[0] in SETS:
            out[(cells[0], cells[2])] = (float(cells[3].rstrip("%")), float(cells[4].rstrip("%")))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--levers", type=Path, default=Path("exp/real/levers"))
    p.add_argument("--baseline", default="baseline")
    a = p.parse_args()
    runs = {
        d.name: read_accuracy(d / "accuracy.md") for d in sorted(a.levers.iterdir()) if (d / "accuracy.md").is_file()
    }
    head = " | ".join(f"{s} {sc}" for s in SETS for sc in SCORINGS)
    print(f"| lever | train wall | {head} |")
    print("|---" * (2 + len(SETS) * len(SCORINGS)) + "|")
    ref = next(iter(runs.values()), {})
    print(
        "| resemblyzer 0.1.4 | - | "
        + " | ".join(f"{ref[(s, sc)][1]:.2f}" if (s, sc) in ref else "-" for s in SETS for sc in SCORINGS)
        + " |"
    )
    for name, acc in runs.items():
        wall = (
            (a.levers / name / "wall.txt").read_text().split(":")[-1].strip()
            if (a.levers / name / "wall.txt").is_file()
            else "-"
        )
        cells = " | ".join(f"{acc[(s, sc)][0]:.2f}" if (s, sc) in acc else "-" for s in SETS for sc in SCORINGS)
        print(f"| {name} | {wall} | {cells} |")


if __name__ == "__main__":
    main()
