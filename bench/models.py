"""Inference speed of every registered embedding model, ours (eager and `optimize_for_inference`) vs 3D-Speaker.

    .venv/bin/python bench/models.py                      # all registered families, batch 1 and 16, 3 s inputs
    .venv/bin/python bench/models.py --models campplus eres2net --batches 1 --rounds 15

Families come from the model registry, so a newly registered one is measured without touching this file; its
3D-Speaker counterpart (`speakerlab`, test-only) is looked up in `REFERENCES` below, and its weights are copied into
ours through the family module's `speakerlab_key_map`, so all three versions compute the same function (the max
output difference is printed). The three are timed interleaved, round by round (each timed call right after an
untimed one of the same version, so that its weights are in cache as in steady use), and the speed-up is the median of
the per-round ratios: on a shared machine, load changes between rounds but hits a round's three runs alike. The
best-of ratio compares the fastest runs. On a machine too loaded for wall-clock timing, `--threads 1 --clock cpu`
measures compute cost instead (process CPU time is not charged while the process waits for a core).
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from speakerforge.models.fuse import optimize_for_inference
from speakerforge.models.registry import build_model, list_models


@dataclass
class Case:
    """One benchmarked configuration: our registered name and arguments, and speakerlab's class and arguments."""

    label: str
    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    reference: str | None = None  # "speakerlab.module:Class"
    reference_kwargs: dict[str, Any] = field(default_factory=dict)


# Registered name -> speakerlab class and the arguments that make it our default model.
REFERENCES: dict[str, tuple[str, dict[str, Any]]] = {
    "campplus": ("speakerlab.models.campplus.DTDNN:CAMPPlus", {"feat_dim": 80, "embedding_size": 192}),
    "eres2net": ("speakerlab.models.eres2net.ERes2Net:ERes2Net", {"feat_dim": 80, "embedding_size": 192}),
    "ecapa_tdnn": (
        "speakerlab.models.ecapa_tdnn.ECAPA_TDNN:ECAPA_TDNN",
        {"input_size": 80, "lin_neurons": 192, "channels": [512, 512, 512, 512, 1536]},
    ),
    "resnet34": ("speakerlab.models.resnet.ResNet:ResNet", {"feat_dim": 80, "embedding_size": 192}),
}
ALIASES = {"resnet": "resnet34"}  # registered names whose default model is another's: measured once

# Non-default configurations worth their own line.
EXTRA_CASES = [
    Case(
        "eres2net[large]",
        "eres2net",
        {"variant": "large"},
        "speakerlab.models.eres2net.ERes2Net:ERes2Net",
        {"feat_dim": 80, "embedding_size": 192, "m_channels": 64},
    ),
    # WeSpeaker's SimAM-ResNet34 (VoxBlink2): its reference is the transcription in tests/test_model_zoo.py
    Case(
        "simam_resnet34",
        "resnet",
        {"depth": 34, "simam": True, "m_channels": 64, "embedding_dim": 256, "pooling": "ASP", "two_emb_layer": False},
        "tests.test_model_zoo:WsSimAMResNet",
        {"num_blocks": (3, 4, 6, 3), "in_planes": 64, "embed_dim": 256},
    ),
]
REFERENCES["eres2netv2"] = (
    "speakerlab.models.eres2net.ERes2NetV2:ERes2NetV2",
    {"feat_dim": 80, "embedding_size": 192, "baseWidth": 26, "scale": 2, "expansion": 2},
)
REFERENCES["res2net"] = ("speakerlab.models.res2net.Res2Net:Res2Net", {"feat_dim": 80, "embedding_size": 192})
# WeSpeaker's Gemini DF-ResNet114 (voxceleb_gemini_dfresnet114_LM): the transcription in tests/test_model_zoo.py
REFERENCES["gemini_dfresnet"] = (
    "tests.test_model_zoo:WsGeminiDFResNet",
    {"depths": (3, 3, 27, 3), "dims": (32, 32, 64, 128, 256), "embed_dim": 256},
)
# WeSpeaker's ReDimNet2-B6 (voxceleb_redimnet2_B6_LM), 72 mel bins: the transcription in tests/ws_redimnet2.py
REFERENCES["redimnet2"] = ("tests.ws_redimnet2:ReDimNet2B6", {"embed_dim": 192})
# WeSpeaker's W2V-BERT 2.0 + adapter MFA (the Hugging Face encoder's forward): the transcription in tests/ws_w2vbert.py
REFERENCES["w2vbert_mfa"] = ("tests.ws_w2vbert:W2VBertMFAOnFeatures", {"embed_dim": 256})


def registry_cases() -> list[Case]:
    """One case per registered model (with its speakerlab reference when known), then the extra ones."""
    cases = []
    for name in list_models():
        if name in ALIASES:
            continue
        ref, ref_kwargs = REFERENCES.get(name, (None, {}))
        cases.append(Case(name, name, {}, ref, ref_kwargs))
    return cases + [c for c in EXTRA_CASES if c.name in list_models()]


