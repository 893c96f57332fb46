"""Corpus readers (tiny layouts built here, and the real shared data when present), the synthetic corpus, trials,
and the `prepare` command."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speakerforge.cli import main
from speakerforge.data.corpora.readers import (
    prepare_cnceleb,
    prepare_commonvoice,
    prepare_librispeech,
    prepare_voxceleb,
    scan_commonvoice,
    scan_librispeech,
    scan_voxceleb,
)
from speakerforge.data.corpora.synthetic import make_synthetic_corpus, make_trials, write_trials
from speakerforge.data.manifest import Utterance, read_manifest
from speakerforge.data.validate import validate_manifests
from speakerforge.errors import DataError


# ---- LibriSpeech
def test_librispeech_release_and_flat_layouts(tmp_path, write_wav):
    write_wav("ls/103/1240/103-1240-0000.flac", seconds=0.5)
    write_wav("ls/103/1240/103-1240-0001.flac", seconds=0.25)
    write_wav("ls/flat/1034-121119-0000.flac", seconds=0.5)
    (tmp_path / "ls" / "103" / "1240" / "103-1240.trans.txt").write_text("103-1240-0000 HELLO\n")
    write_wav("ls/readme.flac", seconds=0.1)  # not SPEAKER-CHAPTER-UTT: skipped
    result = prepare_librispeech(tmp_path / "ls", tmp_path / "out")
    assert (result.utterances, result.speakers, result.skipped) == (3, 2, 1)
    assert result.seconds == pytest.approx(1.25)
    utts = read_manifest(tmp_path / "out" / "manifest.jsonl")
    assert [(u.key, u.spk) for u in utts] == [
        ("103-1240-0000", "103"),
        ("103-1240-0001", "103"),
        ("1034-121119-0000", "1034"),
    ]
    assert utts[0].path == str(tmp_path / "ls" / "103" / "1240" / "103-1240-0000.flac")


def test_librispeech_shared_data(shared_data, tmp_path):
    src = shared_data / "librispeech-251"
    if not src.is_dir():
        pytest.skip(f"{src} not present")
    result = prepare_librispeech(src, tmp_path, fmt="csv")
    assert (result.utterances, result.speakers, result.skipped) == (251, 251, 0)
    assert 45 * 60 < result.seconds < 60 * 60  # README: 52 min
    assert validate_manifests([tmp_path / "manifest.csv"]).problems == []


def test_folder_without_librispeech_files_is_an_error(tmp_path):
    (tmp_path / "src").mkdir()
    with pytest.raises(DataError, match="no LibriSpeech files"):
        scan_librispeech(tmp_path / "src")
    with pytest.raises(DataError, match="folder not found"):
        scan_librispeech(tmp_path / "nope")


# ---- Common Voice
_CV_HEADER = "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccents\tlocale\tsegment\n"


def _cv_locale(root: Path, write_wav, validated: list[tuple[str, str]], other: list[tuple[str, str]] = ()) -> Path:
    for name, rows in (("validated.tsv", validated), ("other.tsv", other)):
        lines = [f'{spk}\t{clip}\t"quoted" sentence\t2\t0\t\t\t\txx\t\n' for spk, clip in rows]
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(_CV_HEADER + "".join(lines))
    for _spk, clip in list(validated) + list(other):
        if clip == "missing.wav":
            continue
        if clip.endswith(".wav"):
            write_wav(root / "clips" / clip, seconds=0.25)
        else:  # an mp3 name: only its existence matters (read with durations=False)
            path = root / "clips" / (clip if clip.endswith(".mp3") else clip + ".mp3")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"ID3")
    return root


def test_commonvoice_client_id_is_the_speaker_and_other_tsv_is_optional(tmp_path, write_wav):
    loc = _cv_locale(
        tmp_path / "cv" / "xx",
        write_wav,
        validated=[("aaa", "c1.wav"), ("bbb", "c2.wav"), ("aaa", "missing.wav")],
        other=[("aaa", "c1.wav"), ("ccc", "c3.wav")],
    )
    only_validated = scan_commonvoice(loc)
    assert [(u.key, u.spk) for u in only_validated] == [("c1", "aaa"), ("c2", "bbb")]
    result = prepare_commonvoice(loc, tmp_path / "out", include_other=True, speaker_prefix="cv-")
    assert (result.utterances, result.speakers, result.skipped) == (3, 3, 1)  # c1 once; missing clip skipped
    utts = read_manifest(tmp_path / "out" / "manifest.jsonl")
    assert [(u.key, u.spk, u.duration) for u in utts] == [
        ("c1", "cv-aaa", 0.25),
        ("c2", "cv-bbb", 0.25),
        ("c3", "cv-ccc", 0.25),
    ]


def test_commonvoice_folder_of_locales_and_clips_listed_without_extension(tmp_path, write_wav):
    _cv_locale(tmp_path / "cv" / "aa", write_wav, validated=[("s1", "common_voice_aa_1")])
    _cv_locale(tmp_path / "cv" / "bb", write_wav, validated=[("s1", "common_voice_bb_1.mp3")])
    utts = scan_commonvoice(tmp_path / "cv", durations=False)
    assert [(u.key, Path(u.path).name, u.spk) for u in utts] == [
        ("common_voice_aa_1", "common_voice_aa_1.mp3", "s1"),
        ("common_voice_bb_1", "common_voice_bb_1.mp3", "s1"),
    ]


def test_commonvoice_without_validated_tsv_is_an_error(tmp_path):
    (tmp_path / "cv").mkdir()
    with pytest.raises(DataError, match="no validated.tsv"):
        scan_commonvoice(tmp_path / "cv")


def test_commonvoice_shared_persian_and_multilingual(shared_data, tmp_path):
    fa, multi = shared_data / "commonvoice-fa", shared_data / "commonvoice-multi"
    if not fa.is_dir() or not multi.is_dir():
        pytest.skip("commonvoice-fa or commonvoice-multi not present in the shared data")
    validated = scan_commonvoice(fa, durations=False)
    everything = scan_commonvoice(fa, include_other=True, durations=False)
    assert len(validated) == 83
    assert len(everything) > 2000 and len({u.spk for u in everything}) >= 35  # README: 2,188 clips, 42 client_ids
    assert len({u.key for u in everything}) == len(everything)
    result = prepare_commonvoice(multi, tmp_path, durations=False)
    assert result.utterances >= 2900 and result.speakers > 118  # 30 locales x ~100 clips


# ---- VoxCeleb
def test_voxceleb_keys_are_the_trial_list_paths(tmp_path, write_wav):
    write_wav("vox/wav/id10001/1zcIwhmdeo4/00001.wav", seconds=0.5)
    write_wav("vox/wav/id10001/7w0IBEWc9Qw/00002.wav", seconds=0.5)
    write_wav("vox/wav/id10270/x6uYqmx31kE/00001.wav", seconds=0.5)
    write_wav("vox/wav/stray.wav", seconds=0.5)
    result = prepare_voxceleb(tmp_path / "vox", tmp_path / "out", fmt="csv")
    assert (result.utterances, result.speakers, result.skipped) == (3, 2, 1)
    utts = read_manifest(tmp_path / "out" / "manifest.csv")
    assert [(u.key, u.spk) for u in utts] == [
        ("id10001/1zcIwhmdeo4/00001.wav", "id10001"),
        ("id10001/7w0IBEWc9Qw/00002.wav", "id10001"),
        ("id10270/x6uYqmx31kE/00001.wav", "id10270"),
    ]


def test_voxceleb2_m4a_only_asks_for_conversion(tmp_path):
    (tmp_path / "vox2" / "id00012" / "abc").mkdir(parents=True)
    (tmp_path / "vox2" / "id00012" / "abc" / "00001.m4a").write_bytes(b"\0" * 16)
    with pytest.raises(DataError, match="convert them to wav"):
        scan_voxceleb(tmp_path / "vox2")


# ---- CN-Celeb
def test_cnceleb_train_eval_and_trials(tmp_path, write_wav):
    root = tmp_path / "CN-Celeb_flac"
    for spk in ("id00000", "id00001", "id00800"):
        write_wav(root / "data" / spk / "singing-01-001.flac", seconds=0.25)
        write_wav(root / "data" / spk / "speech-02-003.flac", seconds=0.25)
    (root / "dev").mkdir()
    (root / "dev" / "dev.lst").write_text("id00000\nid00001\n")
    write_wav(root / "eval" / "enroll" / "id00800-enroll.flac", seconds=0.5)
    write_wav(root / "eval" / "test" / "id00800-singing-01-001.flac", seconds=0.25)
    write_wav(root / "eval" / "test" / "id00801-vlog-01-002.flac", seconds=0.25)
    (root / "eval" / "lists").mkdir()
    (root / "eval" / "lists" / "trials.lst").write_text(
        "id00800-enroll test/id00800-singing-01-001.wav 1\nid00800-enroll test/id00801-vlog-01-002.wav 0\n"
    )
    result = prepare_cnceleb(tmp_path, tmp_path / "out")
    assert result.trials == 2 and result.skipped == 0
    train = read_manifest(tmp_path / "out" / "train.jsonl")
    assert [(u.key, u.spk) for u in train] == [
        ("id00000-singing-01-001", "id00000"),
        ("id00000-speech-02-003", "id00000"),
        ("id00001-singing-01-001", "id00001"),
        ("id00001-speech-02-003", "id00001"),
    ]
    enroll = read_manifest(tmp_path / "out" / "enroll.jsonl")
    test = read_manifest(tmp_path / "out" / "test.jsonl")
    assert [(u.key, u.spk) for u in enroll] == [("id00800-enroll", "id00800")]
    assert [u.key for u in test] == ["id00800-singing-01-001", "id00801-vlog-01-002"]
    assert (tmp_path / "out" / "trials.txt").read_text() == (
        "1 id00800-enroll id00800-singing-01-001\n0 id00800-enroll id00801-vlog-01-002\n"
    )


def test_cnceleb_without_speaker_list_keeps_eval_speakers_out_of_training(tmp_path, write_wav):
    root = tmp_path / "cn"
    write_wav(root / "data" / "id00000" / "a-01-001.wav", seconds=0.25)
    write_wav(root / "data" / "id00800" / "a-01-001.wav", seconds=0.25)
    write_wav(root / "eval" / "enroll" / "id00800-enroll.wav", seconds=0.25)
    result = prepare_cnceleb(root, tmp_path / "out", durations=False)
    assert [u.spk for u in read_manifest(tmp_path / "out" / "train.jsonl")] == ["id00000"]
    assert result.seconds is None and "trials" not in result.outputs


# ---- synthetic corpus
def test_synthetic_corpus_is_fast_deterministic_and_valid(tmp_path):
    t0 = time.perf_counter()
    utts = make_synthetic_corpus(tmp_path / "a", n_speakers=8, utts_per_speaker=4, seconds=2.0, seed=3)
    elapsed = time.perf_counter() - t0
    assert elapsed < 2.0, f"8 x 4 x 2 s took {elapsed:.2f} s; it is meant to take a fraction of a second"
    assert len(utts) == 32 and len({u.spk for u in utts}) == 8
    assert read_manifest(tmp_path / "a" / "manifest.jsonl") == [
        Utterance(u.key, u.path, u.spk, duration=2.0, source=str(tmp_path / "a" / "manifest.jsonl"), line=i + 1)
        for i, u in enumerate(utts)
    ]
    assert validate_manifests([tmp_path / "a" / "manifest.jsonl"], deep=True).problems == []
    again = make_synthetic_corpus(tmp_path / "b", n_speakers=2, utts_per_speaker=1, seconds=2.0, seed=3)
    other = make_synthetic_corpus(tmp_path / "c", n_speakers=1, utts_per_speaker=1, seconds=2.0, seed=4)
    first = sf.read(utts[0].path)[0]
    assert np.array_equal(first, sf.read(again[0].path)[0])  # speaker i's voice does not depend on n_speakers
    assert not np.allclose(first, sf.read(other[0].path)[0])
    info = sf.info(utts[0].path)
    assert (info.samplerate, info.channels, info.frames) == (16000, 1, 32000)
    assert 0.01 < np.sqrt(np.mean(first**2)) < 0.2 and np.abs(first).max() < 1.0


def _long_term_spectrum(path: str) -> np.ndarray:
    wav, sr = sf.read(path)
    frames = np.lib.stride_tricks.sliding_window_view(wav, 400)[::160] * np.hamming(400)
    power = np.abs(np.fft.rfft(frames, 512)) ** 2
    loud = power[power.sum(1) > np.median(power.sum(1))]
    bands = np.log(np.stack([b.mean(1) for b in np.array_split(loud, 32, axis=1)], 1) + 1e-10).mean(0)
    return bands - bands.mean()  # gain does not identify a speaker


def _median_f0(path: str) -> float:
    """Autocorrelation pitch of the loud frames, 60-400 Hz."""
    wav, sr = sf.read(path)
    frames = np.lib.stride_tricks.sliding_window_view(wav, 640)[::160]
    frames = frames[(frames**2).sum(1) > np.median((frames**2).sum(1))]
    spec = np.fft.rfft(frames - frames.mean(1, keepdims=True), 2048)
    ac = np.fft.irfft(np.abs(spec) ** 2, 2048)[:, sr // 400 : sr // 60]
    return float(np.median(sr / (np.argmax(ac, axis=1) + sr // 400)))


def _within_over_between(feats: np.ndarray, spk: np.ndarray) -> float:
    dist = np.linalg.norm(feats[:, None] - feats[None], axis=-1)
    same = (spk[:, None] == spk[None]) & ~np.eye(len(spk), dtype=bool)
    return float(dist[same].mean() / dist[spk[:, None] != spk[None]].mean())


def test_synthetic_speakers_differ_more_between_than_within(tmp_path):
    utts = make_synthetic_corpus(tmp_path, n_speakers=6, utts_per_speaker=3, seconds=1.5, seed=1)
    spk = np.array([u.spk for u in utts])
    log_f0 = np.log([_median_f0(u.path) for u in utts]).reshape(6, 3)
    assert log_f0.std(axis=1).mean() < 0.1  # each voice keeps its own pitch (within ~2 semitones)...
    assert np.exp(np.ptp(np.median(log_f0, axis=1))) > 1.5  # ...and voices span a wide range
    spectra = np.stack([_long_term_spectrum(u.path) for u in utts])
    assert _within_over_between(spectra, spk) < 0.8  # timbre, despite random vowel content


def test_synthetic_corpus_can_write_csv_and_kaldi(tmp_path):
    make_synthetic_corpus(tmp_path / "c", n_speakers=2, utts_per_speaker=1, seconds=0.5, manifest_name="m.csv")
    make_synthetic_corpus(tmp_path / "k", n_speakers=2, utts_per_speaker=1, seconds=0.5, manifest_name="data")
    csv_rows, kaldi_rows = read_manifest(tmp_path / "c" / "m.csv"), read_manifest(tmp_path / "k" / "data")
    assert [(u.key, u.spk, u.duration) for u in csv_rows] == [(u.key, u.spk, u.duration) for u in kaldi_rows]
    assert (tmp_path / "c" / "m.csv").read_text().splitlines()[1] == "spk00-000,0.5,wav/spk00/spk00-000.wav,,,spk00"


# ---- trials
def _fake_utts(spk_sizes: dict[str, int]) -> list[Utterance]:
    return [Utterance(f"{s}-{i}", f"/x/{s}-{i}.wav", s) for s, n in spk_sizes.items() for i in range(n)]


def test_trials_are_balanced_distinct_correctly_labelled_and_seeded():
    utts = _fake_utts({f"s{i}": 10 for i in range(20)})
    spk = {u.key: u.spk for u in utts}
    trials = make_trials(utts, 1000, seed=5)
    assert len(trials) == 1000 and sum(t[0] for t in trials) == 500
    assert len({frozenset((a, b)) for _, a, b in trials}) == 1000 and all(a != b for _, a, b in trials)
    assert all(label == int(spk[a] == spk[b]) for label, a, b in trials)
    assert make_trials(utts, 1000, seed=5) == trials and make_trials(utts, 1000, seed=6) != trials


def test_trials_use_every_pair_when_fewer_exist_than_asked():
    utts = _fake_utts({"a": 3, "b": 2})  # 3 + 1 target pairs, 6 nontarget pairs
    trials = make_trials(utts, 100, seed=0)
    assert sum(t[0] for t in trials) == 4 and len(trials) == 10
    with pytest.raises(DataError, match="at least two speakers"):
        make_trials(_fake_utts({"a": 5}), 10)


def test_write_trials_voxceleb_format(tmp_path):
    write_trials(tmp_path / "t.txt", [(1, "a", "b"), (0, "a", "c")])
    assert (tmp_path / "t.txt").read_text() == "1 a b\n0 a c\n"
    with pytest.raises(DataError, match="whitespace"):
        write_trials(tmp_path / "t.txt", [(1, "a b", "c")])


# ---- the command
def test_prepare_command_writes_manifests_and_reports_counts(tmp_path, write_wav, capsys):
    write_wav("ls/19-198-0001.flac", seconds=0.5)
    assert (
        main(
            [
                "prepare",
                "librispeech",
                str(tmp_path / "ls"),
                "--out",
                str(tmp_path / "o1"),
                "--format",
                "csv",
                "--speaker-prefix",
                "ls-",
            ]
        )
        == 0
    )
    assert "librispeech: 1 utterances, 1 speakers" in capsys.readouterr().out
    assert read_manifest(tmp_path / "o1" / "manifest.csv")[0].spk == "ls-19"

    assert (
        main(
            [
                "prepare",
                "synthetic",
                "--out",
                str(tmp_path / "o2"),
                "--speakers",
                "3",
                "--utts-per-speaker",
                "2",
                "--seconds",
                "0.5",
                "--trials",
                "6",
            ]
        )
        == 0
    )
    assert len(read_manifest(tmp_path / "o2" / "manifest.jsonl")) == 6
    lines = (tmp_path / "o2" / "trials.txt").read_text().splitlines()
    assert len(lines) == 6 and sum(line.startswith("1 ") for line in lines) == 3


def test_prepare_command_on_a_missing_folder_exits_2(tmp_path, capsys):
    assert main(["prepare", "voxceleb", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "VoxCeleb folder not found" in capsys.readouterr().err
