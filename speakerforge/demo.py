"""`speakerforge demo`: the whole pipeline on the built-in demo corpus, as the commands a user would type.

Each step is a `speakerforge ...` command run in-process and printed first, so the demo doubles as a worked example.
Steps whose outputs exist are skipped (training steps resume), so a second run reuses what the first built.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from speakerforge.atomic import atomic_write_text
from speakerforge.errors import SpeakerforgeError

log = logging.getLogger(__name__)

PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def configs_dir() -> Path:
    """The recipe folder of the source tree (the demo runs from a clone, as `make demo` does)."""
    d = PACKAGE_ROOT / "configs"
    if not d.is_dir():
        raise SpeakerforgeError(f"{d}: recipe folder not found; run the demo from a clone of the repository")
    return d


def shared_data() -> Path | None:
    """Real recorded speech beside the repository (../shared/data), if present."""
    env = os.environ.get("SPEAKERFORGE_SHARED_DATA")
    for cand in ([Path(env)] if env else []) + [PACKAGE_ROOT.parent / "shared" / "data"]:
        if cand.is_dir():
            return cand
    return None


@dataclass
class System:
    """One evaluated model of the demo: name, experiment folder and its metrics once computed."""

    name: str
    model: Path
    metrics: dict = field(default_factory=dict)


class Demo:
    def __init__(self, out: Path, quick: bool = False):
        self.out = out.resolve()
        self.quick = quick
        self.systems: list[System] = []
        self.notes: list[str] = []
        self.timings: list[tuple[str, float]] = []
        self.cfg = configs_dir()

    # -------------------------------------------------------------------------------------------------- running
    def run_cli(self, title: str, argv: list[str], done: Path | None = None) -> None:
        """Print and run `speakerforge ARGV`; skipped when `done` already exists."""
        from speakerforge.cli import main

        shown = "speakerforge " + " ".join(shlex.quote(a) for a in argv)
        if done is not None and done.exists():
            print(f"\n== {title}: done already ({_rel(done)}), skipping\n   $ {shown}", flush=True)
            return
        print(f"\n== {title}\n   $ {shown}", flush=True)
        t0 = time.time()
        code = main(argv)
        self.timings.append((title, time.time() - t0))
        if code != 0:
            raise SpeakerforgeError(f"demo step {title!r} failed (exit {code}); re-run `make demo` to resume")

    def step(self, title: str, fn: Callable[[], object]) -> None:
        print(f"\n== {title}", flush=True)
        t0 = time.time()
        fn()
        self.timings.append((title, time.time() - t0))

    # -------------------------------------------------------------------------------------------------- pipeline
    def run(self) -> Path:
        t_start = time.time()
        corpus = self.out / "corpus"
        spk = ["--train-speakers", "8", "--test-speakers", "3"] if self.quick else []
        self.run_cli(
            "prepare the demo corpus (Kokoro TTS voices)",
            ["prepare", "demo", "--out", str(corpus), *spk],
            done=corpus / "corpus.json",
        )
        self.run_cli("validate the manifests", ["validate", str(corpus / "train.jsonl"), str(corpus / "test.jsonl")])
        self.step(
            "feature pass (Kaldi-compatible fbank)",
            lambda: feature_summary([corpus / "train.jsonl", corpus / "test.jsonl"], self.out / "features.json"),
        )
        work = self.out / "work"
        sources = self.training_sources(corpus, work)
        quick = ["--set", "train.epochs=2", "--set", "data.batch_size=8"] if self.quick else []
        exp = self.out / "exp"
        self.run_cli(
            "train a small ECAPA-TDNN (resumes if interrupted)",
            [
                "train",
                "--config",
                str(self.cfg / "demo-ecapa.yaml"),
                "--exp",
                str(exp / "supervised"),
                "--data",
                *sources,
                *quick,
            ],
        )
        self.evaluate("supervised", exp / "supervised", corpus)
        self.run_cli(
            "fine-tune on the held-out training speakers, in two stages (head only, then all)",
            self.finetune_argv(exp / "supervised", exp / "finetuned", work / "train_b.jsonl"),
        )
        self.evaluate("fine-tuned (staged)", exp / "finetuned", corpus)
        if (self.cfg / "demo-sdpn.yaml").is_file():
            self.ssl(corpus, work, exp)
        return self.report(corpus, time.time() - t_start)

    def training_sources(self, corpus: Path, work: Path) -> list[str]:
        """Three quarters of the TTS training speakers (the rest fine-tune), plus LibriSpeech from ../shared/data
        when it is there."""
        self.step(
            "split the training speakers for the fine-tuning demo",
            lambda: split_speakers(corpus / "train.jsonl", work, fraction=0.75),
        )
        sources = [str(work / "train_a.jsonl")]
        real = shared_data()
        if real is not None and (real / "librispeech-251").is_dir() and not self.quick:
            self.run_cli(
                "prepare real speech (LibriSpeech subset) as a second training source",
                ["prepare", "librispeech", str(real / "librispeech-251"), "--out", str(self.out / "libri")],
                done=self.out / "libri" / "train.jsonl",
            )
            libri = next(iter(sorted((self.out / "libri").glob("*.jsonl"))), None)
            if libri is not None:
                sources.append(str(libri))
        else:
            print("\n(../shared/data/librispeech-251 not found: training on the TTS corpus alone)")
        return sources

    def finetune_argv(self, init: Path, out: Path, data: Path, *extra: str) -> list[str]:
        """`speakerforge finetune` with the demo's staged config (`--quick`: one epoch per stage)."""
        quick = ["--set", "stages=[{name: head, epochs: 1, freeze: [backbone]}, {name: all, epochs: 1}]"]
        quick += ["--set", "data.batch_size=8"]
        argv = ["finetune", "--config", str(self.cfg / "demo-finetune.yaml"), "--init", str(init), "--exp", str(out)]
        return [*argv, "--data", str(data), *extra, *(quick if self.quick else [])]

    def ssl(self, corpus: Path, work: Path, exp: Path) -> None:
        quick = ["--set", "train.epochs=1", "--set", "data.batch_size=8"] if self.quick else []
        self.run_cli(
            "self-supervised SDPN pretraining on all training audio, labels ignored",
            ["pretrain", "--config", str(self.cfg / "demo-sdpn.yaml"), "--exp", str(exp / "sdpn"), "--data"]
            + [str(corpus / "train.jsonl"), *quick],
        )
        self.evaluate("SDPN (no labels)", exp / "sdpn", corpus)
        # Linear probe: the backbone is frozen, so its embeddings (and EER) are the SSL model's; what it adds is a
        # speaker classifier, reported by its training accuracy.
        probe = exp / "sdpn-probe"
        teacher = ["--init-part", "teacher"]
        self.run_cli(
            "fine-tune from the SDPN teacher: linear probe (backbone frozen)",
            self.finetune_argv(exp / "sdpn", probe, corpus / "train.jsonl", *teacher, "--freeze", "backbone"),
        )
        self.notes.append(
            f"SDPN + linear probe: backbone frozen, so its embeddings and EER are those of "
            f"'SDPN (no labels)'; the probe's final training accuracy is {_last_acc(probe):.0%}."
        )
        full = exp / "sdpn-finetune"
        self.run_cli(
            "fine-tune from the SDPN teacher: all layers, staged (head first, then low LR)",
            self.finetune_argv(exp / "sdpn", full, corpus / "train.jsonl", *teacher),
        )
        self.evaluate("SDPN + fine-tune (staged)", full, corpus)

    def evaluate(self, name: str, model: Path, corpus: Path) -> None:
        d = self.out / "eval" / model.name
        emb, scores = d / "test_emb.npz", d / "scores.txt"
        stamp = model / "model.safetensors"
        fresh = emb.exists() and stamp.exists() and emb.stat().st_mtime >= stamp.stat().st_mtime
        self.run_cli(
            f"extract embeddings: {name}",
            ["extract", "--model", str(model), "--data", str(corpus / "test.jsonl"), "--out", str(emb)],
            done=emb if fresh else None,
        )
        self.run_cli(
            f"score trials: {name}",
            ["score", "--embeddings", str(emb), "--trials", str(corpus / "trials.txt"), "--out", str(scores)],
            done=scores if fresh and scores.exists() else None,
        )
        self.run_cli(f"EER / minDCF: {name}", ["eval", "--scores", str(scores), "--trials", str(corpus / "trials.txt")])
        self.systems.append(System(name, model, json.loads((d / "metrics.json").read_text())))

    def report(self, corpus: Path, seconds: float) -> Path:
        out = self.out / "report"
        out.mkdir(parents=True, exist_ok=True)
        self.plot_systems(corpus, out)
        lines = self.report_lines(corpus, seconds)
        report = out / "report.md"
        atomic_write_text(report, "\n".join(lines) + "\n")
        print("\n" + "\n".join(lines[4 : 4 + 2 + len(self.systems)] + [f"- {n}" for n in self.notes]))
        print(f"\nreport: {_rel(report)}\nDET curve: {_rel(out / 'det.png')}")
        return report

    def plot_systems(self, corpus: Path, out: Path) -> None:
        """`speakerforge eval` of every system on one DET plot (`out/det.png`)."""
        from speakerforge.cli import main

        first, *rest = self.systems
        args = ["eval", "--scores", str(self.out / "eval" / first.model.name / "scores.txt")]
        args += ["--trials", str(corpus / "trials.txt"), "--out-dir", str(out), "--names"]
        args += [*[s.name for s in self.systems], "--title", "speakerforge demo: synthetic TTS test speakers"]
        if rest:
            args[5:5] = ["--compare", *[str(self.out / "eval" / s.model.name / "scores.txt") for s in rest]]
        print("\n== DET curves of every system", flush=True)
        main(["--quiet", *args])

    def report_lines(self, corpus: Path, seconds: float) -> list[str]:
        lines = [
            "# speakerforge demo report",
            "",
            f"Corpus: `{_rel(corpus)}` (synthetic Kokoro TTS voices; far easier than real speech, not a "
            "headline figure). Trials: VoxCeleb format, test speakers disjoint from training.",
            "",
            "| system | EER (%) | minDCF p=0.01 | minDCF p=0.05 | model |",
            "|---|---|---|---|---|",
        ]
        for s in self.systems:
            m = s.metrics
            dcf = m.get("min_dcf", {})
            lines.append(
                f"| {s.name} | {m['eer']:.2f} | {dcf.get('0.01', {}).get('value', float('nan')):.3f} | "
                f"{dcf.get('0.05', {}).get('value', float('nan')):.3f} | `{_rel(s.model)}` |"
            )
        curves = [
            f"`{_rel(s.model / 'training_curves.png')}`"
            for s in self.systems
            if (s.model / "training_curves.png").exists()
        ]
        lines += ["", *[f"- {n}" for n in self.notes], "", "![DET](det.png)", ""]
        lines += ["Training curves: " + ", ".join(curves), "", "## Step times (this run)", ""]
        lines += [f"- {t}: {sec:.1f} s" for t, sec in self.timings]
        return [*lines, "", f"Total: {seconds / 60:.1f} min"]


