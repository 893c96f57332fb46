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


SCORINGS = ("cosine", "mean-sub", "as-norm")


def evaluate(
    name: str,
    ours: Embeddings,
    theirs: Embeddings,
    trials: Trials,
    scoring: str = "cosine",
    cohort: Embeddings | None = None,
    top_n: int = 100,
) -> dict:
    """EER and minDCF(0.01) of both models on one trial list. `scoring` applies to ours only (resemblyzer is scored
    as published): `mean-sub` subtracts the set's own mean embedding (label-free), `as-norm` also normalises each
    score against `cohort` (training speakers' embeddings), AS-norm over its `top_n` closest."""
    mean = ours.matrix.mean(axis=0) if scoring in ("mean-sub", "as-norm") else None
    cohort = cohort if scoring == "as-norm" else None
    out = {"set": name, "trials": len(trials), "target": int(trials.labels.sum()), "scoring": scoring}
    for who, emb, m, c in (("ours", ours, mean, cohort), ("theirs", theirs, None, None)):
        scores = score_trials(emb, trials, mean=m, cohort=c, top_n=min(top_n, len(c) if c else top_n))
        metrics = compute_metrics(scores, trials.labels, p_targets=(0.01,))
        out[who] = (metrics["eer"], metrics["min_dcf"]["0.01"]["value"])
    return out


def cohort_keys(manifest: Path, shared: Path, per_speaker: int = 3) -> tuple[list[str], list[str]]:
    """(keys relative to `shared`, their speakers): the first `per_speaker` clips of each training speaker of a
    `recipes/shared-data` train list (`train.tsv`, `key speaker corpus`)."""
    keys: list[str] = []
    speakers: list[str] = []
    seen: dict[str, int] = {}
    for line in manifest.read_text().splitlines()[1:]:
        key, spk = line.split("\t")[:2]
        if seen.get(spk, 0) < per_speaker and (shared / key.partition("@")[0]).is_file():
            seen[spk] = seen.get(spk, 0) + 1
            keys.append(key)
            speakers.append(spk)
    if not keys:
        raise SystemExit(f"{manifest}: no training clips found under {shared} for the AS-norm cohort")
    return keys, speakers


def speaker_means(emb: Embeddings, speakers: list[str]) -> Embeddings:
    """One mean embedding per speaker (the AS-norm cohort), in the embeddings' own scale: scoring subtracts the
    dev set's mean from the cohort too, so the cohort must not be length-normalised first."""
    names = list(dict.fromkeys(speakers))
    index = {n: i for i, n in enumerate(names)}
    rows = [index[s] for s in speakers]
    sums = np.zeros((len(names), emb.matrix.shape[1]), dtype=np.float64)
    np.add.at(sums, rows, emb.matrix.astype(np.float64))
    counts = np.bincount(rows, minlength=len(names))[:, None]
    return Embeddings(names, (sums / counts).astype(np.float32), source=f"{emb.source} (speaker means)")


def table(rows: list[dict]) -> str:
    """The printed Markdown table."""
    lines = [
        "| set | trials (target) | scoring (ours) | EER ours | EER resemblyzer | ratio "
        "| minDCF(0.01) ours | minDCF(0.01) resemblyzer | ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        (e1, d1), (e2, d2) = r["ours"], r["theirs"]
        lines.append(
            f"| {r['set']} | {r['trials']} ({r['target']}) | {r['scoring']} | {e1:.2f}% | {e2:.2f}% "
            f"| {e1 / max(e2, 1e-9):.2f} | {d1:.3f} | {d2:.3f} | {d1 / max(d2, 1e-9):.2f} |"
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
    p.add_argument("--mean-sub", action="store_true", help="only the `mean-sub` scoring (as --scoring mean-sub)")
    p.add_argument(
        "--scoring",
        default="cosine",
        help=f"comma-separated, of {', '.join(SCORINGS)} (ours only; default cosine); `all` for the three",
    )
    p.add_argument(
        "--cohort",
        type=Path,
        default=LISTS / "train.tsv",
        help="training list whose speakers (3 clips each, averaged) are the AS-norm cohort",
    )
    p.add_argument("--top-n", type=int, default=100, help="AS-norm: closest cohort speakers used per side")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    scorings = ["mean-sub"] if args.mean_sub else [s.strip() for s in args.scoring.split(",") if s.strip()]
    scorings = list(SCORINGS) if scorings == ["all"] else scorings
    if not scorings or any(s not in SCORINGS for s in scorings):
        print(f"--scoring {args.scoring}: choose from {', '.join(SCORINGS)} or all", file=sys.stderr)
        return 2
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

    cohort = None
    if "as-norm" in scorings:
        ckeys, cspk = cohort_keys(args.cohort, args.shared)
        clips = cached_embeddings(args.cache / f"ours-{tag}-cohort.npz", ckeys, args.shared, embed_ours, "cohort")
        cohort = speaker_means(clips, cspk)
    rows = []
    for name in sets:
        trials = read_trials(args.lists / f"{name}.trials")
        keys = list(dict.fromkeys(trials.enroll + trials.test))
        ours = cached_embeddings(args.cache / f"ours-{tag}-{name}.npz", keys, args.shared, embed_ours, "ours")
        theirs = cached_embeddings(
            args.cache / f"resemblyzer-0.1.4-{name}.npz", keys, args.shared, embed_theirs, "resemblyzer"
        )
        rows += [evaluate(name, ours, theirs, trials, sc, cohort, args.top_n) for sc in scorings]
    cohort_note = f"; AS-norm cohort: {len(cohort)} training speakers, top {args.top_n}" if cohort else ""
    print(f"model {args.model} (sha256 {tag}), {model.embedding_dim}-d{cohort_note}")
    print(table(rows))
    if stats["untrimmed"]:
        print(f"resemblyzer: {stats['untrimmed']} clips had under 0.1 s voiced after its VAD; embedded untrimmed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