def _import_reference(path: str, kwargs: dict[str, Any]) -> nn.Module | None:
    module, cls = path.split(":")
    try:
        return getattr(importlib.import_module(module), cls)(**kwargs)
    except ModuleNotFoundError as exc:
        print(f"  (reference {path} unavailable: {exc}; install speakerlab==0.0.6 --no-deps)")
        return None


def _key_map(model: nn.Module, ref: nn.Module) -> Callable[[dict], dict]:
    if hasattr(ref, "wespeaker_arch"):  # a WeSpeaker-layout reference: our converter maps it
        from speakerforge.models.convert import convert_state_dict

        return lambda sd: convert_state_dict(sd, "wespeaker", ref.wespeaker_arch, model)
    return getattr(importlib.import_module(type(model).__module__), "speakerlab_key_map", lambda sd: sd)


def build_versions(case: Case) -> dict[str, nn.Module]:
    """`speakerlab` (if available), `ours` (eager) and `ours-opt`, all eval mode, with the same weights."""
    ours = build_model(case.name, **case.kwargs).eval()
    versions: dict[str, nn.Module] = {}
    if case.reference:
        ref = _import_reference(case.reference, case.reference_kwargs)
        if ref is not None:
            ref.eval()
            try:
                ours.load_state_dict(_key_map(ours, ref)(ref.state_dict()))
                versions["speakerlab"] = ref
            except RuntimeError as exc:
                print(f"  (weights of {case.reference} do not fit {case.label}: {str(exc)[:200]}; not compared)")
    versions["ours"] = ours
    versions["ours-opt"] = optimize_for_inference(ours)
    return versions


def time_interleaved(
    versions: dict[str, nn.Module], x: torch.Tensor, rounds: int, clock: Callable[[], float] = time.perf_counter
) -> dict[str, list[float]]:
    """Seconds per forward for each version, `rounds` times, the versions taking turns inside every round."""
    times: dict[str, list[float]] = {k: [] for k in versions}
    with torch.inference_mode():
        for model in versions.values():  # warm-up: allocator, oneDNN primitive caches
            model(x.clone())
            model(x.clone())
        for _ in range(rounds):
            for name, model in versions.items():
                model(x.clone())  # untimed: bring this version's weights back into the caches, as in steady use
                inp = x.clone()  # some references modify their input in place
                t0 = clock()
                model(inp)
                times[name].append(clock() - t0)
    return times


def max_output_diff(versions: dict[str, nn.Module], x: torch.Tensor) -> dict[str, float]:
    """Largest absolute difference of each version's embeddings from the first version's, relative to the largest
    absolute value of the first version's."""
    with torch.inference_mode():
        outs = {k: m(x.clone()) for k, m in versions.items()}
    first = next(iter(outs.values()))
    scale = first.abs().max().item() or 1.0
    return {k: (v - first).abs().max().item() / scale for k, v in list(outs.items())[1:]}


def report(case: Case, batch: int, times: dict[str, list[float]], diffs: dict[str, float]) -> None:
    base = "speakerlab" if "speakerlab" in times else None
    for name, ts in times.items():
        med = statistics.median(ts)
        line = f"{case.label:<18} B={batch:<3} {name:<11} {batch / med:8.1f} utt/s  (median {med * 1e3:8.1f} ms"
        line += f", min {min(ts) * 1e3:8.1f} ms)"
        if base and name != base:
            ratios = [r / o for r, o in zip(times[base], ts)]
            line += (
                f"  x{statistics.median(ratios):.2f} vs speakerlab (best-of x{min(times[base]) / min(ts):.2f})"
                f"  max rel. diff {diffs.get(name, 0.0):.1e}"
            )
        print(line, flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", help="case labels to run (default: all registered)")
    parser.add_argument("--batches", nargs="*", type=int, default=[1, 16])
    parser.add_argument("--frames", type=int, default=300, help="input length (100 frames = 1 s)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: process CPU time, robust to a loaded machine with --threads 1 (compute cost)",
    )
    args = parser.parse_args(argv)
    clock = time.perf_counter if args.clock == "wall" else time.process_time

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cases = registry_cases()
    if args.models:
        unknown = set(args.models) - {c.label for c in cases}
        if unknown:
            parser.error(f"unknown model(s) {sorted(unknown)}; known: {[c.label for c in cases]}")
        cases = [c for c in cases if c.label in args.models]
    print(
        f"torch {torch.__version__}, {args.threads} threads, {args.frames} frames, batches {args.batches}, "
        f"{args.rounds} interleaved rounds, {args.clock} clock"
    )
    for case in cases:
        versions = build_versions(case)
        for batch in args.batches:
            x = torch.randn(batch, args.frames, getattr(versions["ours"], "feat_dim", 80))
            diffs = max_output_diff(versions, x)
            report(case, batch, time_interleaved(versions, x, args.rounds, clock), diffs)


if __name__ == "__main__":
    main()
