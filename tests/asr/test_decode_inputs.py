"""`asr decode --data`: JSONL lists, audio files and folders of them, recognised by content."""

from __future__ import annotations

import pytest

from speakerforge.asr.data import read_decode_inputs
from speakerforge.asr.trainer import AsrTrainer
from speakerforge.cli import main
from speakerforge.errors import DataError
from speakerforge.train.trainer import RunOptions
from tests.asr.helpers import tiny_config, write_tone_corpus


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("asr")
    data = write_tone_corpus(root / "c", ["ab cd", "bad cab", "dab", "ace bed"])
    exp = root / "exp"
    AsrTrainer(tiny_config(data), exp, RunOptions()).run()
    return exp, root / "c"


def test_decode_takes_wav_files_folders_and_jsonl(trained, capsys):
    """[new-user] 4: `asr decode --data file.wav` ended in a UnicodeDecodeError traceback."""
    exp, corpus = trained
    wav = corpus / "u0.wav"
    assert main(["--quiet", "asr", "decode", "--model", str(exp), "--data", str(wav)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith("u0\t")
    assert main(["--quiet", "asr", "decode", "--model", str(exp), "--data", str(corpus)]) == 0
    keys = [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()]
    assert keys == ["u0", "u1", "u2", "u3"]
    assert main(["--quiet", "asr", "decode", "--model", str(exp), "--data", str(corpus / "train.jsonl")]) == 0
    by_jsonl = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in by_jsonl] == keys


def test_decode_refuses_what_is_neither_in_one_line(trained, tmp_path, capsys):
    exp, _ = trained
    blob = tmp_path / "x.wav"
    blob.write_bytes(b"\x00\x01\x02\xff" * 100)  # named .wav, not audio: soundfile's error, one line
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07\x12\x04test")
    for bad in (tmp_path / "model.onnx", tmp_path / "missing.jsonl"):
        assert main(["--quiet", "asr", "decode", "--model", str(exp), "--data", str(bad)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(bad) in err[0] and "Traceback" not in err[0]
    assert main(["--quiet", "asr", "decode", "--model", str(exp), "--data", str(blob)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "x.wav" in err[0]


def test_duplicate_keys_across_inputs_are_refused(tmp_path):
    for d in ("a", "b"):
        write_tone_corpus(tmp_path / d, ["ab"])
    with pytest.raises(DataError, match="key 'u0' also comes from"):
        read_decode_inputs([tmp_path / "a", tmp_path / "b"])
