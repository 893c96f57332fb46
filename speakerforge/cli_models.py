"""`convert` (3D-Speaker / WeSpeaker checkpoints -> our model file) and `inspect` (what is in a file)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

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
    from speakerforge.checkpoint_io import safe_torch_load
    from speakerforge.config import (
        ModelConfig,
        _apply_override,  # one parser for dotted overrides
        from_dict,
    )
    from speakerforge.errors import ConfigError
    from speakerforge.models.convert import split_checkpoint
    from speakerforge.models.modelfile import save_embedding_model
    from speakerforge.models.registry import build_model
    from speakerforge.models.zoo import FBANK80, resolve

    raw: dict = {"model": {"name": args.arch or "?", "args": {}}}
    for item in args.overrides:
        if not item.startswith("model."):
            raise ConfigError(f"--set {item}: convert only takes model.args.KEY=VALUE")
        _apply_override(raw, item)
    state = safe_torch_load(args.input, name=args.input)
    entry = None
    if args.arch is None:
        if args.model_id is None and args.source is None:
            raise ConfigError("convert needs --from SOURCE or --model-id ID (or --arch)")
        entry = resolve(state, args.model_id, args.source, raw["model"]["args"])
        raw["model"] = {"name": entry.arch, "args": {**entry.args, **raw["model"]["args"]}}
    elif args.model_id is not None:
        raise ConfigError("pass --model-id or --arch, not both (--set model.args.KEY=VALUE adjusts an id's model)")
    elif args.source is None:
        raise ConfigError("--arch needs --from 3dspeaker|wespeaker")
    source = entry.source if entry is not None else args.source
    spec = from_dict(ModelConfig, raw["model"], "--set", "model.")
    model = build_model(spec.name, **spec.args)
    converted = split_checkpoint(state, source, spec.name, model, part=entry.part if entry else None)
    model.load_state_dict(converted.backbone, strict=True)
    extra = {}
    if "weight" in converted.head and converted.head["weight"].dim() == 2:
        extra["classifier.weight"] = converted.head["weight"]
    save_embedding_model(
        args.output,
        model,
        spec.name,
        dict(spec.args),
        features={**(entry.features if entry else FBANK80), "num_mel_bins": getattr(model, "feat_dim", 80)},
        extra_tensors=extra,
        extra_meta={
            "converted_from": {
                "source": source,
                "file": str(Path(args.input).name),
                **({"model_id": entry.id, "sample_rate": entry.sample_rate} if entry else {}),
            }
        },
    )
    n = sum(v.numel() for v in converted.backbone.values())
    print(
        f"{args.output}: {spec.name} {spec.args or ''} from {source}"
        + (f" ({entry.id})" if entry else "")
        + f", {len(converted.backbone)} tensors, "
        f"{n:,} values" + (f", classifier {tuple(extra['classifier.weight'].shape)}" if extra else "")
    )
    return 0


def _args_inspect(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="model file, training checkpoint, experiment folder or .onnx file")


@command("inspect", "describe a model file, checkpoint, experiment folder or ONNX model", _args_inspect)
def _run_inspect(args: argparse.Namespace) -> int:
    from speakerforge.artifacts import describe

    print(json.dumps(describe(args.path), indent=1))
    return 0
