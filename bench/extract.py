"""End-to-end extraction speed of full-size CAM++: PyTorch eager vs BN-folded vs ONNX Runtime.

Generates `--n` utterances of 3-8 s (noise under a slow random envelope, written as 16-bit wav files), saves a
random-weight CAM++ (the published size, 6.85 M parameters) as a model file, exports it to ONNX with and without the
fbank in the graph, and runs `extract_embeddings` over the same manifest with each backend. The RTF is wall time of
the whole extraction (header scan, decoding, features, model, writing .npz) over audio duration; the CPU-time RTF
beside it (process CPU seconds / audio seconds / threads) shows what the cores did when the machine is shared.

    python bench/extract.py [--n 100] [--threads 2] [--workdir DIR] [--batching]

`--batching` adds: equal-length segments (every utterance 4.00 s) at batch size 1 vs 16, and the effect of
`length_tolerance` (cropping to the shortest in a batch) on the embeddings.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from speakerforge.eval.embed import extract_embeddings
from speakerforge.export import export_onnx
from speakerforge.inference import load_model
from speakerforge.models.modelfile import save_embedding_model
from speakerforge.models.registry import build_model

SR = 16000
FEATURES = {"num_mel_bins": 80, "frame_length": 25.0, "frame_shift": 10.0, "mean_norm": True}


def make_corpus(folder: Path, n: int, low: float, high: float, seed: int = 0) -> Path:
    """`n` wav files of `low`-`high` seconds and their JSONL manifest."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        samples = int(rng.uniform(low, high) * SR)
        env = np.interp(np.arange(samples), np.linspace(0, samples, 40), rng.uniform(0.01, 0.3, 40))
        wav = (env * rng.standard_normal(samples)).astype(np.float32)
        path = folder / f"utt{i:04d}.wav"
        sf.write(path, wav, SR, subtype="PCM_16")
        rows.append({"key": f"utt{i:04d}", "wav": str(path), "spk": f"s{i % 10}", "dur": samples / SR})
    manifest = folder / "data.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def make_campplus(path: Path, seed: int = 0) -> Path:
    """Published-size CAM++ with random weights and randomised BN statistics, saved as our model file."""
    torch.manual_seed(seed)
    net = build_model("campplus").eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    save_embedding_model(path, net, "campplus", {}, features=FEATURES)
    return path


def run(label: str, model, manifest: Path, out: Path, threads: int, **kw) -> dict:
    c0 = time.process_time()
    stats = extract_embeddings(model, manifest, out, progress=False, threads=threads, **kw)
    cpu = time.process_time() - c0
    row = {
        "backend": label,
        "rtf": stats.rtf,
        "model_rtf": stats.model_rtf,
        "cpu_rtf": cpu / stats.audio_seconds / threads,
        "audio_s": stats.audio_seconds,
        "workers": stats.workers,
        "wall_s": stats.processing_seconds,
    }
    print(
        f"{label:<38} RTF {stats.rtf:.4f}  (features+model {stats.model_rtf:.4f}; CPU-time RTF per thread "
        f"{row['cpu_rtf']:.4f})  {stats.audio_seconds:.0f} s audio in {stats.processing_seconds:.1f} s",
        flush=True,
    )
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100, help="utterances (3-8 s each)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workdir", type=Path, default=None, help="keep the corpus and models here (default: temp)")
    ap.add_argument("--batching", action="store_true", help="also measure equal-length batching and tolerance")
    ap.add_argument("--skip-eager", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="sf-bench-extract-"))
    work.mkdir(parents=True, exist_ok=True)
    print(
        f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f}; work dir {work}"
    )

    manifest = make_corpus(work / "corpus", args.n, 3.0, 8.0)
    model_file = make_campplus(work / "campplus.safetensors")
    t = time.perf_counter()
    reports = [
        export_onnx(model_file, work / "campplus.onnx"),
        export_onnx(model_file, work / "campplus_fbank.onnx", with_fbank=True),
    ]
    print(f"ONNX export + parity check of both graphs: {time.perf_counter() - t:.1f} s")
    for r in reports:
        print("  " + r.summary())

    rows = []
    bs, th = args.batch_size, args.threads
    # Default layout: one single-threaded worker per thread. The `1 worker x N threads` rows show intra-op threading.
    if not args.skip_eager:
        rows.append(
            run(
                "pytorch eager", load_model(model_file, optimize=False), manifest, work / "eager.npz", th, batch_size=bs
            )
        )
    opt = load_model(model_file)
    rows.append(run("pytorch optimize_for_inference", opt, manifest, work / "opt.npz", th, batch_size=bs))
    rows.append(
        run(
            "onnxruntime (fbank in torch)",
            load_model(work / "campplus.onnx", threads=1),
            manifest,
            work / "ort.npz",
            th,
            batch_size=bs,
        )
    )
    rows.append(
        run(
            "onnxruntime (fbank in graph)",
            load_model(work / "campplus_fbank.onnx", threads=1),
            manifest,
            work / "ort_fbank.npz",
            th,
            batch_size=bs,
        )
    )
    if th > 1:
        rows.append(
            run(
                f"pytorch optimized, 1 worker x {th} thr",
                opt,
                manifest,
                work / "opt_intra.npz",
                th,
                workers=1,
                batch_size=bs,
            )
        )
        rows.append(
            run(
                f"onnxruntime, 1 worker x {th} thr",
                load_model(work / "campplus.onnx", threads=th),
                manifest,
                work / "ort_intra.npz",
                th,
                workers=1,
                batch_size=bs,
            )
        )
    from speakerforge.eval.embio import load_embeddings

    ref = load_embeddings(work / "opt.npz")
    for name in ("eager", "ort", "ort_fbank"):
        if (work / f"{name}.npz").is_file():
            other = load_embeddings(work / f"{name}.npz")
            diff = max(float(np.abs(other[k] - ref[k]).max()) for k in ref)
            print(
                f"  max |{name} - optimized| over all embeddings: {diff:.2e} (embedding scale "
                f"{float(np.abs(ref.matrix).max()):.2f})"
            )

    if args.batching:
        batching(work, model_file, args.threads)
    (work / "results.json").write_text(json.dumps(rows, indent=1))


def batching(work: Path, model_file: Path, threads: int) -> None:
    """Equal-length segments (the case where batches form) at batch 1 vs 16; and what a tolerance costs."""
    manifest = make_corpus(work / "segments", 64, 4.0, 4.0, seed=1)
    model = load_model(model_file)
    for bs in (1, 16):
        run(f"4 s segments, batch {bs}", model, manifest, work / f"seg{bs}.npz", threads, batch_size=bs)
    wavs = list(_random_waves(32, 3.0, 4.0))
    exact = model.embed_batch(wavs, batch_size=32)
    unit = exact / np.linalg.norm(exact, axis=1, keepdims=True)
    between = 1.0 - (unit @ unit.T)[np.triu_indices(len(wavs), 1)]
    print(f"  cosine distance between different utterances (random network): median {np.median(between):.2e}")
    for tol in (0.02, 0.1):
        loose = model.embed_batch(wavs, batch_size=32, length_tolerance=tol)
        dist = 1.0 - np.sum(unit * loose, 1) / np.linalg.norm(loose, axis=1)
        print(
            f"  length_tolerance {tol}: cosine distance cropped vs exact: max {dist.max():.2e}, "
            f"median {np.median(dist):.2e}"
        )


def _random_waves(n: int, low: float, high: float, seed: int = 2):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        samples = int(rng.uniform(low, high) * SR)
        yield (0.1 * rng.standard_normal(samples)).astype(np.float32)


if __name__ == "__main__":
    main()
