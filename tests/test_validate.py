"""`validate`: every bad row reported as `file:line: what`, headers only unless deep, exit codes of the command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from speakerforge.cli import main
from speakerforge.data import validate as validate_mod
from speakerforge.data.audio import load_audio
from speakerforge.data.validate import validate_manifests


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _only_problem(report) -> str:
    assert len(report.problems) == 1, report.problems
    return report.problems[0]


def test_clean_manifest_has_no_problems_and_a_summary(synthetic_corpus):
    report = validate_manifests([synthetic_corpus])
    assert report.problems == [] and report.ok
    assert (report.rows, report.speakers) == (12, 4)
    assert report.seconds == pytest.approx(12.0)
    assert report.summary() == "1 manifest, 12 rows, 4 speakers, 0.00 hours, 0 problems"


def test_missing_audio_file_names_manifest_line(tmp_path, write_wav):
    write_wav("a.wav")
    m = _jsonl(
        tmp_path / "m.jsonl", [{"key": "a", "wav": "a.wav", "spk": "s"}, {"key": "b", "wav": "gone.wav", "spk": "s"}]
    )
    problem = _only_problem(validate_manifests([m]))
    assert problem == f"{m}:2: {tmp_path / 'gone.wav'}: audio file not found"


def test_empty_audio_file_names_manifest_line(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    m = _jsonl(tmp_path / "m.jsonl", [{"key": "a", "wav": "empty.wav", "spk": "s"}])
    problem = _only_problem(validate_manifests([m]))
    assert problem.startswith(f"{m}:1: ") and "empty (0 bytes)" in problem


def test_text_file_named_wav_names_manifest_line(tmp_path):
    (tmp_path / "fake.wav").write_text("this is not audio\n")
    m = _jsonl(tmp_path / "m.jsonl", [{"key": "a", "wav": "fake.wav", "spk": "s"}])
    problem = _only_problem(validate_manifests([m]))
    assert problem.startswith(f"{m}:1: {tmp_path / 'fake.wav'}: cannot decode audio")


def test_nan_samples_are_found_by_deep_only(tmp_path, write_wav):
    samples = np.zeros(16000, dtype=np.float32)
    samples[8000] = np.nan
    write_wav("nan.wav", samples=samples, subtype="FLOAT")
    m = _jsonl(tmp_path / "m.jsonl", [{"key": "a", "wav": "nan.wav", "spk": "s"}])
    assert validate_manifests([m]).problems == []
    problem = _only_problem(validate_manifests([m], deep=True))
    assert problem == f"{m}:1: {tmp_path / 'nan.wav'}: audio holds NaN or infinite samples (first at 0.500 s)"


@pytest.mark.parametrize("sr,channels", [(16000, 2), (8000, 1), (44100, 1), (44100, 2)])
def test_stereo_and_other_rates_are_fine_and_load_as_16k_mono(tmp_path, write_wav, sr, channels):
    path = write_wav("x.wav", seconds=0.5, sr=sr, channels=channels)
    m = _jsonl(tmp_path / "m.jsonl", [{"key": "a", "wav": "x.wav", "spk": "s", "dur": 0.5}])
    assert validate_manifests([m], deep=True).problems == []
    wav = load_audio(path)
    assert wav.ndim == 1 and wav.dtype == np.float32 and abs(wav.size - 8000) <= 1


def test_duplicate_ids_within_and_across_manifests_name_both_lines(tmp_path, write_wav):
    write_wav("a.wav")
    m1 = _jsonl(
        tmp_path / "m1.jsonl", [{"key": "a", "wav": "a.wav", "spk": "s"}, {"key": "a", "wav": "a.wav", "spk": "s"}]
    )
    (tmp_path / "m2.csv").write_text("ID,dur,path,start,stop,spk\nx,,a.wav,,,s\na,,a.wav,,,s\n")
    report = validate_manifests([m1, tmp_path / "m2.csv"])
    assert report.problems == [
        f"{m1}:2: duplicate ID 'a' (first defined at {m1}:1)",
        f"{tmp_path / 'm2.csv'}:3: duplicate ID 'a' (first defined at {m1}:1)",
    ]


def test_manifest_with_missing_columns_names_file_and_line(tmp_path, write_wav):
    write_wav("a.wav")
    (tmp_path / "rows.csv").write_text("ID,dur,path,start,stop,spk\na,,a.wav,,,s\nb,,a.wav\n")
    (tmp_path / "header.csv").write_text("ID,path\na,a.wav\n")
    report = validate_manifests([tmp_path / "rows.csv", tmp_path / "header.csv"])
    assert report.problems[0] == (
        f"{tmp_path / 'rows.csv'}:3: 3 fields but the header has 6 (ID,dur,path,start,stop,spk)"
    )
    assert report.problems[1].startswith(f"{tmp_path / 'header.csv'}:1: header lacks column(s) spk")
    assert len(report.problems) == 2 and report.rows == 1


def test_segments_past_the_end_of_the_file_name_the_segments_line(tmp_path, write_wav):
    write_wav("data/rec.wav", seconds=2.0)
    d = tmp_path / "data"
    (d / "wav.scp").write_text("rec rec.wav\n")
    (d / "utt2spk").write_text("ok s\nlate s\nover s\n")
    (d / "segments").write_text("ok rec 0.0 2.01\nlate rec 2.5 3.0\nover rec 1.0 2.5\n")
    report = validate_manifests([d])
    assert report.problems == [
        f"{d / 'segments'}:2: segment 'late' starts at 2.5 s, past the end of {d / 'rec.wav'} (2 s)",
        f"{d / 'segments'}:3: segment 'over' ends at 2.5 s, past the end of {d / 'rec.wav'} (2 s)",
    ]
    assert report.seconds == pytest.approx(2.0 + 1.0)  # what can actually be read: [0, 2) and [1, 2)


def test_kaldi_pipe_command_is_a_problem_and_is_not_run(tmp_path, write_wav):
    write_wav("data/a.wav")
    marker = tmp_path / "ran"
    d = tmp_path / "data"
    (d / "wav.scp").write_text(f"a a.wav\nb sox x.wav -t wav - | touch {marker} |\n")
    (d / "utt2spk").write_text("a s\nb s\n")
    report = validate_manifests([d])
    assert any(p.startswith(f"{d / 'wav.scp'}:2: Kaldi pipe commands are not supported") for p in report.problems)
    assert not marker.exists()


def test_missing_speaker_and_wrong_stated_duration_are_problems(tmp_path, write_wav):
    write_wav("a.wav", seconds=1.0)
    m = _jsonl(
        tmp_path / "m.jsonl", [{"key": "a", "wav": "a.wav"}, {"key": "b", "wav": "a.wav", "spk": "s", "dur": 3.0}]
    )
    assert validate_manifests([m]).problems == [
        f"{m}:1: no speaker for 'a'",
        f"{m}:2: manifest says 'b' lasts 3 s but {tmp_path / 'a.wav'} holds 1 s",
    ]


def test_every_problem_is_collected_not_just_the_first(tmp_path, write_wav):
    write_wav("a.wav")
    m = tmp_path / "m.jsonl"
    m.write_text(
        '{"key": "a", "wav": "a.wav", "spk": "s"}\nnot json\n{"key": "b", "wav": "no.wav", "spk": "s"}\n'
        '{"key": "c", "wav": "a.wav", "spk": "s", "start": -1}\n'
    )
    lines = [p.split(": ", 1)[0] for p in validate_manifests([m, tmp_path / "absent.jsonl"]).problems]
    assert lines == [f"{m}:2", f"{m}:4", str(tmp_path / "absent.jsonl"), f"{m}:3"]


def test_empty_manifest_is_a_problem(tmp_path):
    (tmp_path / "m.jsonl").write_text("")
    assert validate_manifests([tmp_path / "m.jsonl"]).problems == [f"{tmp_path / 'm.jsonl'}: manifest holds no rows"]


def test_headers_are_read_once_per_file(tmp_path, write_wav, monkeypatch):
    write_wav("long.wav", seconds=3.0)
    rows = [{"key": f"s{i}", "wav": "long.wav", "spk": "s", "start": i * 0.5, "end": i * 0.5 + 0.5} for i in range(6)]
    m = _jsonl(tmp_path / "m.jsonl", rows)
    calls = []
    real = validate_mod.audio_info
    monkeypatch.setattr(validate_mod, "audio_info", lambda p: calls.append(p) or real(p))
    report = validate_manifests([m])
    assert report.problems == [] and len(calls) == 1
    assert report.seconds == pytest.approx(3.0)


# ---- the command
def test_validate_command_exits_1_with_problems_and_0_when_clean(tmp_path, write_wav, capsys, synthetic_corpus):
    assert main(["validate", str(synthetic_corpus)]) == 0
    assert capsys.readouterr().out.strip().endswith("0 problems")

    write_wav("a.wav")
    m = _jsonl(tmp_path / "m.jsonl", [{"key": "a", "wav": "a.wav", "spk": "s"}, {"key": "b", "wav": "x.wav"}])
    assert main(["validate", str(m), "--deep"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == [f"{m}:2: no speaker for 'b'", f"{m}:2: {tmp_path / 'x.wav'}: audio file not found"]
    assert out[-1] == "1 manifest, 2 rows, 1 speaker, 0.00 hours, 2 problems"


def test_a_damaged_mp3_is_one_line_in_our_words_and_the_decoder_notes_stay_off_stderr(tmp_path, capfd):
    """[new-user] 13: `validate --deep` let libmpg123's "Note: Trying to resync..." through to stderr, and the error
    quoted libsndfile's "not a regular file (possibly a pipe?)" for a regular file."""
    import os

    from speakerforge.cli import main

    (tmp_path / "bad.mp3").write_bytes(b"ID3" + os.urandom(4000))
    (tmp_path / "m.jsonl").write_text('{"key": "a", "wav": "bad.mp3", "spk": "s"}\n')
    assert main(["--quiet", "validate", "--deep", str(tmp_path / "m.jsonl")]) == 1
    out, err = capfd.readouterr()
    text = out + err
    assert "damaged or not audio" in text and "possibly a pipe" not in text
    assert "resync" not in err and "Note:" not in err and "libmpg123" not in err