def _rel(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(p)


# ------------------------------------------------------------------------------------------------------ helpers
def _last_acc(exp: Path) -> float:
    """Training accuracy of the last logged step of a run."""
    rows = [json.loads(x) for x in (exp / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return float(rows[-1]["acc"]) if rows else float("nan")


def split_speakers(manifest: Path, out: Path, fraction: float) -> tuple[Path, Path]:
    """Speakers sorted by name: the first `fraction` to `train_a.jsonl`, the rest to `train_b.jsonl`."""
    from speakerforge.data.manifest import read_manifest, write_manifest

    utts = read_manifest(manifest)
    speakers = sorted({str(u.spk) for u in utts})
    cut = max(1, min(len(speakers) - 1, int(round(len(speakers) * fraction))))
    first = set(speakers[:cut])
    a = write_manifest([u for u in utts if u.spk in first], out / "train_a.jsonl")
    b = write_manifest([u for u in utts if u.spk not in first], out / "train_b.jsonl")
    print(f"   {cut} speakers -> {_rel(a)}, {len(speakers) - cut} speakers -> {_rel(b)}")
    return a, b


def feature_summary(manifests: list[Path], out_json: Path) -> dict:
    """Compute fbank for every utterance (batched by length) and summarise hours, speakers and frames/s."""
    import torch

    from speakerforge.data.audio import load_audio
    from speakerforge.data.features import FeatureSpec
    from speakerforge.data.manifest import read_manifest
    from speakerforge.progress import progress_bar

    utts = [u for m in manifests for u in read_manifest(m)]
    frames = 0
    seconds = 0.0
    compute = 0.0
    for u in progress_bar(utts, desc="fbank", mininterval=1.0):
        wav = load_audio(u.path, u.start, u.end)
        seconds += len(wav) / 16000
        t0 = time.perf_counter()
        feats = FeatureSpec()(torch.from_numpy(wav))
        compute += time.perf_counter() - t0
        frames += feats.shape[0]
        if not torch.isfinite(feats).all():
            raise SpeakerforgeError(f"{u.where}: non-finite features")
    summary = {
        "utterances": len(utts),
        "speakers": len({u.spk for u in utts}),
        "hours": seconds / 3600,
        "frames": frames,
        "fbank_frames_per_s": frames / max(compute, 1e-9),
        "mean_seconds": seconds / max(1, len(utts)),
    }
    out_json.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_json, json.dumps(summary, indent=1))
    print(
        f"   {summary['utterances']} utterances, {summary['speakers']} speakers, {summary['hours']:.2f} h, "
        f"{frames:,} frames, fbank {summary['fbank_frames_per_s']:,.0f} frames/s (one utterance at a time)"
    )
    return summary
