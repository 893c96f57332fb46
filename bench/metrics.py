"""Time EER + minDCF(0.01, 0.05): ours at 1e7 trials, and ours vs 3D-Speaker's scorer at 1e6.

speakerlab's `compute_c_norm` takes Python's built-in `min` over a numpy array (an element-by-element loop), so it is
timed at 1e6 trials only (`--ref-trials`); the ratio is computed at that size, same data for both.

    python bench/metrics.py [--trials 10000000] [--ref-trials 1000000] [--asnorm]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
import types
from pathlib import Path

import numpy as np

from speakerforge.eval.metrics import compute_metrics


def load_reference():
    """speakerlab/utils/score_metrics.py by path; scipy is only used by its plotting helper, stubbed if absent."""
    spec = importlib.util.find_spec("speakerlab")
    if spec is None:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "utils" / "score_metrics.py"
    try:
        import scipy.stats
    except ModuleNotFoundError:
        scipy = types.ModuleType("scipy")
        scipy.stats = types.ModuleType("scipy.stats")
        scipy.stats.norm = None
        sys.modules.setdefault("scipy", scipy)
        sys.modules.setdefault("scipy.stats", scipy.stats)
    mod_spec = importlib.util.spec_from_file_location("_speakerlab_score_metrics", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


def reference(ref, scores, labels):
    fnr, fpr = ref.compute_pmiss_pfa_rbst(scores, labels)
    eer, thr = ref.compute_eer(fnr, fpr, scores)
    return 100 * eer, ref.compute_c_norm(fnr, fpr, 0.01), ref.compute_c_norm(fnr, fpr, 0.05)


def data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.01).astype(np.int64)  # VoxCeleb1-E/H-like share of targets is ~50%; SRE ~1%
    return rng.normal(size=n) + 3.0 * labels, labels


def timed(fn, *args):
    """Wall-clock seconds (the machine may be shared: the process CPU time is printed too)."""
    t, c = time.perf_counter(), time.process_time()
    out = fn(*args)
    timed.cpu = time.process_time() - c
    return time.perf_counter() - t, out


def bench_asnorm(n_utts: int = 100_000, n_cohort: int = 10_000, dim: int = 192, n_trials: int = 1_000_000) -> None:
    import resource

    from speakerforge.eval.embio import Embeddings
    from speakerforge.eval.score import score_trials
    from speakerforge.eval.trials import Trials

    rng = np.random.default_rng(0)
    keys = [f"u{i}" for i in range(n_utts)]
    emb = Embeddings(keys, rng.standard_normal((n_utts, dim), dtype=np.float32))
    cohort = Embeddings([f"c{i}" for i in range(n_cohort)], rng.standard_normal((n_cohort, dim), dtype=np.float32))
    idx = rng.integers(0, n_utts, size=(n_trials, 2))
    trials = Trials([keys[i] for i in idx[:, 0]], [keys[i] for i in idx[:, 1]], None)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    secs, _ = timed(lambda: score_trials(emb, trials, cohort=cohort, top_n=300))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"AS-norm: {n_utts} utterances x {n_cohort} cohort (dim {dim}), {n_trials} trials, top 300: {secs:.1f} s, "
        f"peak RSS {peak:.0f} MB ({before:.0f} MB before scoring)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=10_000_000)
    ap.add_argument("--ref-trials", type=int, default=1_000_000)
    ap.add_argument("--asnorm", action="store_true", help="also time AS-norm at 1e5 utterances x 1e4 cohort")
    args = ap.parse_args()

    scores, labels = data(args.trials)
    secs, m = timed(compute_metrics, scores, labels)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(
        f"ours       {args.trials:>10d} trials: {secs:6.2f} s (cpu {timed.cpu:.2f} s)   EER {m['eer']:.4f}%  "
        f"minDCF(0.01) {m['min_dcf']['0.01']['value']:.4f}"
    )

    ref = load_reference()
    if ref is None:
        print("speakerlab not installed: no reference timing")
        return
    scores, labels = data(args.ref_trials, seed=1)
    ours_secs, m = timed(compute_metrics, scores, labels)
    ours_cpu = timed.cpu
    ref_secs, (eer, dcf1, dcf5) = timed(reference, ref, scores, labels)
    diff = max(
        abs(m["eer"] - eer), abs(m["min_dcf"]["0.01"]["value"] - dcf1), abs(m["min_dcf"]["0.05"]["value"] - dcf5)
    )
    print(f"ours       {args.ref_trials:>10d} trials: {ours_secs:6.2f} s (cpu {ours_cpu:.2f} s)")
    print(
        f"speakerlab {args.ref_trials:>10d} trials: {ref_secs:6.2f} s (cpu {timed.cpu:.2f} s)   "
        f"(EER + 2 minDCFs; max |diff| {diff:.2g})"
    )
    print(
        f"ratio speakerlab / ours at {args.ref_trials} trials: {ref_secs / ours_secs:.2f}x wall, "
        f"{timed.cpu / ours_cpu:.2f}x cpu"
    )
    if args.asnorm:
        bench_asnorm()


if __name__ == "__main__":
    main()
