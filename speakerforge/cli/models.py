"""`convert` (3D-Speaker / WeSpeaker checkpoints -> our model file) and `inspect` (what is in a file)."""

from __future__ import annotations

import argparse
import json

from speakerforge.cli import command


def _args_convert(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--from", dest="source", choices=["3dspeaker", "wespeaker"], help="the toolkit (implied by --model-id)"
    )
    p.add_argument(
        "--model-id",
        help="released model id (e.g. iic/speech_eres2netv2_sv_zh-cn_16k-common, wespeaker/voxceleb_resnet34_LM): "
        "architecture and features from the table; without it and --arch, the one id whose shapes fit is used",
    )
    p.add_argument(
        "--arch", help="registered model name (ecapa_tdnn, campplus, eres2net, resnet34...), instead of --model-id"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="model.args.KEY=VALUE",
        help="model constructor argument, e.g. --set model.args.channels=1024 (repeatable)",
    )
    p.add_argument("input", metavar="IN", help="checkpoint (state dict, possibly nested under model/state_dict)")
    p.add_argument("output", metavar="OUT", help="our model file (.safetensors)")


@command("convert", "turn a 3D-Speaker or WeSpeaker checkpoint into a speakerforge model file", _args_convert)
def _run_convert(args: argparse.Namespace) -> int:
    from speakerforge.config import apply_override
    from speakerforge.errors import ConfigError
    from speakerforge.models.zoo import convert_checkpoint

    raw: dict = {"model": {"args": {}}}
    for item in args.overrides:
        if not item.startswith("model.args."):
            raise ConfigError(f"--set {item}: convert only takes model.args.KEY=VALUE")
        apply_override(raw, item)
    done = convert_checkpoint(args.input, args.output, args.source, args.arch, args.model_id, raw["model"]["args"])
    print(done.summary())
    return 0


def _args_inspect(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="model file, training checkpoint, experiment folder or .onnx file")


@command("inspect", "describe a model file, checkpoint, experiment folder or ONNX model", _args_inspect)
def _run_inspect(args: argparse.Namespace) -> int:
    from speakerforge.artifacts import describe

    print(json.dumps(describe(args.path), indent=1))
    return 0
