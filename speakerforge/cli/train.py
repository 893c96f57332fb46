"""`train`, `finetune` and `pretrain`: thin layers over `speakerforge.train` (Trainer, init, PretrainTrainer)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from speakerforge.cli import command
from speakerforge.config import Config, SourceConfig, load_config

if TYPE_CHECKING:  # the trainer (torch) is imported only when a command runs
    from speakerforge.train.trainer import RunOptions


def add_training_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=False, help="YAML config (see configs/)")
    p.add_argument("--exp", required=True, help="experiment folder; re-running the same command there resumes")
    p.add_argument(
        "--data",
        nargs="+",
        metavar="SRC",
        help="training manifests (CSV, Kaldi dir, JSONL), each its own speaker namespace named after the file "
        "(or its folder, for manifest.jsonl / train.jsonl); PATH:NAME:WEIGHT sets both; replaces data.sources",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set optim.lr=0.01 (repeatable)",
    )
    p.add_argument(
        "--no-resume", action="store_true", help="start afresh in a new sub-folder of EXP (keeps the old run)"
    )
    p.add_argument("--allow-config-change", action="store_true", help="resume although the config changed")
    p.add_argument(
        "--skip-bad-audio",
        action="store_true",
        help="skip unreadable rows (listed in EXP/skipped.tsv) instead of stopping before training",
    )


def training_config(args: argparse.Namespace) -> Config:
    cfg = load_config(args.config, args.overrides)
    if args.data:
        cfg.data.sources = [SourceConfig.from_spec(d) for d in args.data]
    if args.skip_bad_audio:
        cfg.data.skip_bad_audio = True
    return cfg


def run_options(args: argparse.Namespace, command: str, **extra: Any) -> RunOptions:
    """The run decisions every training command takes from its options (resume, config change), plus `extra`."""
    from speakerforge.train.trainer import RunOptions

    return RunOptions(resume=not args.no_resume, allow_config_change=args.allow_config_change, command=command, **extra)


@command(
    "train",
    "supervised training (AAM-softmax), resumable, one or several datasets, CPU or torchrun DDP",
    add_training_options,
)
def _run_train(args: argparse.Namespace) -> int:
    from speakerforge.train.trainer import Trainer

    out = Trainer(training_config(args), args.exp, run_options(args, "train")).run()
    print(f"model: {out}")
    return 0


def _model_arg_sets(args: argparse.Namespace) -> dict:
    """The `--set model.args.KEY=VALUE` items alone (with --model-id they adjust the id's model)."""
    from speakerforge.config import apply_override  # one parser for dotted overrides

    raw: dict = {"model": {"args": {}}}
    for item in args.overrides:
        if item.startswith("model.args."):
            apply_override(raw, item)
    return raw["model"]["args"]


def _args_finetune(p: argparse.ArgumentParser) -> None:
    add_training_options(p)
    p.add_argument(
        "--init",
        required=True,
        metavar="SRC",
        help="experiment folder, checkpoint or model file; a 3D-Speaker/WeSpeaker checkpoint with "
        "--init-format; a DINO/SDPN run with --init-part",
    )
    p.add_argument("--init-format", default="auto", choices=["auto", "speakerforge", "3dspeaker", "wespeaker"])
    p.add_argument("--init-part", choices=["teacher", "student"], help="which backbone of a self-supervised run")
    p.add_argument(
        "--model-id",
        help="released 3D-Speaker/WeSpeaker model id of the --init checkpoint: its model replaces the config's "
        "(--set model.args.KEY=VALUE adjusts it)",
    )
    p.add_argument(
        "--freeze",
        default="",
        metavar="PATTERNS",
        help="comma-separated prefixes (FunASR syntax) or globs, e.g. 'backbone' or 'backbone.*.bn*'; "
        "a pattern that matches nothing is an error",
    )
    p.add_argument("--no-freeze-bn", action="store_true", help="let BatchNorm statistics of frozen modules update")
    p.add_argument("--keep-head", action="store_true", help="keep the source's classifier (same speakers only)")
    p.add_argument(
        "--allow-partial", action="store_true", help="load the matching backbone tensors only, report the rest"
    )
    p.add_argument(
        "--allow-dead-params",
        action="store_true",
        help="warn instead of failing when a trainable tensor gets no gradient or does not change",
    )


def _take_init_features(cfg: Any, features: dict[str, Any]) -> None:
    """The run reads the features the weights were trained on (a released model's, or a model file's): a
    ReDimNet2 fed Kaldi fbank, or a 72-bin model fed 80 bins, would fine-tune from a wrong start."""
    from dataclasses import asdict

    from speakerforge.data.features import FeatureSpec

    want = FeatureSpec.from_meta(features)
    have = FeatureSpec.from_config(cfg.features)
    if want != have:
        import logging

        logging.getLogger("speakerforge").info("features taken from the --init source: %s", want.to_meta())
        for key, value in asdict(want).items():
            setattr(cfg.features, key, value)


@command(
    "finetune", "fine-tune from pretrained weights: new head, freezing, stages, update-integrity check", _args_finetune
)
def _run_finetune(args: argparse.Namespace) -> int:
    from speakerforge.train.init import apply_init, read_init
    from speakerforge.train.trainer import Trainer

    cfg = training_config(args)
    init = read_init(args.init, args.init_format, args.init_part, args.model_id, _model_arg_sets(args))
    if init.model_spec is not None:
        if (cfg.model.name, cfg.model.args) != (init.model_spec["name"], init.model_spec.get("args", {})):
            import logging

            logging.getLogger("speakerforge").info(
                "model taken from the --init source: %s %s", init.model_spec["name"], init.model_spec.get("args", {})
            )
        cfg.model.name = init.model_spec["name"]
        cfg.model.args = dict(init.model_spec.get("args", {}))
    if init.features is not None:
        _take_init_features(cfg, init.features)
    if args.freeze:
        cfg.train.freeze = list(cfg.train.freeze) + [p.strip() for p in args.freeze.split(",") if p.strip()]
    if args.no_freeze_bn:
        cfg.train.freeze_bn = False
    if args.allow_dead_params:
        cfg.train.allow_dead_params = True

    def do_init(module, speakers: list[str]) -> None:
        fmt = "speakerforge" if args.model_id else args.init_format  # --model-id: converted by read_init
        apply_init(module, init, fmt, cfg.model.name, args.allow_partial, args.keep_head, speakers)

    options = run_options(
        args,
        "finetune",
        init=do_init,
        init_description={
            "init": str(Path(args.init).resolve()),
            "format": args.init_format,
            "part": args.init_part,
            "model_id": args.model_id,
            "keep_head": args.keep_head,
            "allow_partial": args.allow_partial,
        },
    )
    out = Trainer(cfg, args.exp, options).run()
    print(f"model: {out}")
    return 0


@command(
    "pretrain",
    "self-supervised pretraining (ssl.method: dino | sdpn) on unlabelled manifests; resumable; "
    "writes the teacher backbone as EXP/model.safetensors",
    add_training_options,
)
def _run_pretrain(args: argparse.Namespace) -> int:
    from speakerforge.train.pretrain import PretrainTrainer

    trainer = PretrainTrainer(training_config(args), args.exp, run_options(args, "pretrain"))
    out = trainer.run()
    print(f"model (teacher backbone): {out}")
    print(f"fine-tune it with: speakerforge finetune --init {trainer.exp} --init-part teacher --data ...")
    return 0
