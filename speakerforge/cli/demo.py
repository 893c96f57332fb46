"""`speakerforge demo`: the whole pipeline on the built-in demo corpus (what `make demo` runs)."""

from __future__ import annotations

import argparse
from pathlib import Path

from speakerforge.cli import command


def _args_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo", help="output folder (reused by later runs)")
    p.add_argument("--quick", action="store_true", help="tiny corpus and few epochs: a smoke test of every step")


@command("demo", "prepare, train, fine-tune, pretrain, extract, score and report on the demo corpus", _args_demo)
def _run_demo(args: argparse.Namespace) -> int:
    from speakerforge.demo import Demo

    Demo(Path(args.out), quick=args.quick).run()
    return 0
