"""`prepare` (corpus release layouts, generated corpora and augmentation material -> manifests) and `validate`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from speakerforge.cli import command
from speakerforge.errors import DataError

_READERS = {
    "librispeech": "LibriSpeech: SPEAKER/CHAPTER/*.flac, or SPEAKER-CHAPTER-UTT.flac files side by side",
    "commonvoice": "Common Voice: a locale folder (validated.tsv, clips/) or a folder of locale folders",
    "voxceleb": "VoxCeleb1/2 as wav: idXXXXX/VIDEO/NNNNN.wav",
    "cnceleb": "CN-Celeb: data/idXXXXX/*.flac (+ eval/ enroll, test and lists/trials.lst when present)",
}


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the manifest(s)")
    p.add_argument("--format", choices=("jsonl", "csv"), default="jsonl", help="manifest format (default jsonl)")


def _args_prepare(p: argparse.ArgumentParser) -> None:
    """One sub-command per source, in the order `prepare --help` lists them."""
    sub = p.add_subparsers(dest="corpus", metavar="CORPUS", required=True)
    _args_corpus_readers(sub)
    _args_synthetic(sub)
    _args_augmentation_material(sub)
    _args_shards(sub)
    _args_demo(sub)


def _args_corpus_readers(sub: Any) -> None:
    """The released corpora (`_READERS`): SRC folder -> manifests."""
    for name, help_text in _READERS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.add_argument("src", type=Path, metavar="SRC", help="the corpus folder as released")
        _common(sp)
        sp.add_argument(
            "--speaker-prefix",
            default="",
            metavar="TEXT",
            help="prepend to every speaker ID (keeps corpora apart when mixed)",
        )
        sp.add_argument(
            "--no-durations",
            action="store_true",
            help="do not open each file for its duration (faster on millions of files)",
        )
        if name == "commonvoice":
            sp.add_argument(
                "--include-other",
                action="store_true",
                help="also use other.tsv (clips not yet voted on; often most of a small locale)",
            )


def _args_synthetic(sub: Any) -> None:
    sp = sub.add_parser("synthetic", help="numpy-synthesised voices for tests and smoke runs (seconds)")
    _common(sp)
    sp.add_argument("--speakers", type=int, default=8)
    sp.add_argument("--utts-per-speaker", type=int, default=4)
    sp.add_argument("--seconds", type=float, default=2.0)
    sp.add_argument("--sample-rate", type=int, default=16000)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--prefix", default="spk", help="speaker name prefix")
    sp.add_argument("--trials", type=int, default=0, metavar="N", help="also write N balanced trials to trials.txt")


def _args_augmentation_material(sub: Any) -> None:
    """Noise and RIR lists of released corpora (musan, rirs) and synthetic material (noise)."""
    for name, what in (("musan", "MUSAN (musan/{noise,music,speech}/...)"), ("rirs", "RIRS_NOISES (OpenSLR 28)")):
        text = f"augmentation material: list a {what} tree as DIR/{name}.csv for data.augment"
        sp = sub.add_parser(name, help=text, description=text)
        sp.add_argument("src", type=Path, metavar="SRC", help="the corpus folder as released")
        sp.add_argument("--out", type=Path, required=True, metavar="DIR", help=f"folder for {name}.csv")

    text = "augmentation material made here: synthetic noise, music and RIRs (+ babble from --speech)"
    sp = sub.add_parser("noise", help=text, description=text + "; writes DIR/musan/ and DIR/rirs/")
    sp.add_argument("--out", type=Path, required=True, metavar="DIR", help="writes DIR/musan/ and DIR/rirs/")
    sp.add_argument("--speech", type=Path, metavar="MANIFEST", help="real speech to cut into babble clips")
    sp.add_argument("--noises", type=_count, default=40, metavar="N", help="noise and music files (default 40)")
    sp.add_argument("--rirs", type=_count, default=40, metavar="N", help="room impulse responses (default 40)")
    sp.add_argument("--seconds", type=float, default=4.0, help="length of each noise clip (default 4)")
    sp.add_argument("--seed", type=int, default=0)


def _args_shards(sub: Any) -> None:
    text = "pack manifests into tar shards (+ shards.list, shards.index.jsonl) that training reads as a stream"
    sp = sub.add_parser("shards", help=text, description=text)
    sp.add_argument("manifests", nargs="+", type=Path, metavar="MANIFEST", help="CSV, Kaldi data dir or JSONL")
    sp.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the tars and the shard list")
    sp.add_argument("--utts-per-shard", type=int, default=1000, metavar="N", help="utterances per tar (default 1000)")
    sp.add_argument("--flac", action="store_true", help="re-encode the audio to FLAC (default: stored as it is)")
    sp.add_argument("--seed", type=int, default=0, help="seed of the shuffle before packing")
    sp.add_argument("--no-shuffle", action="store_true", help="keep manifest order (shards then hold few speakers)")


def _args_demo(sub: Any) -> None:
    sp = sub.add_parser("demo", help="the demo corpus (TTS voices; needs `pip install speakerforge[demo]`)")
    sp.add_argument("--out", type=Path, required=True, metavar="DIR")
    sp.add_argument("--train-speakers", type=int, default=None)
    sp.add_argument("--test-speakers", type=int, default=None)


@command("prepare", "turn a corpus folder (or a generated corpus) into manifests", _args_prepare)
def _run_prepare(args: argparse.Namespace) -> int:
    if args.corpus == "synthetic":
        return _prepare_synthetic(args)
    if args.corpus == "demo":
        return _prepare_demo(args)
    if args.corpus == "shards":
        from speakerforge.data.shards.writer import write_shards

        summary = write_shards(args.manifests, args.out, args.utts_per_shard, args.flac, args.seed, not args.no_shuffle)
        print(summary.line(), file=sys.stdout)
        return 0
    if args.corpus in ("musan", "rirs", "noise"):
        return _prepare_augmentation(args)
    from speakerforge.data.corpora.readers import PREPARERS

    extra = {"include_other": args.include_other} if args.corpus == "commonvoice" else {}
    result = PREPARERS[args.corpus](
        args.src,
        args.out,
        fmt=args.format,
        speaker_prefix=args.speaker_prefix,
        durations=not args.no_durations,
        **extra,
    )
    print(result.summary(), file=sys.stdout)
    return 0


def _prepare_synthetic(args: argparse.Namespace) -> int:
    from speakerforge.data.corpora.synthetic import make_synthetic_corpus, make_trials, write_trials

    name = f"manifest.{args.format}"
    if args.trials and (args.speakers < 2 or args.utts_per_speaker < 2):
        # make_trials would refuse only after the corpus is written; refuse before writing anything.
        raise DataError(
            f"--trials {args.trials}: trials need at least two speakers with two utterances each "
            f"(--speakers {args.speakers}, --utts-per-speaker {args.utts_per_speaker})"
        )
    utts = make_synthetic_corpus(
        args.out,
        n_speakers=args.speakers,
        utts_per_speaker=args.utts_per_speaker,
        seconds=args.seconds,
        sample_rate=args.sample_rate,
        seed=args.seed,
        prefix=args.prefix,
        manifest_name=name,
    )
    line = f"synthetic: {len(utts)} utterances, {args.speakers} speakers -> {args.out / name}"
    if args.trials:
        trials = make_trials(utts, args.trials, seed=args.seed)
        write_trials(args.out / "trials.txt", trials)
        line += f", {len(trials)} trials -> {args.out / 'trials.txt'}"
    print(line, file=sys.stdout)
    return 0


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text}: must be >= 0")
    return value


def _prepare_augmentation(args: argparse.Namespace) -> int:
    from speakerforge.data.corpora.noise import make_augmentation_set, prepare

    if args.corpus in ("musan", "rirs"):
        path = prepare(args.corpus, args.src, args.out)
        n = sum(1 for _ in path.open(encoding="utf-8")) - 1
        key = "noise_dir" if args.corpus == "musan" else "rir_dir"
        print(f"{args.corpus}: {n} files -> {path}; use it with --set data.augment.{key}={path}")
        return 0
    made = make_augmentation_set(args.out, args.noises, args.rirs, args.seed, args.speech, args.seconds)
    print(
        f"noise: {len(made['musan'])} noise/music/speech files -> {args.out / 'musan'}, {len(made['rirs'])} RIRs -> "
        f"{args.out / 'rirs'}; use them with --set data.augment.noise_dir={args.out / 'musan'} "
        f"--set data.augment.rir_dir={args.out / 'rirs'}"
    )
    return 0


def _prepare_demo(args: argparse.Namespace) -> int:
    from speakerforge.data.corpora.demo import build_demo_corpus

    kwargs = {
        k: v
        for k, v in (("train_speakers", args.train_speakers), ("test_speakers", args.test_speakers))
        if v is not None
    }
    result = build_demo_corpus(args.out, **kwargs)
    counts = result.get("counts", {}) if isinstance(result, dict) else {}
    print(
        f"demo: {counts.get('train_utts', '?')} training and {counts.get('test_utts', '?')} test utterances "
        f"-> {args.out}",
        file=sys.stdout,
    )
    return 0


def _args_validate(p: argparse.ArgumentParser) -> None:
    p.add_argument("manifests", nargs="+", metavar="MANIFEST", help="3D-Speaker CSV, Kaldi data dir, or JSONL")
    p.add_argument("--deep", action="store_true", help="decode every file (finite samples, true length)")


@command("validate", "check manifests row by row; exit 1 when any problem was found", _args_validate)
def _run_validate(args: argparse.Namespace) -> int:
    from speakerforge.data.validate import validate_manifests

    report = validate_manifests(args.manifests, deep=args.deep)
    for problem in report.problems:
        print(problem, file=sys.stdout)
    print(report.summary(), file=sys.stdout)
    if not report.problems:
        return 0
    # The report (stdout) lists every problem; the verdict on stderr is the one error line every command gives.
    n = len(report.problems)
    more = f" (and {n - 1} more, listed above)" if n > 1 else ""
    print(f"speakerforge validate: error: {report.problems[0]}{more}", file=sys.stderr)
    return 1
