"""GPU check: full-size CAM++ and ERes2Net training steps on one CUDA device, fed from tar shards.

For each model and precision (bf16 autocast; fp16 autocast with the gradient scaler) it prints samples/s of
(a) the training step on batches already on the GPU and (b) the same step fed by the real shard pipeline
(DataLoader over shards, `--workers` workers, pinned memory, fbank on the GPU), the ratio b/a (goal >= 0.9), the
peak GPU memory, and whether `torch.compile` and channels-last (where the model supports it) keep the outputs
equal to eager/contiguous, with their speed.

    .venv/bin/python bench/gpu.py                      # on a CUDA machine: full size, 8 workers (< 8 minutes)
    .venv/bin/python bench/gpu.py --cpu                # reduced mode: tiny models, bf16 only, no compile

Without a GPU it runs the reduced mode (what `tests/test_bench_gpu.py` runs); its figures say nothing about a GPU.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FULL = {"campplus": {}, "eres2net": {}}  # the published sizes (CAM++ 7.2M, ERes2Net-base 6.6M parameters)
TINY = {
    "campplus": dict(embedding_dim=32, m_channels=8, init_channels=32, growth_rate=8, bn_size=2, block_layers=(2, 2)),
    "eres2net": dict(embedding_dim=32, m_channels=8, num_blocks=(1, 1, 1, 1)),
}
TINY["campplus"].update(block_kernels=(3, 3), block_dilations=(1, 2))


def make_shards(root: Path, utts: int, seconds: float, speakers: int) -> Path:
    from speakerforge.data.corpora.synthetic import make_synthetic_corpus
    from speakerforge.data.shards import write_shards

    make_synthetic_corpus(root / "corpus", speakers, -(-utts // speakers), seconds=seconds, manifest_name="m.jsonl")
    write_shards([root / "corpus" / "m.jsonl"], root / "shards", utts_per_shard=max(1, utts // 16))
    return root / "shards"


class Step:
    """One training step as the trainer takes it: fbank + mean norm on the device, model + AAM head, optimizer."""

    def __init__(self, name: str, args: dict, classes: int, device: torch.device, precision: str, channels_last: bool):
        from speakerforge.models import build_model
        from speakerforge.train.objectives import SupervisedModule

        self.module = SupervisedModule(build_model(name, **args), classes, margin=0.2).to(device)
        if channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)
        self.opt = torch.optim.SGD(self.module.parameters(), lr=0.1, momentum=0.9)
        self.device = device
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    def __call__(self, wav: torch.Tensor, labels: torch.Tensor) -> float:
        from speakerforge.data.features import fbank, mean_normalize

        feats = mean_normalize(fbank(wav))
        with torch.autocast(self.device.type, dtype=self.dtype):
            loss, _ = self.module(feats, labels)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        return float(loss.detach())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rate_on_device(step: Step, batch: int, samples: int, steps: int, classes: int) -> float:
    """(a): the same few batches, already on the device."""
    g = torch.Generator().manual_seed(0)
    batches = [
        (
            (torch.rand(batch, samples, generator=g) - 0.5).to(step.device),
            torch.randint(0, classes, (batch,)).to(step.device),
        )
        for _ in range(2)
    ]
    for i in range(2):  # warm-up (cuDNN autotuning, allocator)
        step(*batches[i % 2])
    _sync(step.device)
    t = time.perf_counter()
    for i in range(steps):
        step(*batches[i % 2])
    _sync(step.device)
    return batch * steps / (time.perf_counter() - t)


def rate_from_shards(step: Step, shards: Path, batch: int, crop: float, steps: int, workers: int) -> float:
    """(b): the trainer's data path: sampler plan -> CropDataset over shards -> DataLoader -> device."""
    from speakerforge.data.datasets import CropDataset, collate_crops
    from speakerforge.data.sampling import MixedSampler, SpeakerIndex, load_sources
    from speakerforge.data.shards import ReaderLayout, shard_sizes

    sources = load_sources([(str(shards), 1.0, "")])
    n = len(sources[0].utts)
    sampler = MixedSampler(
        [n],
        [1.0],
        seed=0,
        samples_per_epoch=batch * (steps + 2),
        shards={0: shard_sizes(sources[0].utts) or []},
        layout=ReaderLayout(batch, workers=workers),
    )
    dataset = CropDataset(sources, SpeakerIndex(sources), crop_seconds=crop, seed=0)
    micro = [[(0, d) for d in b] for b in sampler.batches(0, batch)]
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=micro,
        num_workers=workers,
        collate_fn=collate_crops,
        pin_memory=step.device.type == "cuda",
        prefetch_factor=4 if workers else None,
    )
    it = iter(loader)
    for _ in range(2):  # warm-up, and the workers' start
        b = next(it)
        step(b["wav"].to(step.device, non_blocking=True), b["label"].to(step.device, non_blocking=True))
    _sync(step.device)
    t = time.perf_counter()
    done = 0
    for b in it:
        step(b["wav"].to(step.device, non_blocking=True), b["label"].to(step.device, non_blocking=True))
        done += len(b["label"])
    _sync(step.device)
    return done / (time.perf_counter() - t)


