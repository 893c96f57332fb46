"""Model paths are recognised by content: any file name works, and an unusable file is named for what it is."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import soundfile as sf
import torch

from speakerforge.artifacts import describe, list_checkpoints, sniff
from speakerforge.checkpoint_io import save_state
from speakerforge.cli import main
from speakerforge.errors import CheckpointError
from speakerforge.inference import load_model
from speakerforge.models import build_model
from speakerforge.models.modelfile import save_embedding_model
from speakerforge.train.init import read_init

ARGS = {"channels": 16, "embedding_dim": 8}


@pytest.fixture
def model_file(tmp_path):
    """A speakerforge model file with a name that says nothing about its format."""
    path = tmp_path / "cam.sf"
    save_embedding_model(path, build_model("ecapa_tdnn", **ARGS), "ecapa_tdnn", ARGS)
    return path


def _onnx_bytes() -> bytes:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    return helper.make_model(graph, producer_name="test").SerializeToString() if onnx else b""


def test_every_kind_is_recognised_whatever_the_file_is_called(tmp_path, model_file):
    from safetensors.torch import save_file

    files = {"model_file": model_file}
    files["checkpoint"] = tmp_path / "best.bin"
    save_state(files["checkpoint"], {"model": {"w": torch.zeros(2)}})
    files["torch_zip"] = tmp_path / "weights.safetensors"
    torch.save({"w": torch.zeros(2)}, files["torch_zip"])
    files["torch_pickle"] = tmp_path / "old.onnx"
    files["torch_pickle"].write_bytes(pickle.dumps({"w": [1.0]}, protocol=2))
    files["safetensors"] = tmp_path / "plain.pt"
    save_file({"w": torch.zeros(2)}, str(files["safetensors"]))
    files["onnx"] = tmp_path / "model.bin"
    files["onnx"].write_bytes(_onnx_bytes())
    files["audio"] = tmp_path / "model.safetensors"
    sf.write(str(files["audio"]), np.zeros(1600, dtype=np.float32), 16000, format="WAV")
    files["text"] = tmp_path / "config.ckpt"
    files["text"].write_text("model: {name: ecapa_tdnn}\n")
    files["empty"] = tmp_path / "empty.pt"
    files["empty"].write_bytes(b"")
    files["experiment"] = tmp_path
    for kind, path in files.items():
        assert sniff(path).kind == kind, path
    assert sniff(files["audio"]).describe() == "an audio file (WAV)"


def test_a_model_file_of_any_name_loads_everywhere_a_model_path_is_read(model_file, write_wav, capsys):
    model = load_model(model_file)
    assert model.kind == "model_file" and model.embed(write_wav("a.wav")).shape == (8,)
    assert read_init(model_file).backbone.keys() == build_model("ecapa_tdnn", **ARGS).state_dict().keys()
    assert describe(model_file)["model"]["name"] == "ecapa_tdnn"
    assert main(["inspect", str(model_file)]) == 0
    assert main(["verify", "--model", str(model_file), str(write_wav("a.wav")), str(write_wav("b.wav", 1.5))]) == 0
    assert "score" in capsys.readouterr().out


def test_convert_output_with_any_name_is_accepted_by_finetune_init_and_load_model(tmp_path):
    dtdnn = pytest.importorskip("speakerlab.models.campplus.DTDNN")
    src = dtdnn.CAMPPlus(feat_dim=80, embedding_size=16)
    torch.save(src.state_dict(), tmp_path / "campplus.bin")
    out = tmp_path / "cam.sf"
    assert main(["convert", "--from", "3dspeaker", "--arch", "campplus", "--set", "model.args.embedding_dim=16",
                 str(tmp_path / "campplus.bin"), str(out)]) == 0  # fmt: skip
    assert load_model(out).embedding_dim == 16
    assert len(read_init(out).backbone) == len(src.state_dict())


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("wav", r"an audio file \(WAV\), not an experiment folder"),
        ("zip", r"a PyTorch checkpoint \(torch.save zip archive\).*speakerforge convert --from 3dspeaker"),
        (
            "text",
            r"a text file \(named .safetensors like a safetensors file, but not one: truncated or corrupt\?\), not",
        ),
    ],
)
def test_an_unusable_file_is_named_for_what_it_is(tmp_path, kind, expected):
    path = tmp_path / "model.safetensors"
    if kind == "wav":
        sf.write(str(path), np.zeros(1600, dtype=np.float32), 16000, format="WAV")
    elif kind == "zip":
        torch.save({"w": torch.zeros(2)}, path)
    else:
        path.write_text("hello\n")
    with pytest.raises(CheckpointError, match=expected):
        load_model(path)


def test_finetune_init_tells_a_foreign_layout_by_its_keys_or_says_what_fits_nothing(tmp_path, model_file):
    """[new-user] 10: `--init-format auto` did not recognise a plain 3D-Speaker state dict."""
    from speakerforge.train.init import apply_init
    from speakerforge.train.objectives import SupervisedModule

    dtdnn = pytest.importorskip("speakerlab.models.campplus.DTDNN")
    torch.save(dtdnn.CAMPPlus(feat_dim=80, embedding_size=16).state_dict(), tmp_path / "campplus.bin")
    init = read_init(tmp_path / "campplus.bin")
    assert init.layout == "auto"
    module = SupervisedModule(build_model("campplus", embedding_dim=16), 4)
    apply_init(module, init, "auto", "campplus", False, False, None)
    assert torch.equal(module.backbone.state_dict()["head.conv1.weight"], init.backbone["head.conv1.weight"])
    wrong = SupervisedModule(build_model("ecapa_tdnn", **ARGS), 4)
    with pytest.raises(CheckpointError, match=r"fits neither the 3D-Speaker nor the WeSpeaker layout of model ecapa"):
        apply_init(wrong, init, "auto", "ecapa_tdnn", False, False, None)
    with pytest.raises(CheckpointError, match=r"speakerforge model file.*drop --init-format"):
        read_init(model_file, fmt="3dspeaker")


def test_checkpoints_are_listed_newest_first(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    for step in (5, 40, 12):
        (tmp_path / "checkpoints" / f"ckpt-{step:09d}.pt").write_bytes(b"")
    (tmp_path / "checkpoints" / "ckpt-12.pt.tmp").write_bytes(b"")
    assert [s for s, _ in list_checkpoints(tmp_path)] == [40, 12, 5]


def test_a_corrupt_file_says_what_its_name_promised(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x00garbage\xff\xfe")
    with pytest.raises(CheckpointError, match=r"named .onnx like an ONNX model, but not one: truncated or corrupt"):
        load_model(path)


def test_inspect_lists_the_tensors_of_a_checkpoint_and_a_model_file(tmp_path, model_file, capsys):
    """[new-user] 13: `inspect CKPT` listed no tensors."""
    import json

    save_state(tmp_path / "ckpt-000000001.pt", {"model": {"backbone.w": torch.zeros(2, 3)}, "progress": {}})
    assert main(["inspect", str(tmp_path / "ckpt-000000001.pt")]) == 0
    assert json.loads(capsys.readouterr().out)["shapes"] == {"backbone.w": [2, 3]}
    assert main(["inspect", str(model_file)]) == 0
    shapes = json.loads(capsys.readouterr().out)["shapes"]
    assert len(shapes) > 10 and all(k.startswith("backbone.") for k in shapes)


# ---------------------------------------------------------------------------------------------------- resolve
def _run_folder(tmp_path, command: str = "train"):
    """An experiment folder with a config and two checkpoints, the newest corrupt."""
    import json

    import yaml

    folder = tmp_path / "exp"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"model": {"name": "ecapa_tdnn", "args": ARGS}}))
    (folder / "run.json").write_text(json.dumps({"command": command}))
    net = build_model("ecapa_tdnn", **ARGS)
    weights = {"backbone." + k: v for k, v in net.state_dict().items()}
    save_state(
        folder / "checkpoints" / "ckpt-000000010.pt", {"model": {**weights, "classifier.weight": torch.ones(3, 8)}}
    )
    (folder / "checkpoints" / "ckpt-000000020.pt").write_bytes(b"SFCK broken")
    return folder, net


def test_resolve_gives_a_folders_newest_readable_checkpoint_with_its_run_config(tmp_path, caplog):
    from speakerforge.artifacts import resolve

    folder, net = _run_folder(tmp_path)
    res = resolve(folder)
    assert (res.kind, res.file.name, res.part) == ("checkpoint", "ckpt-000000010.pt", None)
    assert res.meta["model"] == {"name": "ecapa_tdnn", "args": ARGS}
    assert all(torch.equal(res.weights[k], v) for k, v in net.state_dict().items())
    assert res.classifier.shape == (3, 8)
    assert "skipping checkpoint" in caplog.text and "ckpt-000000020.pt" in caplog.text
    # every reader builds from the same resolution: finetune --init and load_model take these weights
    init = read_init(folder)
    assert init.backbone.keys() == res.weights.keys() and init.origin == res.origin
    assert init.model_spec == res.meta["model"] and torch.equal(init.classifier, res.classifier)
    assert load_model(folder).embedding_dim == 8


def test_resolve_takes_the_model_file_of_a_folder_first_and_names_a_wrong_part(tmp_path, model_file):
    from speakerforge.artifacts import resolve

    folder, _net = _run_folder(tmp_path)
    (folder / "model.safetensors").write_bytes(model_file.read_bytes())
    assert resolve(folder).kind == "model_file"
    with pytest.raises(CheckpointError, match="not a self-supervised run"):
        resolve(folder, part="student")


def test_resolve_takes_an_ssl_runs_teacher_by_default_and_the_student_from_its_checkpoints(tmp_path, caplog):
    import logging

    from speakerforge.artifacts import resolve

    folder, net = _run_folder(tmp_path, command="pretrain")
    teacher = {f"teacher.backbone.{k}": v for k, v in net.state_dict().items()}
    student = {f"student.backbone.{k}": v + 1 for k, v in net.state_dict().items() if v.is_floating_point()}
    save_state(folder / "checkpoints" / "ckpt-000000010.pt", {"model": {**teacher, **student}})
    with caplog.at_level(logging.INFO):
        res = resolve(folder)
    assert res.part == "teacher" and "(teacher backbone)" in res.origin and res.classifier is None
    assert "using its teacher backbone (the default)" in caplog.text
    chosen = resolve(folder, part="student")
    key = next(k for k in chosen.weights if k.endswith("weight"))
    assert torch.equal(chosen.weights[key], net.state_dict()[key] + 1)
    # the run's model file holds the teacher only: the student comes from the checkpoints, or is refused
    save_embedding_model(folder / "model.safetensors", net, "ecapa_tdnn", ARGS, extra_meta={"ssl": {"part": "teacher"}})
    assert resolve(folder).kind == "model_file" and resolve(folder, part="student").kind == "checkpoint"
    with pytest.raises(CheckpointError, match="holds only the teacher; pass the run's folder"):
        resolve(folder / "model.safetensors", part="student")


def test_resolve_reads_a_foreign_state_dict_where_the_toolkits_put_it_and_refuses_parts_of_it(tmp_path):
    from speakerforge.artifacts import resolve

    path = tmp_path / "pretrained.ckpt"
    torch.save({"epoch": 3, "state_dict": {"w": torch.zeros(2)}}, path)
    res = resolve(path)
    assert (res.kind, list(res.weights), res.raw["epoch"]) == ("torch_zip", ["w"], 3)
    with pytest.raises(CheckpointError, match="holds no self-supervised run"):
        resolve(path, part="teacher")
    with pytest.raises(CheckpointError, match="a PyTorch checkpoint .* not an experiment folder"):
        resolve(path, kinds=("experiment",), wanted="an experiment folder")


def test_an_unfinished_asr_run_is_named_not_searched_for_a_speaker_backbone(tmp_path):
    from speakerforge.asr.funasr_dir import read_asr_model_file

    folder, _net = _run_folder(tmp_path, command="asr-train")
    with pytest.raises(CheckpointError, match="an `asr train` run without model.safetensors"):
        read_asr_model_file(folder)
    with pytest.raises(CheckpointError, match="not an ASR model file"):
        read_asr_model_file(_run_folder(tmp_path / "spk")[0])
