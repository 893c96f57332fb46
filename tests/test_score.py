"""Trial/score files, embedding files (npz, Kaldi ark/scp), cosine scoring, mean subtraction, AS-norm, `score`."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from speakerforge.cli import main
from speakerforge.errors import DataError
from speakerforge.eval.embio import Embeddings, load_embeddings, save_embeddings, write_kaldi
from speakerforge.eval.score import cohort_stats, normalise, score_trials
from speakerforge.eval.trials import Trials, read_scores, read_trials


# --------------------------------------------------------------------------------------------------------------
# trial and score files
@pytest.mark.parametrize(
    "text, fmt",
    [
        ("1 a b\n0 a c\n", "voxceleb"),
        ("a b target\na c nontarget\n", "kaldi"),
        ("a b 1\na c 0\n", "enroll-test-digit"),
    ],
)
def test_trial_formats_give_the_same_trials(tmp_path, text, fmt):
    (tmp_path / "t").write_text(text + "\n")  # a trailing blank line is fine
    t = read_trials(tmp_path / "t")
    assert (t.enroll, t.test, t.labels.tolist(), t.format) == (["a", "a"], ["b", "c"], [1, 0], fmt)


def test_unlabelled_trials(tmp_path):
    (tmp_path / "t").write_text("a b\nc d\n")
    t = read_trials(tmp_path / "t")
    assert (t.enroll, t.test, t.labels) == (["a", "c"], ["b", "d"], None)


@pytest.mark.parametrize(
    "text, line",
    [
        ("1 a b\n0 a c\n2 a d\n", 3),  # label 2
        ("1 a b\n\n0 a\n", 3),  # two fields in a VoxCeleb list (blank lines keep numbering)
        ("a b target\na c maybe\n", 2),
        ("a b\na b c d\n", 2),
    ],
)
def test_malformed_trial_line_names_file_and_line(tmp_path, text, line):
    (tmp_path / "t").write_text(text)
    with pytest.raises(DataError, match=f"{tmp_path / 't'}:{line}: malformed trial line"):
        read_trials(tmp_path / "t")


def test_unreadable_first_line_empty_and_missing_trial_files_are_errors(tmp_path):
    (tmp_path / "t").write_text("a b c d e\n")
    with pytest.raises(DataError, match=r"t:1: cannot read trial line"):
        read_trials(tmp_path / "t")
    (tmp_path / "e").write_text("\n  \n")
    with pytest.raises(DataError, match="trials file is empty"):
        read_trials(tmp_path / "e")
    with pytest.raises(DataError, match="not found"):
        read_trials(tmp_path / "missing")


def test_score_files_with_and_without_labels(tmp_path):
    (tmp_path / "s").write_text("a b 0.5 target\nc d -1e-3 0\n")
    s = read_scores(tmp_path / "s")
    assert (s.enroll, s.test, s.scores.tolist(), s.labels.tolist()) == (["a", "c"], ["b", "d"], [0.5, -0.001], [1, 0])
    (tmp_path / "u").write_text("a b 0.5\nc d 0.25\n")
    assert read_scores(tmp_path / "u").labels is None
    (tmp_path / "m").write_text("a b 0.5\nc d 0.25 target\n")  # labels on some lines only
    with pytest.raises(DataError, match=r"m:2: malformed score line"):
        read_scores(tmp_path / "m")


# --------------------------------------------------------------------------------------------------------------
# embedding files
def _emb(n: int = 6, dim: int = 5, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    keys = ["id10270/5r0dWxy17C8/00001.wav", "file", "allow_pickle", "x.npy"] + [f"u{i}" for i in range(n)]
    return {k: rng.normal(size=dim).astype(np.float32) for k in keys}


def _same(a, b: dict[str, np.ndarray]) -> None:
    assert list(a) == list(b)
    for k in b:
        np.testing.assert_array_equal(a[k], b[k])


def test_npz_round_trip_keeps_any_key_and_order(tmp_path):
    emb = _emb()
    save_embeddings(tmp_path / "e.npz", emb)
    _same(load_embeddings(tmp_path / "e.npz"), emb)
    # plain numpy can read it too
    with np.load(tmp_path / "e.npz") as npz:
        np.testing.assert_array_equal(npz["file"], emb["file"])


def test_kaldi_binary_vector_bytes_are_exactly_kaldis_format(tmp_path):
    vec = np.array([1.0, -2.5, 0.125], dtype=np.float32)
    write_kaldi(tmp_path / "e.ark", tmp_path / "e.scp", {"utt1": vec, "utt2": 2 * vec})
    entry = b"\0BFV \x04" + struct.pack("<i", 3) + struct.pack("<3f", 1.0, -2.5, 0.125)
    entry2 = b"\0BFV \x04" + struct.pack("<i", 3) + struct.pack("<3f", 2.0, -5.0, 0.25)
    assert (tmp_path / "e.ark").read_bytes() == b"utt1 " + entry + b"utt2 " + entry2
    # scp offsets point at the "\0B" of each entry
    assert (tmp_path / "e.scp").read_text() == (
        f"utt1 {tmp_path / 'e.ark'}:5\nutt2 {tmp_path / 'e.ark'}:{5 + len(entry) + 5}\n"
    )


def test_kaldi_ark_and_scp_round_trip_float_and_double(tmp_path):
    emb = {k: v for k, v in _emb().items() if "/" not in k}
    save_embeddings(tmp_path / "f.ark", emb)
    _same(load_embeddings(tmp_path / "f.ark"), emb)
    _same(load_embeddings(tmp_path / "f.scp"), emb)
    write_kaldi(tmp_path / "d.ark", tmp_path / "d.scp", emb, double=True)
    assert b"DV \x04" in (tmp_path / "d.ark").read_bytes()
    _same(load_embeddings(tmp_path / "d.scp"), emb)


def test_scp_finds_its_ark_after_the_folder_moved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("exp").mkdir()
    emb = {"a": np.ones(4, np.float32), "b": np.arange(4, dtype=np.float32)}
    write_kaldi("exp/e.ark", "exp/e.scp", emb)
    Path("exp").rename("moved")
    _same(load_embeddings("moved/e.scp"), emb)


def test_text_ark_is_read(tmp_path):
    (tmp_path / "t.ark").write_text("a  [ 1 2 3 ]\nb [ 4.5 5 6 ]\n")
    e = load_embeddings(tmp_path / "t.ark")
    assert e.keys_list == ["a", "b"] and e.matrix.tolist() == [[1, 2, 3], [4.5, 5, 6]]


def test_bad_embedding_files_are_errors(tmp_path):
    with pytest.raises(DataError, match="unknown embedding file type"):
        load_embeddings(tmp_path / "e.txt")
    with pytest.raises(DataError, match="not found"):
        load_embeddings(tmp_path / "e.npz")
    np.savez(tmp_path / "dims.npz", a=np.ones(3), b=np.ones(4))
    with pytest.raises(DataError, match="dimension 4"):
        load_embeddings(tmp_path / "dims.npz")
    np.savez(tmp_path / "nan.npz", a=np.ones(3), b=np.array([1, np.nan, 0]))
    with pytest.raises(DataError, match=r"1 embeddings contain NaN or inf \(first: 'b'\)"):
        load_embeddings(tmp_path / "nan.npz")
    (tmp_path / "bad.scp").write_text("a e.ark\n")
    with pytest.raises(DataError, match=r"bad.scp:1: expected `key file.ark:offset`"):
        load_embeddings(tmp_path / "bad.scp")
    write_kaldi(tmp_path / "t.ark", None, {"a": np.ones(8, np.float32)})
    (tmp_path / "t.ark").write_bytes((tmp_path / "t.ark").read_bytes()[:-4])
    with pytest.raises(DataError, match="truncated"):
        load_embeddings(tmp_path / "t.ark")


def test_failed_write_leaves_nothing_behind(tmp_path):
    with pytest.raises(DataError, match="whitespace"):
        write_kaldi(tmp_path / "e.ark", tmp_path / "e.scp", {"a b": np.ones(2, np.float32)})
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------------------------
# scoring
def _naive_cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def _random_setup(seed=0, n=40, dim=8, n_trials=300, n_cohort=60):
    rng = np.random.default_rng(seed)
    keys = [f"u{i}" for i in range(n)]
    emb = Embeddings(keys, rng.normal(size=(n, dim)) + 0.7)
    cohort = Embeddings([f"c{i}" for i in range(n_cohort)], rng.normal(size=(n_cohort, dim)) + 0.7)
    pairs = rng.integers(0, n, size=(n_trials, 2))
    trials = Trials([keys[i] for i in pairs[:, 0]], [keys[j] for j in pairs[:, 1]], None)
    return emb, cohort, trials


def test_cosine_scores_match_a_per_trial_loop():
    emb, _, trials = _random_setup()
    got = score_trials(emb, trials, block_elements=64)  # tiny blocks: many chunks
    want = [_naive_cos(emb[e], emb[t]) for e, t in zip(trials.enroll, trials.test)]
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_mean_subtraction_matches_a_per_trial_loop():
    emb, cohort, trials = _random_setup(1)
    mean = cohort.mean()
    got = score_trials(emb, trials, mean=mean)
    want = [_naive_cos(emb[e] - mean, emb[t] - mean) for e, t in zip(trials.enroll, trials.test)]
    np.testing.assert_allclose(got, want, atol=1e-6)
    # the offset is large enough that subtracting it matters
    assert np.abs(got - score_trials(emb, trials)).max() > 0.05


def _naive_asnorm(emb, cohort, trials, top_n, mean=None):
    mean = np.zeros(emb.dim) if mean is None else mean
    cvecs = [cohort[k] - mean for k in cohort]

    def stats(v):
        sims = sorted((_naive_cos(v, c) for c in cvecs), reverse=True)[:top_n]
        return np.mean(sims), np.std(sims)

    out = []
    for e, t in zip(trials.enroll, trials.test):
        ve, vt = emb[e] - mean, emb[t] - mean
        s = _naive_cos(ve, vt)
        (me, se), (mt, st) = stats(ve), stats(vt)
        out.append(0.5 * ((s - me) / se + (s - mt) / st))
    return np.array(out)


@pytest.mark.parametrize("top_n", [5, 60, 500])  # 60 and 500 >= cohort: S-norm over the whole cohort
@pytest.mark.parametrize("with_mean", [False, True])
def test_asnorm_matches_a_naive_per_trial_loop(top_n, with_mean):
    emb, cohort, trials = _random_setup(2)
    mean = cohort.mean() if with_mean else None
    got = score_trials(emb, trials, cohort=cohort, top_n=top_n, mean=mean, block_elements=7 * 60)  # 7-row blocks
    # float32 cosines (error ~1e-7) are divided by top-n spreads of ~0.01: compare relatively
    np.testing.assert_allclose(got, _naive_asnorm(emb, cohort, trials, top_n, mean), rtol=1e-5, atol=1e-5)


def test_cohort_stats_blocks_do_not_change_the_result():
    rng = np.random.default_rng(3)
    x = normalise(rng.normal(size=(101, 16)))
    c = normalise(rng.normal(size=(250, 16)))
    whole = cohort_stats(x, c, 30, block_elements=1 << 30)
    # float32 GEMM may sum in another order for another number of rows (BLAS picks kernels by shape): equal to float32
    # rounding of a 16-term dot product, not bit-equal (1.7e-8 measured on a 2-core CI machine)
    for block_elements in (250, 251 * 3, 250 * 100):
        np.testing.assert_allclose(cohort_stats(x, c, 30, block_elements=block_elements), whole, rtol=0, atol=1e-7)


def test_scoring_errors():
    emb, cohort, trials = _random_setup()
    bad = Trials(["u1", "nope1", "u2", "nope2", "nope1"], ["u3", "u4", "nope3", "u5", "u6"], None, source="T")
    with pytest.raises(DataError, match=r"T: trials name 3 utterances with no embedding .*first: nope1, nope3, nope2"):
        score_trials(emb, bad)
    with pytest.raises(DataError, match="no trials"):
        score_trials(emb, Trials([], [], None))
    small = Embeddings(["c"], np.ones((1, 3)))
    with pytest.raises(DataError, match="cohort .* has dimension 3 but the embeddings .* have 8"):
        score_trials(emb, trials, cohort=small)
    with pytest.raises(DataError, match="mean vector has dimension 3"):
        score_trials(emb, trials, mean=np.zeros(3))
    with pytest.raises(DataError, match="top_n must be at least 2"):
        score_trials(emb, trials, cohort=cohort, top_n=1)
    zero = Embeddings(["a", "b"], np.array([[0.0, 0.0], [1.0, 0.0]]))
    with pytest.raises(DataError, match=r"1 embeddings are zero \(first: a\)"):
        score_trials(zero, Trials(["a"], ["b"], None))


# --------------------------------------------------------------------------------------------------------------
# `speakerforge score`
@pytest.fixture()
def files(tmp_path):
    emb, cohort, trials = _random_setup(4)
    save_embeddings(tmp_path / "emb.npz", emb)
    save_embeddings(tmp_path / "cohort.npz", cohort)
    labels = np.arange(len(trials)) % 2
    (tmp_path / "trials").write_text(
        "".join(f"{lab} {e} {t}\n" for lab, e, t in zip(labels, trials.enroll, trials.test))
    )
    (tmp_path / "unlabelled").write_text("".join(f"{e} {t}\n" for e, t in zip(trials.enroll, trials.test)))
    return tmp_path, emb, cohort, trials, labels


def test_score_command_writes_scores_with_labels(files):
    d, emb, cohort, trials, labels = files
    assert (
        main(
            [
                "--quiet",
                "score",
                "--embeddings",
                str(d / "emb.npz"),
                "--trials",
                str(d / "trials"),
                "--out",
                str(d / "out" / "s.score"),
            ]
        )
        == 0
    )
    s = read_scores(d / "out" / "s.score")
    assert (s.enroll, s.test, s.labels.tolist()) == (trials.enroll, trials.test, labels.tolist())
    np.testing.assert_allclose(s.scores, score_trials(emb, trials), atol=1e-6)


def test_score_command_asnorm_mean_and_kaldi_input(files):
    d, emb, cohort, trials, _ = files
    save_embeddings(d / "emb.ark", emb)
    assert (
        main(
            [
                "--quiet",
                "score",
                "--embeddings",
                str(d / "emb.scp"),
                "--trials",
                str(d / "unlabelled"),
                "--out",
                str(d / "s"),
                "--cohort",
                str(d / "cohort.npz"),
                "--asnorm-top",
                "20",
                "--mean-from",
                str(d / "cohort.npz"),
            ]
        )
        == 0
    )
    s = read_scores(d / "s")
    assert s.labels is None
    want = score_trials(emb, trials, cohort=cohort, top_n=20, mean=cohort.mean())
    np.testing.assert_allclose(s.scores, want, atol=1e-5)


def _assert_fails(argv, capsys, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err, err
    assert len(err.strip().splitlines()) == 1


def test_score_command_bad_inputs_fail_with_a_message_and_no_output(files, capsys):
    d, *_ = files
    base = ["score", "--embeddings", str(d / "emb.npz"), "--out", str(d / "s")]
    (d / "unknown").write_text("1 u1 u2\n0 u1 ghost\n1 ghost2 u3\n")
    _assert_fails(base + ["--trials", str(d / "unknown")], capsys, "trials name 2 utterances", "ghost, ghost2")
    (d / "empty").write_text("")
    _assert_fails(base + ["--trials", str(d / "empty")], capsys, "trials file is empty")
    (d / "malformed").write_text("1 u1 u2\n0 u1 u3\n1 u1\n")
    _assert_fails(base + ["--trials", str(d / "malformed")], capsys, f"{d / 'malformed'}:3", "malformed trial line")
    save_embeddings(d / "c3.npz", {"c1": np.ones(3, np.float32), "c2": np.arange(3, dtype=np.float32)})
    _assert_fails(
        base + ["--trials", str(d / "trials"), "--cohort", str(d / "c3.npz")], capsys, "has dimension 3", "have 8"
    )
    _assert_fails(
        base + ["--trials", str(d / "trials"), "--mean-from", str(d / "c3.npz")], capsys, "mean vector has dimension 3"
    )
    assert not (d / "s").exists()
    assert not [p for p in d.iterdir() if p.name.endswith(".tmp")]


def test_npz_written_by_numpy_stored_or_compressed_is_read(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.arange(3.0), y=np.ones((1, 3), np.float32))  # (1, D) is accepted
    np.savez_compressed(tmp_path / "b.npz", x=np.arange(3.0), y=np.ones(3))
    for name in ("a.npz", "b.npz"):
        e = load_embeddings(tmp_path / name)
        assert e.keys_list == ["x", "y"] and e.matrix.tolist() == [[0, 1, 2], [1, 1, 1]]
    (tmp_path / "c.npz").write_bytes((tmp_path / "a.npz").read_bytes()[:100])
    with pytest.raises(DataError, match="not a readable .npz"):
        load_embeddings(tmp_path / "c.npz")


def test_asnorm_top_without_cohort_is_an_error(files, capsys):
    d, *_ = files
    _assert_fails(
        [
            "score",
            "--embeddings",
            str(d / "emb.npz"),
            "--trials",
            str(d / "trials"),
            "--out",
            str(d / "s"),
            "--asnorm-top",
            "50",
        ],
        capsys,
        "--asnorm-top needs --cohort",
    )


def test_line_numbers_stay_exact_across_read_chunks_and_blank_lines(tmp_path, monkeypatch):
    import speakerforge.eval.trials as trials_mod

    monkeypatch.setattr(trials_mod, "_CHUNK_LINES", 4)
    lines = [f"{i % 2} e{i} t{i}" for i in range(11)]
    lines[5] = ""
    lines[9] = "1 e9"  # line 10, in the third chunk
    (tmp_path / "t").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=f"{tmp_path / 't'}:10: malformed trial line"):
        read_trials(tmp_path / "t")
    (tmp_path / "s").write_text("".join(f"e{i} t{i} {i / 10}\n" if i != 6 else "\n" for i in range(11)))
    s = read_scores(tmp_path / "s")
    assert len(s) == 10 and s.describe(6) == f"e7 t7 ({tmp_path / 's'}:8)"


def test_trial_labels_override_score_labels_with_a_warning(tmp_path, caplog):
    from speakerforge.eval.trials import align_scores

    (tmp_path / "s").write_text("a b 0.9 target\nc d 0.1 target\n")
    (tmp_path / "t").write_text("c d nontarget\na b target\n")
    with caplog.at_level("WARNING"):
        aligned = align_scores(read_scores(tmp_path / "s"), read_trials(tmp_path / "t"))
    assert aligned.scores.tolist() == [0.1, 0.9] and aligned.labels.tolist() == [0, 1]
    assert "1 labels in" in caplog.text and f"c d ({tmp_path / 's'}:2)" in caplog.text
