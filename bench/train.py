"""Training throughput on this machine, against references measured in the same run.

1. Our trainer's step with its full data pipeline (decode, crop, fbank, SpecAugment) vs the same steps on
   pre-loaded feature tensors: the data-loading overhead (goal: ratio >= 0.9).
2. Our model + AAM head vs speakerlab's model + its ArcMarginLoss in a plain loop on the same batch (goal >= 1.3x).
3. Achieved FLOP/s of the training step against the machine's measured fp32 matmul FLOP/s.

    .venv/bin/python bench/train.py [--model campplus|ecapa_tdnn] [--batch 32] [--steps 10] [--threads 2]
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


def matmul_flops(n: int = 1024, reps: int = 20) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t)


def step_flops(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Forward FLOPs from torch's counter; a training step is about 3x the forward."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        model(x)
    return 3.0 * counter.get_total_flops()


def bench_pipeline(model: str, batch: int, steps: int, crop: float) -> float:
    """Samples/s of the trainer with its whole data pipeline (decode, crop, fbank, SpecAugment, loader)."""
    from speakerforge.config import SourceConfig, load_config
    from speakerforge.data.corpora.synthetic import make_synthetic_corpus
    from speakerforge.train.trainer import RunOptions, Trainer

    tmp = Path(tempfile.mkdtemp(prefix="sf-bench-"))
    make_synthetic_corpus(
        tmp / "corpus",
        n_speakers=16,
        utts_per_speaker=batch * (steps + 1) // 16 + 1,
        seconds=crop + 1.0,
        manifest_name="train.jsonl",
    )
    args = {"campplus": "{embedding_dim: 192}", "ecapa_tdnn": "{channels: 512, embedding_dim: 192}"}[model]
    cfg = load_config(
        None,
        [
            f"model.name={model}",
            f"model.args={args}",
            f"data.batch_size={batch}",
            f"data.crop_seconds={crop}",
            "train.epochs=1",
            "train.integrity_check=false",
            "data.num_workers=1",
            f"data.samples_per_epoch={batch * (steps + 1)}",
            "data.augment.spec_augment.prob=0.5",
            "train.log_every=1000000",
        ],
    )
    cfg.data.sources = [SourceConfig(path=str(tmp / "corpus" / "train.jsonl"))]
    trainer = Trainer(cfg, tmp / "exp", RunOptions())
    starts: list[float] = []
    real_step = Trainer._step

    def timed(self, *a, **k):  # time between step starts: compute plus any wait for the data loader
        starts.append(time.perf_counter())
        return real_step(self, *a, **k)

    Trainer._step = timed
    try:
        trainer.run()
    finally:
        Trainer._step = real_step
    return batch * (len(starts) - 3) / (starts[-1] - starts[2])  # skip warm-up steps


def bench_vs_speakerlab(model: str, batch: int, steps: int, frames: int) -> tuple[float, float, float]:
    from speakerforge.models import build_model
    from speakerforge.train.objectives import SupervisedModule

    x = torch.randn(batch, frames, 80)
    y = torch.randint(0, 100, (batch,))
    ours = SupervisedModule(build_model(model, embedding_dim=192), 100, margin=0.2)
    if model == "campplus":
        from speakerlab.models.campplus.DTDNN import CAMPPlus as Ref

        ref_model = Ref(feat_dim=80, embedding_size=192)
    else:
        from speakerlab.models.ecapa_tdnn.ECAPA_TDNN import ECAPA_TDNN

        ref_model = ECAPA_TDNN(80, lin_neurons=192)
    from speakerlab.loss.margin_loss import ArcMarginLoss
    from speakerlab.models.campplus.classifier import CosineClassifier

    ref_head = CosineClassifier(192, num_blocks=0, inter_dim=0, out_neurons=100)
    ref_loss = ArcMarginLoss(scale=32.0, margin=0.2)

    def run(params, fn) -> float:
        opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
        for i in range(steps + 2):
            if i == 2:
                t = time.perf_counter()
            opt.zero_grad()
            fn().backward()
            opt.step()
        return batch * steps / (time.perf_counter() - t)

    ours_sps = run(ours.parameters(), lambda: ours(x, y)[0])
    ref_params = list(ref_model.parameters()) + list(ref_head.parameters())
    ref_sps = run(ref_params, lambda: ref_loss(ref_head(ref_model(x)), y))
    return ours_sps, ref_sps, step_flops(ours.backbone, x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="campplus", choices=["campplus", "ecapa_tdnn"])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--crop", type=float, default=2.0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    peak = matmul_flops()
    frames = int(args.crop * 100) - 2
    ours, ref, flops = bench_vs_speakerlab(args.model, args.batch, args.steps, frames)
    print(f"{args.model}, batch {args.batch} x {args.crop:.1f} s, {args.threads} threads")
    print(f"  fp32 matmul peak:                 {peak / 1e9:7.1f} GFLOP/s")
    print(
        f"  ours, plain loop on one batch:    {ours:7.1f} samples/s  "
        f"({ours / args.batch * flops / 1e9:6.1f} GFLOP/s = {ours / args.batch * flops / peak:.0%} of peak)"
    )
    print(
        f"  speakerlab, same loop and batch:  {ref:7.1f} samples/s  -> ratio ours/speakerlab {ours / ref:.2f}x "
        "(goal >= 1.3x)"
    )
    pipeline = bench_pipeline(args.model, args.batch, args.steps, args.crop)
    print(
        f"  trainer with its data pipeline:   {pipeline:7.1f} samples/s"
        f"  -> vs pre-loaded tensors {pipeline / ours:.2f} "
        "(goal >= 0.9)"
    )


if __name__ == "__main__":
    main()
