"""ONNX export: every family, with and without fbank in the graph, matches PyTorch at lengths it was not traced at."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import speakerforge.export as export_mod
from speakerforge.cli import main
from speakerforge.export import EXAMPLE_FRAMES, ExportError, export_onnx
from speakerforge.inference import load_model
from tests.test_inference import FEATURES, make_model_file, noise, one_thread  # noqa: F401 (autouse fixture)

FAMILIES = ["ecapa_tdnn", "campplus", "eres2net", "resnet34"]


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("export_models")
    return {name: make_model_file(folder / f"{name}.safetensors", name) for name in FAMILIES}


@pytest.mark.parametrize("with_fbank", [False, True], ids=["fbank_input", "waveform_input"])
@pytest.mark.parametrize("name", FAMILIES)
def test_onnx_matches_pytorch_at_lengths_other_than_the_traced_one(
    model_files, tmp_path: Path, name: str, with_fbank: bool
):
    out = tmp_path / f"{name}.onnx"
    report = export_onnx(model_files[name], out, with_fbank=with_fbank)
    assert report.worst < 1e-5 and len(report.max_abs_diff) == 2
    assert EXAMPLE_FRAMES not in report.max_abs_diff

    torch_model, onnx_model = load_model(model_files[name]), load_model(out)
    # batch of two equal lengths and singletons, all different from the export example (4 s)
    wavs = [noise(1.37, 1), noise(1.37, 2), noise(5.03, 3), noise(0.61, 4)]
    ref = torch_model.embed_batch(wavs)
    got = onnx_model.embed_batch(wavs)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * max(1.0, np.abs(ref).max()))


def test_metadata_records_dimension_features_and_whether_fbank_is_inside(model_files, tmp_path: Path):
    for with_fbank in (False, True):
        out = tmp_path / f"m{int(with_fbank)}.onnx"
        export_onnx(model_files["campplus"], out, with_fbank=with_fbank)
        proto = onnx.load(str(out))
        props = {p.key: p.value for p in proto.metadata_props}
        meta = json.loads(props["speakerforge"])
        assert meta["with_fbank"] is with_fbank and props["with_fbank"] == str(with_fbank).lower()
        assert meta["embedding_dim"] == 32 and props["embedding_dim"] == "32"
        assert meta["features"] == FEATURES and meta["model"]["name"] == "campplus"
        inp = proto.graph.input[0]
        assert inp.name == ("waveform" if with_fbank else "feats")
        dims = inp.type.tensor_type.shape.dim
        assert [d.dim_param for d in dims[:2]] == ["batch", "time"]  # dynamic batch and time


def test_threshold_of_the_model_file_travels_into_the_onnx_model(tmp_path: Path):
    src = make_model_file(tmp_path / "t.safetensors", extra_meta={"threshold": 0.42})
    export_onnx(src, tmp_path / "t.onnx")
    assert load_model(tmp_path / "t.onnx").threshold == pytest.approx(0.42)


def test_a_graph_that_does_not_match_pytorch_is_refused_and_no_file_is_left(model_files, tmp_path: Path, monkeypatch):
    real = export_mod._reference
    monkeypatch.setattr(export_mod, "_reference", lambda *a: real(*a) + 1e-3)
    out = tmp_path / "bad.onnx"
    with pytest.raises(ExportError, match="does not match PyTorch"):
        export_onnx(model_files["ecapa_tdnn"], out)
    assert list(tmp_path.iterdir()) == []


def test_export_command_prints_parity_and_refuses_onnx_input(model_files, tmp_path: Path, capsys):
    out = tmp_path / "c.onnx"
    assert main(["export", "--model", str(model_files["resnet34"]), "--onnx", str(out), "--with-fbank"]) == 0
    printed = capsys.readouterr().out
    assert "max |diff|" in printed and "waveform input" in printed
    code = main(["export", "--model", str(out), "--onnx", str(tmp_path / "again.onnx")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len([e for e in err if "error:" in e]) == 1 and "already an ONNX model" in err[-1]
    assert not (tmp_path / "again.onnx").exists()


def test_the_graphs_fbank_is_the_features_modules_fbank():
    """The in-graph fbank is rebuilt from the features module's pieces; it must give `fbank` + `mean_normalize`."""
    from speakerforge.data.features import fbank, mean_normalize

    frontend = export_mod._WaveToEmbedding(torch.nn.Identity(), FEATURES)
    wave = torch.from_numpy(np.stack([noise(1.234, 1), noise(1.234, 2)]))
    expected = mean_normalize(fbank(wave))
    got = frontend(wave)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