def check_variants(name: str, args: dict, device: torch.device, frames: int, compile_: bool) -> list[str]:
    """Eval-mode outputs of torch.compile and channels-last against eager: max difference and speed."""
    from speakerforge.models import build_model

    torch.manual_seed(0)
    model = build_model(name, **args).to(device).eval()
    x = torch.randn(8, frames, 80, device=device)
    lines = []

    def timed(fn) -> tuple[torch.Tensor, float]:
        with torch.no_grad():
            out = fn(x)
            _sync(device)
            t = time.perf_counter()
            for _ in range(3):
                out = fn(x)
            _sync(device)
        return out.float(), (time.perf_counter() - t) / 3

    ref, t_ref = timed(model)
    variants = []
    if getattr(model, "channels_last_inference", False):
        cl = build_model(name, **args).to(device).eval()
        cl.load_state_dict(model.state_dict())
        cl = cl.to(memory_format=torch.channels_last)
        variants.append(("channels-last", cl))
    if compile_:
        variants.append(("torch.compile", torch.compile(model)))
    for label, fn in variants:
        out, t = timed(fn)
        diff = float((out - ref).abs().max())
        scale = float(ref.abs().max())
        ok = diff <= 1e-3 * max(1.0, scale)
        lines.append(
            f"  {name} {label}: max |diff| {diff:.2e} ({'equal' if ok else 'DIFFERENT'} within 1e-3), "
            f"{t * 1000:.1f} ms vs eager {t_ref * 1000:.1f} ms ({t_ref / t:.2f}x)"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cpu", action="store_true", help="reduced mode on CPU (also chosen when no GPU is visible)")
    p.add_argument("--models", default="campplus,eres2net")
    p.add_argument("--batch", type=int, default=0, help="default: 128 on GPU, 4 on CPU")
    p.add_argument("--steps", type=int, default=0, help="timed steps per figure (default: 20 on GPU, 2 on CPU)")
    p.add_argument("--crop", type=float, default=0.0, help="seconds per example (default: 2 on GPU, 0.5 on CPU)")
    p.add_argument("--workers", type=int, default=-1, help="DataLoader workers (default: 8 on GPU, 0 on CPU)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile check")
    p.add_argument("--budget", type=float, default=450.0, help="seconds; later figures are skipped past it")
    p.add_argument("--data", type=Path, default=None, help="folder for the generated corpus and shards")
    a = p.parse_args(argv)
    gpu = torch.cuda.is_available() and not a.cpu
    device = torch.device("cuda" if gpu else "cpu")
    batch = a.batch or (128 if gpu else 4)
    steps = a.steps or (20 if gpu else 2)
    crop = a.crop or (2.0 if gpu else 0.5)
    workers = a.workers if a.workers >= 0 else (8 if gpu else 0)
    precisions = ["bf16", "fp16"] if gpu else ["bf16"]
    sizes = FULL if gpu else TINY
    compile_ = gpu and not a.no_compile
    t0 = time.perf_counter()
    root = a.data or Path(tempfile.mkdtemp(prefix="sf-gpu-"))
    utts = batch * (steps + 2)
    speakers = 100 if gpu else 4
    shards = (
        root / "shards"
        if (root / "shards" / "shards.list").is_file()
        else make_shards(root, utts, crop + 0.5, speakers)
    )
    name = (
        torch.cuda.get_device_name(device)
        if gpu
        else "CPU (reduced mode: tiny models, figures say nothing about a GPU)"
    )
    print(
        f"device: {name}; batch {batch}, crop {crop:g} s, {steps} timed steps, {workers} workers; data ready in "
        f"{time.perf_counter() - t0:.0f} s"
    )
    samples = int(crop * 16000)
    ratios = []
    for model in a.models.split(","):
        for precision in precisions:
            if time.perf_counter() - t0 > a.budget:
                print(f"{model} {precision}: skipped (past --budget {a.budget:g} s)")
                continue
            if gpu:
                torch.cuda.reset_peak_memory_stats(device)
            step = Step(model, sizes[model], speakers, device, precision, channels_last=False)
            on_device = rate_on_device(step, batch, samples, steps, speakers)
            piped = rate_from_shards(step, shards, batch, crop, steps, workers)
            mem = f", peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB" if gpu else ""
            ratios.append(piped / on_device)
            print(
                f"{model} {precision}: (a) on device {on_device:.1f} samples/s, (b) from shards {piped:.1f} samples/s, "
                f"b/a {piped / on_device:.2f} (goal >= 0.9){mem}"
            )
            del step
        if time.perf_counter() - t0 <= a.budget:
            for line in check_variants(model, sizes[model], device, int(crop * 100), compile_):
                print(line)
    print(f"done in {time.perf_counter() - t0:.0f} s; lowest b/a {min(ratios) if ratios else float('nan'):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
