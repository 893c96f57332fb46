"""A million-row manifest on this machine: read, validate, sample and start training, with time and peak memory.

The manifest is generated: 1,000,000 JSONL rows over 6,000 speakers whose paths repeat a small set of real audio
files (`--files`). Each phase runs in a fresh process, so that its peak RSS is its own:

1. `validate` without `--deep` (manifest read, duplicate IDs, one header read per distinct file);
2. the data side of a training start: manifest read + start-of-run checks + speaker index + one epoch plan;
3. a training run to its first step (tiny model), then the same command again (a resume): the second start must
   open no audio file for its checks (counted).

    .venv/bin/python bench/million.py [--rows 1000000] [--files 200] [--out /tmp/sf-million]

Goals: start-up (manifest read + checks) under 60 s and under 2 GB RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_manifest(out: Path, rows: int, files: int, speakers: int = 6000) -> Path:
    from speakerforge.data.corpora.synthetic import make_synthetic_corpus

    manifest = out / f"million-{rows}.jsonl"
    if manifest.is_file():
        return manifest
    corpus = make_synthetic_corpus(out / "audio", n_speakers=files // 4, utts_per_speaker=4, seconds=1.0, seed=0)
    paths = [u.path for u in corpus]
    with open(manifest.with_suffix(".tmp"), "w", encoding="utf-8") as f:
        for i in range(rows):
            path = paths[i % len(paths)]
            f.write(json.dumps({"key": f"utt{i:07d}", "wav": path, "spk": f"id{i % speakers:05d}", "dur": 1.0}) + "\n")
    manifest.with_suffix(".tmp").rename(manifest)
    return manifest


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def phase_validate(manifest: str) -> dict:
    from speakerforge.data.validate import validate_manifests

    t = time.perf_counter()
    report = validate_manifests([manifest])
    return {"seconds": time.perf_counter() - t, "peak_mb": _peak_mb(), "problems": len(report.problems)}


def phase_data(manifest: str, exp: str) -> dict:
    from speakerforge.data.sampling import MixedSampler, SpeakerIndex, load_sources
    from speakerforge.data.validate import check_training_rows

    times = {}
    t = time.perf_counter()
    sources = load_sources([(manifest, 1.0, "")])
    times["read"] = time.perf_counter() - t
    t = time.perf_counter()
    bad = check_training_rows([(s.path, s.utts) for s in sources], Path(exp) / "audio-checks.json")
    times["checks"] = time.perf_counter() - t
    t = time.perf_counter()
    speakers = SpeakerIndex(sources)
    sampler = MixedSampler([len(s.utts) for s in sources], [1.0], seed=0)
    batches = sampler.batches(0, 256)
    times["plan"] = time.perf_counter() - t
    return {
        **{f"{k}_seconds": v for k, v in times.items()},
        "peak_mb": _peak_mb(),
        "speakers": speakers.num_base,
        "batches": len(batches),
        "bad": sum(len(b) for b in bad),
    }


def phase_train(manifest: str, exp: str) -> dict:
    """Time from the Trainer's construction to the end of its first step; counts audio headers opened."""
    from speakerforge.config import SourceConfig, load_config
    from speakerforge.data import validate
    from speakerforge.train.trainer import RunOptions, StopForTest, Trainer

    opened = {"n": 0}
    real_info = validate.audio_info

    def counting(path):
        opened["n"] += 1
        return real_info(path)

    validate.audio_info = counting  # type: ignore[assignment]
    cfg = load_config(
        None,
        [
            "model.name=ecapa_tdnn",
            "model.args={channels: 16, embedding_dim: 16}",
            "data.batch_size=32",
            "data.crop_seconds=0.5",
            "train.epochs=1",
            "train.threads=1",
            "train.save_every_steps=1",
            "train.integrity_check=false",
        ],
    )
    cfg.data.sources = [SourceConfig(path=manifest)]
    t = time.perf_counter()
    try:
        Trainer(cfg, exp, RunOptions(stop_after_steps=1, allow_config_change=True)).run()
    except StopForTest:
        pass
    return {
        "seconds_to_first_step": time.perf_counter() - t,
        "peak_mb": _peak_mb(),
        "audio_headers_opened": opened["n"],
    }


def _in_child(phase: str, *args: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--phase", phase, *args], capture_output=True, text=True, check=False, cwd=ROOT
    )
    if out.returncode != 0:
        raise SystemExit(f"phase {phase} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--files", type=int, default=200)
    p.add_argument("--out", type=Path, default=Path("/tmp/sf-million"))
    p.add_argument("--phase", help=argparse.SUPPRESS)
    p.add_argument("args", nargs="*", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.phase:
        fn = {"validate": phase_validate, "data": phase_data, "train": phase_train}[a.phase]
        print(json.dumps(fn(*a.args)))
        return
    a.out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    manifest = make_manifest(a.out, a.rows, a.files)
    print(f"manifest: {manifest} ({a.rows} rows over {a.files} files; made in {time.perf_counter() - t:.1f} s)")
    exp = a.out / "exp"
    if exp.exists():
        import shutil

        shutil.rmtree(exp)
    exp.mkdir()
    results = {
        "validate": _in_child("validate", str(manifest)),
        "data (first start)": _in_child("data", str(manifest), str(exp)),
        "data (resume)": _in_child("data", str(manifest), str(exp)),
        "train to first step": _in_child("train", str(manifest), str(exp / "run")),
        "train, second start": _in_child("train", str(manifest), str(exp / "run")),
    }
    for name, r in results.items():
        print(f"{name:22s} " + ", ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))


if __name__ == "__main__":
    main()
