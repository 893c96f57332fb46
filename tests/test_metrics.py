"""EER/minDCF: parity with 3D-Speaker's scorer (ties included), hand-computed cases, bad input, DET plots, `eval`."""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from speakerforge.cli import main
from speakerforge.errors import DataError
from speakerforge.eval.metrics import compute_metrics, error_rates
from speakerforge.eval.plots import plot_det, probit

TOL = 1e-6


# --------------------------------------------------------------------------------------------------------------
# the oracle
@pytest.fixture(scope="module")
def ref():
    """speakerlab/utils/score_metrics.py, loaded by path; scipy (used only by its plotting helper) stubbed if absent."""
    spec = importlib.util.find_spec("speakerlab")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("speakerlab (test-only oracle) is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "utils" / "score_metrics.py"
    with pytest.MonkeyPatch.context() as mp:
        try:
            import scipy.stats
        except ModuleNotFoundError:
            scipy = types.ModuleType("scipy")
            scipy.stats = types.ModuleType("scipy.stats")
            scipy.stats.norm = None
            mp.setitem(sys.modules, "scipy", scipy)
            mp.setitem(sys.modules, "scipy.stats", scipy.stats)
        mod_spec = importlib.util.spec_from_file_location("_speakerlab_score_metrics", path)
        module = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(module)
    return module


def reference_metrics(ref, scores: np.ndarray, labels: np.ndarray) -> dict:
    fnr, fpr = ref.compute_pmiss_pfa_rbst(scores, labels)
    eer, thr = ref.compute_eer(fnr, fpr, scores)
    return {
        "eer": 100 * eer,
        "eer_threshold": thr,
        "0.01": ref.compute_c_norm(fnr, fpr, 0.01),
        "0.05": ref.compute_c_norm(fnr, fpr, 0.05),
    }


def max_diff(ours: dict, theirs: dict) -> float:
    return max(
        abs(ours["eer"] - theirs["eer"]),
        abs(ours["eer_threshold"] - theirs["eer_threshold"]),
        abs(ours["min_dcf"]["0.01"]["value"] - theirs["0.01"]),
        abs(ours["min_dcf"]["0.05"]["value"] - theirs["0.05"]),
    )


def _trials(seed: int, n: int, p_target: float, separation: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < p_target).astype(np.int64)
    labels[:2] = (0, 1)  # both classes, always
    return rng.normal(size=n) + separation * labels, labels


CASES = {
    "random": lambda s: _trials(s, 20000, 0.1),
    "random_float32": lambda s: tuple(
        (a.astype(np.float32) if i == 0 else a) for i, a in enumerate(_trials(s, 20000, 0.1))
    ),
    "tied_1_decimal": lambda s: (np.round(_trials(s, 20000, 0.1)[0], 1), _trials(s, 20000, 0.1)[1]),
    "tied_3_values": lambda s: (np.clip(np.round(_trials(s, 5000, 0.3, 1.0)[0]), -1, 1), _trials(s, 5000, 0.3, 1.0)[1]),
    "unbalanced_few_targets": lambda s: _trials(s, 30000, 0.0003, 3.0),
    "unbalanced_few_nontargets": lambda s: _trials(s, 30000, 0.9997, 3.0),
    "tied_unbalanced": lambda s: (np.round(_trials(s, 30000, 0.002, 2.5)[0], 1), _trials(s, 30000, 0.002, 2.5)[1]),
}


@pytest.mark.oracle
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_eer_mindcf_and_thresholds_equal_speakerlab(ref, case, seed):
    scores, labels = CASES[case](seed)
    ours = compute_metrics(scores, labels)
    assert max_diff(ours, reference_metrics(ref, scores, labels)) <= TOL


@pytest.mark.oracle
def test_heavily_tied_scores_still_give_distinct_metrics(ref):
    """Sanity of the tied cases above: ties really change the result, so parity there is not vacuous."""
    scores, labels = _trials(3, 20000, 0.1)
    assert abs(compute_metrics(np.round(scores, 1), labels)["eer"] - compute_metrics(scores, labels)["eer"]) > 1e-3


# --------------------------------------------------------------------------------------------------------------
# hand-computed
def test_tiny_case_by_hand():
    # sorted: 1 T, 2 N, 3 T, 4 N, 5 T.  P_miss 1/3 1/3 2/3 2/3 1;  P_fa 1 1/2 1/2 0 0.
    # First point with P_miss >= P_fa is score 3; the line to the point before crosses the diagonal at 1/2.
    # minDCF(0.01): min(cost) at score 4 = 0.01 * 2/3, normalised by 0.01 -> 2/3.
    m = compute_metrics([1, 2, 3, 4, 5], [1, 0, 1, 0, 1])
    assert m["eer"] == pytest.approx(50.0)
    assert m["eer_threshold"] == 3.0
    assert m["min_dcf"]["0.01"]["value"] == pytest.approx(2 / 3)
    assert m["min_dcf"]["0.01"]["threshold"] == 4.0
    assert (m["min_dcf"]["0.01"]["p_miss"], m["min_dcf"]["0.01"]["p_fa"]) == pytest.approx((2 / 3, 0.0))
    # minDCF(0.05): costs 0.05 P_miss + 0.95 P_fa -> min 0.05 * 2/3 at score 4 again.
    assert m["min_dcf"]["0.05"]["value"] == pytest.approx(2 / 3)
    assert (m["n_trials"], m["n_target"], m["n_nontarget"]) == (5, 3, 2)


def test_perfect_separation_gives_zero_eer_and_zero_mindcf():
    m = compute_metrics([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1])
    assert m["eer"] == 0.0
    assert m["eer_threshold"] == 0.2  # accept scores above it
    assert m["min_dcf"]["0.01"]["value"] == 0.0


def test_single_target_scored_lowest_gives_100_percent_where_reference_crashes():
    m = compute_metrics([0.0, 0.5, 0.6, 0.7], [1, 0, 0, 0])
    assert m["eer"] == pytest.approx(100.0)


def test_boolean_labels_and_lists_are_accepted():
    a = compute_metrics([0.3, 0.1, 0.9, 0.7], [False, False, True, True])
    b = compute_metrics(np.array([0.3, 0.1, 0.9, 0.7]), np.array([0, 0, 1, 1]))
    assert a == b


def test_error_rates_are_monotone_and_end_at_the_corners():
    scores, labels = _trials(5, 5000, 0.2)
    r = error_rates(scores, labels)
    assert np.all(np.diff(r.p_miss) >= 0) and np.all(np.diff(r.p_fa) <= 0)
    assert (r.p_miss[-1], r.p_fa[-1]) == (1.0, 0.0)
    assert np.all(np.diff(r.thresholds) >= 0)


# --------------------------------------------------------------------------------------------------------------
# bad input
@pytest.mark.parametrize("labels, kind", [([1, 1, 1], "target"), ([0, 0, 0], "nontarget")])
def test_single_class_is_a_clear_error(labels, kind):
    with pytest.raises(DataError, match=f"all 3 trials are {kind} trials"):
        compute_metrics([0.1, 0.2, 0.3], labels)


def test_nan_and_inf_scores_are_counted_and_the_first_named():
    with pytest.raises(DataError, match=r"2 of 4 scores are NaN or inf \(first: trial 2"):
        compute_metrics([0.1, np.nan, 0.3, np.inf], [0, 1, 0, 1])
    with pytest.raises(DataError, match=r"first: a b"):
        compute_metrics([0.1, np.inf], [0, 1], describe=lambda i: "a b")


def test_empty_mismatched_and_non_binary_labels_are_errors():
    with pytest.raises(DataError, match="no trials"):
        compute_metrics([], [])
    with pytest.raises(DataError, match="3 scores but 2 labels"):
        compute_metrics([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(DataError, match="labels must be 0"):
        compute_metrics([0.1, 0.2, 0.3], [0, 1, 2])


# --------------------------------------------------------------------------------------------------------------
# DET plot
def test_probit_matches_the_normal_quantile():
    ps = [1e-6, 1e-4, 0.01, 0.02425, 0.3, 0.5, 0.9, 0.999]
    ours = probit(np.array(ps))
    assert np.allclose(ours, [statistics.NormalDist().inv_cdf(p) for p in ps], rtol=1e-8, atol=1e-8)


def test_det_plot_of_several_systems_is_a_png_and_leaves_no_temp_file(tmp_path):
    a, b = _trials(0, 20000, 0.05, 2.0), _trials(1, 20000, 0.05, 3.0)
    perfect = (np.array([0.0, 0.1, 0.9, 1.0]), np.array([0, 0, 1, 1]))
    out = tmp_path / "plots" / "det.png"
    metrics = plot_det(out, {"before": a, "after": b, "perfect": perfect}, title="test")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.parent.iterdir()) == ["det.png"]
    assert metrics["after"]["eer"] < metrics["before"]["eer"]
    assert metrics["before"] == compute_metrics(*a)


# --------------------------------------------------------------------------------------------------------------
# `speakerforge eval`
def _write_scores(path: Path, scores, labels, names=("nontarget", "target")) -> None:
    lines = [
        f"e{i} t{i} {s:.6f}" + (f" {names[lab]}" if labels is not None else "")
        for i, (s, lab) in enumerate(zip(scores, labels if labels is not None else [0] * len(scores)))
    ]
    path.write_text("\n".join(lines) + "\n")


def test_eval_writes_metrics_json_and_det_beside_the_scores(tmp_path, capsys):
    scores, labels = _trials(0, 3000, 0.1)
    scores = np.round(scores, 6)
    _write_scores(tmp_path / "sys.score", scores, labels)
    assert main(["--quiet", "eval", "--scores", str(tmp_path / "sys.score")]) == 0
    report = json.loads((tmp_path / "metrics.json").read_text())
    expected = compute_metrics(scores, labels)
    assert report["eer"] == pytest.approx(expected["eer"], abs=1e-9)
    assert report["min_dcf"]["0.01"]["value"] == pytest.approx(expected["min_dcf"]["0.01"]["value"], abs=1e-9)
    assert (tmp_path / "det.png").read_bytes()[:4] == b"\x89PNG"
    assert f"EER {expected['eer']:.3f}%" in capsys.readouterr().out


def test_eval_takes_labels_from_trials_in_any_order_and_compares_systems(tmp_path, capsys):
    scores, labels = _trials(1, 2000, 0.2)
    order = np.random.default_rng(0).permutation(len(scores))
    (tmp_path / "a.score").write_text("".join(f"e{i} t{i} {scores[i]:.6f}\n" for i in order))
    (tmp_path / "b.score").write_text("".join(f"e{i} t{i} {scores[i] * 0.5 + labels[i]:.6f}\n" for i in order))
    (tmp_path / "trials").write_text("".join(f"{labels[i]} e{i} t{i}\n" for i in range(len(scores))))
    out = tmp_path / "out"
    assert (
        main(
            [
                "--quiet",
                "eval",
                "--scores",
                str(tmp_path / "a.score"),
                "--trials",
                str(tmp_path / "trials"),
                "--compare",
                str(tmp_path / "b.score"),
                "--out-dir",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads((out / "metrics.json").read_text())
    assert report["eer"] == pytest.approx(compute_metrics(np.round(scores, 6), labels)["eer"], abs=1e-9)
    assert report["compare"]["b"]["eer"] < report["eer"]
    assert (out / "det.png").exists()
    assert "a: EER" in capsys.readouterr().out


def _assert_fails(argv: list[str], capsys, *needles: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err, err
    assert len(err.strip().splitlines()) == 1


def test_eval_all_target_scores_fail_without_output(tmp_path, capsys):
    _write_scores(tmp_path / "s", [0.1, 0.2, 0.3], [1, 1, 1])
    _assert_fails(["eval", "--scores", str(tmp_path / "s")], capsys, "all 3 trials are target trials")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_eval_nan_scores_name_count_and_first_trial_line(tmp_path, capsys):
    (tmp_path / "s").write_text("a b 0.1 target\nc d nan nontarget\ne f 0.3 nontarget\ng h inf target\n")
    _assert_fails(
        ["eval", "--scores", str(tmp_path / "s")], capsys, "2 of 4 scores are NaN or inf", f"c d ({tmp_path / 's'}:2)"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_eval_malformed_score_line_names_file_and_line(tmp_path, capsys):
    (tmp_path / "s").write_text("a b 0.1 target\nc d 0.2 nontarget\n\nc d zero nontarget\n")
    _assert_fails(["eval", "--scores", str(tmp_path / "s")], capsys, f"{tmp_path / 's'}:4", "malformed score line")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_eval_unlabelled_scores_without_trials_and_unscored_trials_are_errors(tmp_path, capsys):
    (tmp_path / "s").write_text("a b 0.1\nc d 0.2\n")
    _assert_fails(["eval", "--scores", str(tmp_path / "s")], capsys, "no labels", "--trials")
    (tmp_path / "t").write_text("1 a b\n0 c d\n0 x y\n")
    _assert_fails(
        ["eval", "--scores", str(tmp_path / "s"), "--trials", str(tmp_path / "t")], capsys, "1 of 3 trials", "x y"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s", "t"]


def test_eval_of_empty_score_file_is_an_error(tmp_path, capsys):
    (tmp_path / "s").write_text("\n")
    _assert_fails(["eval", "--scores", str(tmp_path / "s")], capsys, "empty")
