"""`extract`, `embed`, `verify` and `export`: thin layers over `speakerforge.inference`, `eval.embed` and `export`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from speakerforge.cli import command

MODEL_HELP = "experiment folder, checkpoint, model file or ONNX model (recognised by content, any file name)"
DEFAULT_THRESHOLD = 0.5


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(int(threads))


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    from speakerforge.cli import finite_float

    value = finite_float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _device(text: str) -> str:
    """--device: cpu, cuda or cuda:N, and cuda only where a GPU is visible."""
    import re

    if not re.fullmatch(r"cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")
    if text.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text}: no GPU is visible; use --device cpu")
        if ":" in text and int(text.split(":")[1]) >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text}: only {torch.cuda.device_count()} GPU(s) are visible")
    return text


def _add_runtime(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=_positive_int, default=None, help="CPU threads (torch and ONNX Runtime)")
    p.add_argument("--device", type=_device, default="cpu", help="torch device, e.g. cpu or cuda (ignored for .onnx)")


# --------------------------------------------------------------------------------------------------------------
def _args_extract(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument(
        "--data",
        required=True,
        metavar="MANIFEST_OR_DIR",
        help="3D-Speaker CSV, JSONL, Kaldi data dir, or a folder of audio files (keys: relative paths "
        "without extension)",
    )
    p.add_argument("--out", required=True, metavar="EMB.npz", help="embeddings (.npz); stats go to EMB.npz.json")
    p.add_argument("--ark", metavar="OUT.ark", help="also write Kaldi ark + scp (OUT.scp)")
    p.add_argument(
        "--chunk",
        type=_positive_float,
        metavar="SEC",
        help="embed utterances longer than SEC seconds as the mean over SEC-second chunks",
    )
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        default=16,
        help="utterances per forward pass (only equal-length ones share a batch)",
    )
    p.add_argument("--threads", type=_positive_int, default=None, help="CPU threads in all (default: every core)")
    p.add_argument(
        "--workers",
        type=_positive_int,
        default=None,
        help="model workers sharing the threads (default: one single-threaded worker per thread)",
    )
    p.add_argument("--device", type=_device, default="cpu", help="torch device, e.g. cpu or cuda (ignored for .onnx)")


@command(
    "extract",
    "embed every utterance of a manifest or folder into .npz (and Kaldi ark/scp); reports the RTF",
    _args_extract,
)
def _run_extract(args: argparse.Namespace) -> int:
    from speakerforge.eval.embed import extract_embeddings

    stats = extract_embeddings(
        args.model,
        args.data,
        args.out,
        chunk=args.chunk,
        ark=args.ark,
        batch_size=args.batch_size,
        threads=args.threads,
        workers=args.workers,
        device=args.device,
    )
    print(stats.summary())
    print(f"written: {', '.join(stats.outputs)}")
    return 0


# --------------------------------------------------------------------------------------------------------------
def _args_verify(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("audio", nargs=2, metavar="AUDIO", help="the two recordings to compare")
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help=f"accept when the cosine score is at least this (default: the model's, else {DEFAULT_THRESHOLD})",
    )
    _add_runtime(p)


@command("verify", "cosine score of two recordings and the accept/reject decision", _args_verify)
def _run_verify(args: argparse.Namespace) -> int:
    from speakerforge.inference import load_model

    _set_threads(args.threads)
    model = load_model(args.model, device=args.device, threads=args.threads)
    a, b = args.audio
    score = model.score(a, b)
    threshold, origin = args.threshold, "--threshold"
    if threshold is None:
        threshold, origin = model.threshold, "model"
    if threshold is None:
        threshold, origin = DEFAULT_THRESHOLD, "default"
        print(
            f"note: {model.source} states no threshold; using {DEFAULT_THRESHOLD} (calibrate one on trials of "
            "your data and pass --threshold)",
            file=sys.stderr,
        )
    decision = "accept" if score >= threshold else "reject"
    print(f"score {score:.4f}  {decision}  (threshold {threshold:.4f}, {origin})")
    return 0


# --------------------------------------------------------------------------------------------------------------
def _args_embed(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("files", nargs="+", metavar="FILE", help="audio files")
    p.add_argument(
        "--out",
        metavar="EMB.npz",
        help="save the embeddings (.npz, or .ark with its .scp) instead of printing a summary",
    )
    _add_runtime(p)


@command("embed", "embeddings of a few audio files: a summary per file, or saved with --out", _args_embed)
def _run_embed(args: argparse.Namespace) -> int:
    from speakerforge.eval import embio
    from speakerforge.inference import load_model

    if args.out:
        from speakerforge.errors import check_output_path

        check_output_path(args.out)  # before the work, not after it
    _set_threads(args.threads)
    model = load_model(args.model, device=args.device, threads=args.threads)
    matrix = model.embed_batch(args.files)
    if args.out:
        keys = [Path(f).with_suffix("").as_posix() for f in args.files]
        embio.save_embeddings(args.out, embio.Embeddings(keys, matrix, source=str(args.out)))
        print(f"{len(keys)} embeddings ({model.embedding_dim}-d) written to {args.out}")
        return 0
    for f, e in zip(args.files, matrix):
        head = " ".join(f"{v:+.4f}" for v in e[:4])
        print(f"{f}  dim={e.shape[0]}  norm={float((e.astype('float64') ** 2).sum() ** 0.5):.4f}  [{head} ...]")
    return 0


# --------------------------------------------------------------------------------------------------------------
def _args_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="experiment folder, checkpoint or model file (.safetensors)")
    p.add_argument("--onnx", required=True, metavar="OUT.onnx", help="output ONNX file")
    p.add_argument(
        "--with-fbank",
        action="store_true",
        help="the graph takes a 16 kHz waveform [batch, samples] and computes fbank + mean norm itself",
    )
    p.add_argument("--opset", type=_positive_int, default=17, help="ONNX opset (default 17)")
    p.add_argument(
        "--dynamo",
        action="store_true",
        help="use the torch.export-based exporter (default: the TorchScript exporter, which handles "
        "every model family here)",
    )


@command(
    "export", "export to ONNX (dynamic batch and time), checked against PyTorch at two other lengths", _args_export
)
def _run_export(args: argparse.Namespace) -> int:
    from speakerforge.export import export_onnx

    report = export_onnx(args.model, args.onnx, with_fbank=args.with_fbank, opset=args.opset, dynamo=args.dynamo)
    print(report.summary())
    return 0
