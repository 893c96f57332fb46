"""Evaluation commands (no model needed). One section per command: arguments, then a thin `_run_*` over the library.

Sections: shared helpers, score, eval. A new command is one more section of the same shape; the model-based ones
(extract, embed, verify, export) live in `cli/infer.py`. Library modules are imported inside the `_run_*`
functions so that the CLI starts fast and commands that need no torch never import it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from speakerforge.cli import command
from speakerforge.errors import DataError

if TYPE_CHECKING:
    from speakerforge.eval.trials import Scores, Trials

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------------------
# shared helpers
def _write_json(path: Path, data: dict) -> None:
    from speakerforge.atomic import atomic_open

    with atomic_open(path, "w") as fh:
        json.dump(data, fh, indent=2)
        fh.write("\n")


def _system_names(paths: list[str], names: list[str] | None) -> list[str]:
    """Legend names: given, or the file stem (with its folder when stems collide, e.g. exp/a/vox1.score)."""
    if names:
        if len(names) != len(paths):
            raise DataError(f"--names gives {len(names)} names for {len(paths)} score files; give one per file")
        return names
    stems = [Path(p).stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    return [f"{Path(p).parent.name}/{Path(p).stem}" for p in paths]


# --------------------------------------------------------------------------------------------------------------
# score
def _args_score(p: argparse.ArgumentParser) -> None:
    p.add_argument("--embeddings", required=True, metavar="EMB", help="embeddings: .npz, Kaldi .scp or .ark")
    p.add_argument(
        "--trials",
        required=True,
        metavar="T",
        help="trial list: `1 enroll test`, `enroll test target|nontarget`, or `enroll test`",
    )
    p.add_argument("--out", required=True, metavar="SCORES", help="output: `enroll test score [label]` lines")
    p.add_argument("--cohort", metavar="COHORT", help="cohort embeddings for AS-norm (e.g. training-speaker means)")
    p.add_argument(
        "--asnorm-top",
        type=int,
        metavar="N",
        help="AS-norm: top-N cohort scores per side (default 300; >= cohort size is S-norm)",
    )
    p.add_argument(
        "--mean-from",
        metavar="FILE",
        help="subtract the mean of these embeddings (e.g. the training set) before scoring",
    )
    p.add_argument("--precision", type=int, default=6, metavar="D", help="decimals written per score (default 6)")


@command("score", "cosine-score a trial list (optional mean subtraction and AS-norm)", _args_score)
def _run_score(args: argparse.Namespace) -> int:
    from speakerforge.atomic import atomic_open
    from speakerforge.eval.embio import load_embeddings
    from speakerforge.eval.score import score_trials
    from speakerforge.eval.trials import read_trials, write_scores

    if args.asnorm_top is not None and not args.cohort:
        raise DataError("--asnorm-top needs --cohort (the cohort embeddings for AS-norm)")
    top_n = 300 if args.asnorm_top is None else args.asnorm_top
    if top_n < 2:
        raise DataError(f"--asnorm-top must be at least 2, got {top_n}")
    trials = read_trials(args.trials)
    embeddings = load_embeddings(args.embeddings)
    mean = load_embeddings(args.mean_from).mean() if args.mean_from else None
    cohort = load_embeddings(args.cohort) if args.cohort else None
    scores = score_trials(embeddings, trials, mean=mean, cohort=cohort, top_n=top_n)
    with atomic_open(args.out, "w") as fh:
        write_scores(fh, trials.enroll, trials.test, scores, trials.labels, precision=args.precision)
    how = "cosine" + (" - mean" if mean is not None else "") + (f" + AS-norm top {top_n}" if cohort else "")
    log.info("wrote %d scores (%s) to %s", len(trials), how, args.out)
    return 0


# --------------------------------------------------------------------------------------------------------------
# eval
def _args_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scores", required=True, metavar="SCORES", help="score file `enroll test score [label]`")
    p.add_argument(
        "--trials",
        metavar="T",
        help="labelled trial list; it defines the evaluated trials (needed when SCORES has no labels)",
    )
    p.add_argument("--out-dir", metavar="DIR", help="where metrics.json and det.png go (default: beside SCORES)")
    p.add_argument(
        "--compare",
        nargs="+",
        default=[],
        metavar="SCORES",
        help="more score files drawn on the same DET plot (e.g. before fine-tuning)",
    )
    p.add_argument("--names", nargs="+", metavar="NAME", help="legend names for SCORES and --compare, in order")
    p.add_argument("--title", help="DET plot title")


def _labelled_scores(path: str, trials: Trials | None) -> Scores:
    from speakerforge.eval.trials import align_scores, read_scores

    scores = read_scores(path)
    if trials is not None:
        return align_scores(scores, trials)
    if scores.labels is None:
        raise DataError(f"{path}: scores have no labels; pass --trials with the labelled trial list")
    return scores


@command("eval", "EER and minDCF of a score file; writes metrics.json and a DET plot", _args_eval)
def _run_eval(args: argparse.Namespace) -> int:
    from speakerforge.eval.metrics import error_rates, format_metrics
    from speakerforge.eval.plots import plot_det
    from speakerforge.eval.trials import read_trials

    trials = read_trials(args.trials) if args.trials else None
    paths = [args.scores, *args.compare]
    names = _system_names(paths, args.names)
    rates = {}
    for name, path in zip(names, paths):
        s = _labelled_scores(path, trials)
        assert s.labels is not None  # _labelled_scores refuses unlabelled scores
        rates[name] = error_rates(
            s.scores, s.labels, describe=s.describe, source=trials.source if trials is not None else path
        )
    out_dir = Path(args.out_dir) if args.out_dir else Path(args.scores).parent
    det_path, json_path = out_dir / "det.png", out_dir / "metrics.json"
    metrics = plot_det(det_path, rates, title=args.title)
    main = metrics[names[0]]
    report = {"scores": str(args.scores), "trials": args.trials, **main}
    if len(paths) > 1:
        report["compare"] = {name: {"scores": str(p), **metrics[name]} for name, p in zip(names[1:], paths[1:])}
    _write_json(json_path, report)
    for name in names:
        print(
            f"{name}: {format_metrics(metrics[name])}" if len(names) > 1 else format_metrics(metrics[name]),
            file=sys.stdout,
        )
    log.info("wrote %s and %s", json_path, det_path)
    return 0
