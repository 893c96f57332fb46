"""`pretrain`: self-supervised pretraining (DINO/RDINO or SDPN), a thin layer over `speakerforge.train.pretrain`."""

from __future__ import annotations

import argparse

from speakerforge.cli import command
from speakerforge.cli_train import _args_common, _config


@command(
    "pretrain",
    "self-supervised pretraining (ssl.method: dino | sdpn) on unlabelled manifests; resumable; "
    "writes the teacher backbone as EXP/model.safetensors",
    _args_common,
)
def _run_pretrain(args: argparse.Namespace) -> int:
    from speakerforge.train.pretrain import PretrainTrainer
    from speakerforge.train.trainer import RunOptions

    cfg = _config(args)
    trainer = PretrainTrainer(
        cfg,
        args.exp,
        RunOptions(resume=not args.no_resume, allow_config_change=args.allow_config_change, command="pretrain"),
    )
    out = trainer.run()
    print(f"model (teacher backbone): {out}")
    print(f"fine-tune it with: speakerforge finetune --init {trainer.exp} --init-part teacher --data ...")
    return 0
