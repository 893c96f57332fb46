"""Manifest reading and writing: 3D-Speaker CSV, Kaldi data dirs, JSON Lines; errors that name file:line."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import pytest

from speakerforge.data.manifest import Utterance, read_manifest, write_manifest
from speakerforge.errors import DataError


def _plain(utts: list[Utterance]) -> list[Utterance]:
    """Drop where a row came from, to compare content across formats."""
    return [replace(u, source="", line=0) for u in utts]


# ---- 3D-Speaker CSV
def test_csv_reads_3dspeaker_chunks_in_seconds_with_dur_as_file_length(tmp_path):
    # As 3D-Speaker's prepare_data_csv.py writes them: dur is the file's length, start/stop seconds of a chunk.
    (tmp_path / "m.csv").write_text(
        "ID,dur,path,start,stop,spk\n"
        "a_0.0_4.0,6.5,wav/a.wav,0.0,4.0,s1\n"
        "a_4.0_6.5,6.5,wav/a.wav,4.0,6.5,s1\n"
        "b,2.25,/abs/b.wav,,,s2\n"
    )
    utts = read_manifest(tmp_path / "m.csv")
    assert [u.key for u in utts] == ["a_0.0_4.0", "a_4.0_6.5", "b"]
    assert utts[0].path == str(tmp_path / "wav" / "a.wav")
    assert (utts[1].start, utts[1].end, utts[1].duration) == (4.0, 6.5, 2.5)
    assert (utts[2].path, utts[2].start, utts[2].end, utts[2].duration) == ("/abs/b.wav", None, None, 2.25)
    assert (utts[1].source, utts[1].line, utts[1].spk) == (str(tmp_path / "m.csv"), 3, "s1")


def test_csv_header_without_required_columns_names_line_1(tmp_path):
    (tmp_path / "m.csv").write_text("ID,dur,path\nu1,1.0,a.wav\n")
    with pytest.raises(DataError, match=r"m\.csv:1: header lacks column\(s\) spk"):
        read_manifest(tmp_path / "m.csv")


def test_csv_row_with_missing_fields_names_its_line(tmp_path):
    (tmp_path / "m.csv").write_text("ID,dur,path,start,stop,spk\nu1,1.0,a.wav,,,s\nu2,1.0,b.wav\n")
    with pytest.raises(DataError, match=r"m\.csv:3: 3 fields but the header has 6"):
        read_manifest(tmp_path / "m.csv")


def test_csv_bad_number_and_reversed_segment_are_row_errors(tmp_path):
    (tmp_path / "m.csv").write_text("ID,dur,path,start,stop,spk\nu1,one,a.wav,,,s\nu2,,a.wav,3,2,s\nu3,,a.wav,nan,,s\n")
    problems: list[str] = []
    assert read_manifest(tmp_path / "m.csv", problems=problems) == []
    assert [p.split(": ", 1)[0] for p in problems] == [f"{tmp_path / 'm.csv'}:{n}" for n in (2, 3, 4)]
    assert "dur must be a number of seconds, got 'one'" in problems[0]
    assert "segment is empty or ends before it starts" in problems[1]
    assert "finite" in problems[2]


def test_empty_csv_manifest_is_an_error_naming_the_file(tmp_path):
    (tmp_path / "m.csv").write_text("")
    with pytest.raises(DataError, match=r"m\.csv:1: empty manifest"):
        read_manifest(tmp_path / "m.csv")


def test_csv_written_by_us_is_read_by_a_3dspeaker_style_dictreader(tmp_path):
    utts = [Utterance("u1", str(tmp_path / "a.wav"), "s1", 0.5, 1.75, 1.25), Utterance("u2", "/x/b.wav", "s2")]
    write_manifest(utts, tmp_path / "m.csv")
    with open(tmp_path / "m.csv", newline="") as f:  # speakerlab.utils.fileio.load_data_csv reads it this way
        rows = {r.pop("ID"): r for r in csv.DictReader(f, skipinitialspace=True)}
    assert rows["u1"] == {"dur": "1.25", "path": "a.wav", "start": "0.5", "stop": "1.75", "spk": "s1"}
    assert rows["u2"] == {"dur": "", "path": "/x/b.wav", "start": "", "stop": "", "spk": "s2"}


# ---- JSON Lines
def test_jsonl_reads_optional_fields_and_resolves_relative_paths(tmp_path):
    lines = [
        {"key": "a", "wav": "x/a.wav", "spk": "s1"},
        {"key": "b", "wav": "b.flac", "spk": 7, "start": 1, "end": 2.5},
        {"key": "c", "wav": "c.wav", "dur": "3.0"},
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    a, b, c = read_manifest(tmp_path / "m.jsonl")
    assert a == Utterance("a", str(tmp_path / "x" / "a.wav"), "s1", source=str(tmp_path / "m.jsonl"), line=1)
    assert (b.spk, b.start, b.end, b.duration) == ("7", 1.0, 2.5, 1.5)
    assert (c.spk, c.duration) == (None, 3.0)


def test_jsonl_bad_json_and_missing_fields_name_their_lines(tmp_path):
    (tmp_path / "m.jsonl").write_text(
        '{"key": "a", "wav": "a.wav", "spk": "s"}\n{"key": "b", \n{"wav": "c.wav"}\n[1]\n'
    )
    problems: list[str] = []
    utts = read_manifest(tmp_path / "m.jsonl", problems=problems)
    assert [u.key for u in utts] == ["a"]
    path = tmp_path / "m.jsonl"
    assert problems[0].startswith(f"{path}:2: bad JSON")
    assert problems[1].startswith(f"{path}:3: missing or empty field(s) key")
    assert problems[2].startswith(f"{path}:4: expected a JSON object")
    with pytest.raises(DataError, match=r"m\.jsonl:2: bad JSON"):
        read_manifest(path)


def test_json_array_file_gets_a_jsonl_hint(tmp_path):
    (tmp_path / "m.json").write_text('[{"key": "a",\n "wav": "a.wav"}]\n')
    with pytest.raises(DataError, match=r"m\.json:1: a JSON array; expected JSON Lines"):
        read_manifest(tmp_path / "m.json")


def test_duplicate_keys_raise_naming_both_lines(tmp_path):
    (tmp_path / "m.jsonl").write_text(
        '{"key": "a", "wav": "a.wav"}\n{"key": "b", "wav": "b.wav"}\n{"key": "a", "wav": "c.wav"}\n'
    )
    with pytest.raises(DataError, match=r"m\.jsonl:3: duplicate ID 'a' \(first defined at .*m\.jsonl:1\)"):
        read_manifest(tmp_path / "m.jsonl")


def test_unknown_and_missing_manifests_are_clear_errors(tmp_path):
    (tmp_path / "m.txt").write_text("a a.wav\n")
    with pytest.raises(DataError, match="unknown manifest format '.txt'"):
        read_manifest(tmp_path / "m.txt")
    with pytest.raises(DataError, match="manifest not found"):
        read_manifest(tmp_path / "nope.csv")


# ---- Kaldi data dirs
def _kaldi(folder: Path, **files: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def test_kaldi_dir_with_wav_scp_utt2spk_and_utt2dur(tmp_path):
    d = _kaldi(
        tmp_path / "data",
        **{"wav.scp": "u1 /abs/u1.wav\nu2 rel/u2.flac\n", "utt2spk": "u1 s1\nu2 s2\n", "utt2dur": "u1 1.5\nu2 2\n"},
    )
    u1, u2 = read_manifest(d)
    assert u1 == Utterance("u1", "/abs/u1.wav", "s1", duration=1.5, source=str(d / "wav.scp"), line=1)
    assert (u2.path, u2.spk, u2.duration) == (str(d / "rel" / "u2.flac"), "s2", 2.0)


def test_kaldi_segments_define_the_utterances(tmp_path):
    d = _kaldi(
        tmp_path / "data",
        **{
            "wav.scp": "rec1 rec1.wav\n",
            "utt2spk": "seg1 s1\nseg2 s1\nseg3 s1\n",
            "segments": "seg1 rec1 0.00 1.20\nseg2 rec1 1.20 -1\nseg3 rec1 0 -1\n",
        },
    )
    seg1, seg2, seg3 = read_manifest(d)
    assert (seg1.key, seg1.path, seg1.start, seg1.end, seg1.duration) == ("seg1", str(d / "rec1.wav"), 0.0, 1.2, 1.2)
    assert (seg2.start, seg2.end, seg2.duration, seg2.line) == (1.2, None, None, 2)
    assert (seg3.start, seg3.end) == (None, None)  # `0 -1` is the whole recording
    assert seg1.source == str(d / "segments")


def test_kaldi_pipe_command_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "ran"
    d = _kaldi(tmp_path / "data", **{"wav.scp": f"u1 a.wav\nu2 touch {marker} |\n", "utt2spk": "u1 s\nu2 s\n"})
    with pytest.raises(DataError, match=r"wav\.scp:2: Kaldi pipe commands are not supported"):
        read_manifest(d)
    assert not marker.exists()


def test_kaldi_missing_utt2spk_entry_and_unknown_recording_name_lines(tmp_path):
    d = _kaldi(
        tmp_path / "data",
        **{"wav.scp": "r1 r1.wav\n", "utt2spk": "a s\nghost s\n", "segments": "a r1 0 1\nb r1 1 2\nc r9 0 1\n"},
    )
    problems: list[str] = []
    utts = read_manifest(d, problems=problems)
    assert [u.key for u in utts] == ["a", "b"]
    assert f"{d / 'segments'}:3: recording 'r9' is not in wav.scp" in problems
    assert f"{d / 'utt2spk'}:2: utterance 'ghost' has a speaker but no audio (not in wav.scp/segments)" in problems
    assert f"{d / 'segments'}:2: no speaker for 'b' in utt2spk" in problems


def test_kaldi_dir_without_utt2spk_is_an_error(tmp_path):
    d = _kaldi(tmp_path / "data", **{"wav.scp": "u a.wav\n"})
    with pytest.raises(DataError, match="utt2spk: missing"):
        read_manifest(d)


# ---- writing
@pytest.mark.parametrize("name", ["m.csv", "m.jsonl", "kaldi_dir"])
def test_write_then_read_round_trips(tmp_path, name):
    utts = [
        Utterance("a", str(tmp_path / "wav" / "a.wav"), "s1", duration=2.0),
        Utterance("b", str(tmp_path / "wav" / "b.wav"), "s2", 0.25, 1.5, 1.25),
        Utterance("c", "/elsewhere/c.wav", "s2", 1.0, 3.0, 2.0),
    ]
    out = write_manifest(utts, tmp_path / name)
    back = read_manifest(out)
    assert _plain(sorted(back, key=lambda u: u.key)) == utts
    assert not list(tmp_path.rglob(".*.tmp"))


def test_written_paths_are_relative_inside_the_manifest_folder(tmp_path):
    utts = [Utterance("a", str(tmp_path / "wav" / "a.wav"), "s"), Utterance("b", "/elsewhere/b.wav", "s")]
    write_manifest(utts, tmp_path / "m.jsonl")
    rows = [json.loads(x) for x in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [r["wav"] for r in rows] == ["wav/a.wav", "/elsewhere/b.wav"]
    write_manifest(utts, tmp_path / "data")  # the audio is outside data/: absolute paths
    assert (tmp_path / "data" / "wav.scp").read_text() == f"a {tmp_path / 'wav' / 'a.wav'}\nb /elsewhere/b.wav\n"


def test_kaldi_write_refuses_keys_with_spaces(tmp_path):
    with pytest.raises(DataError, match="contains whitespace"):
        write_manifest([Utterance("a b", "/x.wav", "s")], tmp_path / "data")


def test_write_refuses_unknown_extension(tmp_path):
    with pytest.raises(DataError, match="cannot tell the manifest format"):
        write_manifest([Utterance("a", "/x.wav", "s")], tmp_path / "m.txt")


def test_csv_saved_by_a_spreadsheet_with_a_bom_reads(tmp_path):
    (tmp_path / "m.csv").write_bytes("ID,dur,path,start,stop,spk\nu1,1.0,a.wav,,,s\n".encode("utf-8-sig"))
    assert [u.key for u in read_manifest(tmp_path / "m.csv")] == ["u1"]


def test_non_utf8_manifest_names_the_line(tmp_path):
    (tmp_path / "m.jsonl").write_bytes(b'{"key": "a", "wav": "a.wav"}\n\xff\xfe\x00binary\n')
    with pytest.raises(DataError, match=r"m\.jsonl:2: not UTF-8 text"):
        read_manifest(tmp_path / "m.jsonl")
