"""`speakerforge asr prepare|train|decode|export|eval`: hotword-biased ASR, thin layers over `speakerforge.asr`."""

from __future__ import annotations

import argparse
import sys

from speakerforge.cli import command
from speakerforge.cli.train import add_training_options, training_config


def _args_asr(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="asr_command", metavar="ASR_COMMAND", required=True)
    _args_prepare(sub)
    _args_train(sub)
    _args_decode(sub)
    _args_export(sub)
    _args_eval(sub)


def _args_prepare(sub: argparse._SubParsersAction) -> None:
    prep = sub.add_parser("prepare", help="generate the English hotword corpus with the demo TTS voices")
    prep.add_argument("--out", required=True, help="corpus folder (files already there are reused)")
    prep.add_argument("--seed", type=int, default=0)
    prep.add_argument("--train", type=int, default=None, help="training sentences")
    prep.add_argument("--test", type=int, default=None, help="test sentences")
    prep.add_argument(
        "--dev", type=int, default=None, help="dev sentences for tuning decoding (default 60; 0: no dev set)"
    )
    prep.add_argument(
        "--finetune", type=int, default=0, help="sentences of a held-out fine-tuning split, its own names (default 0)"
    )
    prep.add_argument("--workers", type=int, default=2, help="TTS processes (about 400 MB each)")


def _args_train(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser(
        "train",
        help="train FunASR's SeACo- or Contextual-Paraformer (a new one: configs/asr-funasr-small-seaco.yaml); "
        "--data takes FunASR JSONL (key, source, target); resumable",
    )
    add_training_options(train)
    train.add_argument(
        "--init",
        metavar="SRC",
        help="fine-tune a FunASR model directory (SeACo- or Contextual-Paraformer) or an `asr train` experiment "
        "(the config says model: {name: funasr}, no model.args)",
    )


def _args_decode(sub: argparse._SubParsersAction) -> None:
    dec = sub.add_parser("decode", help="transcribe a JSONL or wav files, optionally with a hotword list")
    dec.add_argument(
        "--model", required=True, help="EXP, EXP/model.safetensors, or a FunASR model directory (config.yaml, model.pt)"
    )
    dec.add_argument(
        "--data",
        required=True,
        nargs="+",
        metavar="SRC",
        help="FunASR JSONL (key, source[, target]), audio files, or folders of audio files",
    )
    dec.add_argument(
        "--hotwords",
        help="text file, one hotword per line (FunASR's hotword file), or a string of space-separated hotwords",
    )
    _args_decoding(dec)


def _args_export(sub: argparse._SubParsersAction) -> None:
    exp = sub.add_parser(
        "export", help="write a model as a FunASR model directory (config.yaml, model.pt, tokens.json, am.mvn)"
    )
    exp.add_argument(
        "--model",
        required=True,
        help="a FunASR model directory (SeACo- or Contextual-Paraformer), or an `asr train` EXP of a FunASR model",
    )
    exp.add_argument("--format", choices=["funasr"], default="funasr", help="funasr: FunASR's model directory")
    exp.add_argument(
        "--hotwords",
        default=None,
        help="hotwords (file or space-separated) whose words a model with learnt BPE pieces adds to seg_dict, "
        "so FunASR does not read them as <unk>",
    )
    exp.add_argument("out", metavar="OUT_DIR", help="the folder to write (new or empty)")


def _args_eval(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser(
        "eval",
        help="table of CER/WER, hotword recall/precision/F1, B-WER/U-WER with no list, "
        "the true hotwords, and true + each distractor list",
    )
    ev.add_argument("--model", required=True, help="EXP, EXP/model.safetensors, or a FunASR model directory")
    ev.add_argument("--data", required=True, help="test JSONL (key, source, target)")
    ev.add_argument("--hotwords", required=True, help="the test set's true hotwords, one per line")
    ev.add_argument("--distractors", nargs="*", default=[], help="distractor lists (e.g. 100 and 500 entries)")
    ev.add_argument("--json", help="also write the rows as JSON here")
    _args_decoding(ev)


def _args_decoding(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--decoding",
        choices=["seaco", "ctc"],
        default="seaco",
        help="seaco: FunASR's (SeACo's bias branch merged, or the contextual decoder); ctc: CTC prefix beam "
        "search with the list as a context graph (a model with a ctc head; needs no trained bias branch)",
    )
    p.add_argument(
        "--context-score",
        type=float,
        default=7.0,
        help="ctc: bonus per matched hotword token (7 was best on the generated dev set; tune it on yours)",
    )
    p.add_argument("--beam", type=int, default=16, help="ctc: beam size")


def _decoding(args: argparse.Namespace):
    from speakerforge.asr.decoding import Decoding

    try:
        return Decoding(args.decoding, args.context_score, args.beam)
    except ValueError as exc:
        from speakerforge.errors import ConfigError

        raise ConfigError(str(exc)) from None


@command("asr", "hotword-biased ASR (SeACo-Paraformer style): prepare | train | decode | export | eval", _args_asr)
def _run_asr(args: argparse.Namespace) -> int:
    return {"prepare": _prepare, "train": _train, "decode": _decode, "export": _export, "eval": _eval}[
        args.asr_command
    ](args)


def _prepare(args: argparse.Namespace) -> int:
    from speakerforge.asr.corpus import CorpusSizes, build_hotword_corpus

    sizes = CorpusSizes()
    if args.train:
        sizes.train = args.train
    if args.test:
        sizes.test = args.test
    if args.dev is not None:
        if args.dev < 0:
            from speakerforge.errors import ConfigError

            raise ConfigError(f"--dev {args.dev}: the number of dev sentences must be >= 0")
        sizes.dev = args.dev
    if args.finetune < 0:
        from speakerforge.errors import ConfigError

        raise ConfigError(f"--finetune {args.finetune}: the number of fine-tuning sentences must be >= 0")
    sizes.finetune = args.finetune
    out = build_hotword_corpus(args.out, seed=args.seed, sizes=sizes, workers=args.workers)
    dev = "dev.jsonl, dev_hotwords.txt, " if sizes.dev else ""
    ft = ", finetune.jsonl, finetune_hotwords.txt" if sizes.finetune else ""
    print(f"corpus: {out} (train.jsonl, {dev}test.jsonl, test_hotwords.txt, distractors_100/500.txt{ft})")
    return 0


def _train(args: argparse.Namespace) -> int:
    from speakerforge.asr.trainer import AsrInit, AsrTrainer
    from speakerforge.train.trainer import RunOptions

    cfg = training_config(args)
    init = AsrInit(args.init) if args.init else None
    trainer = AsrTrainer(
        cfg, args.exp, RunOptions(resume=not args.no_resume, allow_config_change=args.allow_config_change), init=init
    )
    out = trainer.run()
    print(f"model: {out}")
    return 0


def _decode(args: argparse.Namespace) -> int:
    from speakerforge.asr.infer import decode

    for key, text in decode(args.model, args.data, args.hotwords, _decoding(args)):
        sys.stdout.write(f"{key}\t{text}\n")
    return 0


def _export(args: argparse.Namespace) -> int:
    from speakerforge.asr.export import export_asr

    print(f"FunASR model directory: {export_asr(args.model, args.out, args.format, args.hotwords)}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    import json

    from speakerforge.asr.infer import evaluate

    rows, table = evaluate(args.model, args.data, args.hotwords, args.distractors, _decoding(args))
    print(table)
    if args.json:
        from speakerforge.atomic import atomic_write_text

        atomic_write_text(args.json, json.dumps(rows, indent=1) + "\n")
    return 0
