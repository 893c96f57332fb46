"""Side by side on the real-speech dev sets: a speakerforge model against resemblyzer 0.1.4 (a pretrained GE2E
encoder), same trials, cosine scoring, EER and minDCF(0.01) for both and ours/theirs.

    python bench/accuracy.py --model exp/run [--shared ../shared/data] [--sets cv-fa,cv-multi,libri]
                             [--mean-sub] [--cache exp/bench-cache/accuracy]

The trial lists are `recipes/shared-data/lists/*.trials` (see that folder's README; keys are files relative to the
shared folder, `PATH@START-END` a segment in seconds). Audio is loaded with `speakerforge.data.audio.load_audio` at
16 kHz for both models. Embeddings are cached per model file (by content hash) under `--cache`, so a re-run only
scores. resemblyzer is a bench-only tool, never a speakerforge dependency; install it into the venv with
`pip install --no-deps resemblyzer==0.1.4 webrtcvad-wheels librosa scipy numba llvmlite lazy_loader decorator
msgpack pooch platformdirs audioread` (its full dependency set also pulls scikit-learn and joblib, unused here).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from speakerforge import load_model
from speakerforge.artifacts import list_checkpoints
from speakerforge.data.audio import load_audio
from speakerforge.eval.embio import Embeddings
from speakerforge.eval.metrics import compute_metrics
from speakerforge.eval.score import score_trials
from speakerforge.eval.trials import Trials, read_trials

ROOT = Path(__file__).resolve().parents[1]
LISTS = ROOT / "recipes" / "shared-data" / "lists"
SETS = ("cv-fa", "cv-multi", "libri")
INSTALL = (
    "resemblyzer is not installed; install it into this venv (bench only, not a speakerforge dependency):\n"
    "  .venv/bin/pip install --no-deps resemblyzer==0.1.4 webrtcvad-wheels librosa scipy numba llvmlite "
    "lazy_loader decorator msgpack pooch platformdirs audioread"
)
MIN_VOICED = 1600  # 0.1 s: shorter after resemblyzer's VAD trimming, the untrimmed clip is used (counted)

Embedder = Callable[[list[np.ndarray], list[str]], np.ndarray]


def load_key(shared: Path, key: str) -> np.ndarray:
    """16 kHz mono audio of a trial key: a file relative to `shared`, or `PATH@START-END` (seconds)."""
    path, _, seg = key.partition("@")
    if not seg:
        return load_audio(shared / path)
    start, end = (float(x) for x in seg.split("-"))
    return load_audio(shared / path, start, end)


def content_hash(path: Path) -> str:
    """First 16 hex digits of the SHA-256 of the model file `load_model(path)` reads (a run's model file, else its
    newest checkpoint, as `speakerforge.inference` chooses)."""
    if path.is_dir():
        found = [path / "model.safetensors"] if (path / "model.safetensors").is_file() else []
        found += [ckpt for _step, ckpt in list_checkpoints(path)]
        if not found:
            raise SystemExit(f"{path}: no model.safetensors or checkpoint to hash for the cache")
        path = found[0]
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def cached_embeddings(cache: Path, keys: list[str], shared: Path, embed: Embedder, what: str) -> Embeddings:
    """Embeddings of `keys`, reading `cache` (npz: keys, matrix) and embedding only what it lacks."""
    have: dict[str, np.ndarray] = {}
    if cache.is_file():
        with np.load(cache) as z:
            have = dict(zip(z["keys"].tolist(), z["matrix"]))
    missing = [k for k in keys if k not in have]
    if missing:
        t0 = time.perf_counter()
        for start in range(0, len(missing), 64):
            part = missing[start : start + 64]
            vecs = embed([load_key(shared, k) for k in part], part)
            have.update(zip(part, vecs))
        logging.info("%s: embedded %d clips in %.0f s", what, len(missing), time.perf_counter() - t0)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, keys=np.array(list(have)), matrix=np.stack(list(have.values())).astype(np.float32))
        os.replace(tmp, cache)
    return Embeddings(keys, np.stack([have[k] for k in keys]), source=str(cache))


def resemblyzer_embedder() -> tuple[Embedder, dict[str, int]]:
    """`VoiceEncoder().embed_utterance(preprocess_wav(wav))` on 16 kHz arrays; counts clips VAD trimmed to nothing."""
    from resemblyzer import VoiceEncoder, preprocess_wav

    encoder = VoiceEncoder("cpu", verbose=False)
    stats = {"untrimmed": 0}

    def embed(waves: list[np.ndarray], names: list[str]) -> np.ndarray:
        out = []
        for w in waves:
            p = preprocess_wav(w)
            if p.shape[0] < MIN_VOICED:
                stats["untrimmed"] += 1
                p = w
            out.append(encoder.embed_utterance(p))
        return np.stack(out)

    return embed, stats


def evaluate(name: str, ours: Embeddings, theirs: Embeddings, trials: Trials, mean_sub: bool) -> dict:
    """EER and minDCF(0.01) of both models on one trial list (`mean_sub`: subtract the set's mean, ours only)."""
    mean = ours.matrix.mean(axis=0) if mean_sub else None
    out = {"set": name, "trials": len(trials), "target": int(trials.labels.sum())}
    for who, emb, m in (("ours", ours, mean), ("theirs", theirs, None)):
        metrics = compute_metrics(score_trials(emb, trials, mean=m), trials.labels, p_targets=(0.01,))
        out[who] = (metrics["eer"], metrics["min_dcf"]["0.01"]["value"])
    return out


def table(rows: list[dict]) -> str:
    """The printed Markdown table."""
    lines = [
        "| set | trials (target) | EER ours | EER resemblyzer | ratio "
        "| minDCF(0.01) ours | minDCF(0.01) resemblyzer | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        (e1, d1), (e2, d2) = r["ours"], r["theirs"]
        lines.append(
            f"| {r['set']} | {r['trials']} ({r['target']}) | {e1:.2f}% | {e2:.2f}% | {e1 / max(e2, 1e-9):.2f} "
            f"| {d1:.3f} | {d2:.3f} | {d1 / max(d2, 1e-9):.2f} |"
        )
    return "\n".join(lines)


def main() -> int:
    """Command line; returns the exit code."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, required=True, help="speakerforge run folder, checkpoint or model file")
    p.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--sets", default=",".join(SETS))
    p.add_argument("--lists", type=Path, default=LISTS)
    p.add_argument("--cache", type=Path, default=ROOT / "exp" / "bench-cache" / "accuracy")
    p.add_argument("--mean-sub", action="store_true", help="subtract each set's mean embedding (ours only)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    unknown = [s for s in sets if not (args.lists / f"{s}.trials").is_file()]
    if unknown:
        print(f"no trial list for {', '.join(unknown)} in {args.lists} (known: {', '.join(SETS)})", file=sys.stderr)
        return 2
    if not args.shared.is_dir():
        print(f"{args.shared}: shared data folder not found (--shared)", file=sys.stderr)
        return 2
    try:
        embed_theirs, stats = resemblyzer_embedder()
    except ImportError as exc:
        print(f"{INSTALL}\n({exc})", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    tag = content_hash(args.model)

    def embed_ours(waves: list[np.ndarray], names: list[str]) -> np.ndarray:
        return model.embed_waveforms(waves, names=names)

    rows = []
    for name in sets:
        trials = read_trials(args.lists / f"{name}.trials")
        keys = list(dict.fromkeys(trials.enroll + trials.test))
        ours = cached_embeddings(args.cache / f"ours-{tag}-{name}.npz", keys, args.shared, embed_ours, "ours")
        theirs = cached_embeddings(
            args.cache / f"resemblyzer-0.1.4-{name}.npz", keys, args.shared, embed_theirs, "resemblyzer"
        )
        rows.append(evaluate(name, ours, theirs, trials, args.mean_sub))
    print(
        f"model {args.model} (sha256 {tag}), {model.embedding_dim}-d; "
        f"mean subtraction: {'on' if args.mean_sub else 'off'}"
    )
    print(table(rows))
    if stats["untrimmed"]:
        print(f"resemblyzer: {stats['untrimmed']} clips had under 0.1 s voiced after its VAD; embedded untrimmed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
