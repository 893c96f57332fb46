"""Frames per second of our fbank, one utterance at a time and batched, against kaldi-native-fbank in the same run.

kaldi-native-fbank computes one utterance at a time (its only mode) and is timed from a float32 numpy array to the
stacked feature matrix, the way Python code uses it, with the samples handed over as a ready list (its fastest way).
Each round times every method once on the same utterances; the best round is reported (the machine may be shared,
and the best round is the one least disturbed), the median beside it, and frames per CPU-second of the process (all
its threads, spin-waiting included) as a figure that depends less on what else runs.

    python bench/fbank.py [--utterances 64] [--seconds 3] [--batches 16 64] [--rounds 5] [--threads 2] [--with-rfft]

`--with-rfft` adds the alternative design (unfold, elementwise DC removal / pre-emphasis / window, torch.fft.rfft)
with its distance from a float64 computation, which is why the library uses the DFT-basis matmul instead.

OpenMP threads wait passively here unless OMP_WAIT_POLICY says otherwise: on a shared machine, a torch thread that
spin-waits at the end of each parallel region takes the core its partner needs, and batched fbank then ran 2-8x
slower with wide swings between rounds (compare with `OMP_WAIT_POLICY=ACTIVE python bench/fbank.py`). On an idle
machine the policy makes little difference.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads its OpenMP runtime

import argparse
import statistics
import time

import numpy as np
import torch

from speakerforge.data.features import INT16_SCALE, fbank, frame_sizes, mel_banks, num_frames, povey_window


def knf_fbank(samples: list[float], sample_rate: int = 16000) -> np.ndarray:
    import kaldi_native_fbank as knf

    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0.0
    opts.frame_opts.samp_freq = sample_rate
    opts.frame_opts.window_type = "povey"
    opts.frame_opts.snip_edges = True
    opts.mel_opts.num_bins = 80
    opts.use_energy = False
    online = knf.OnlineFbank(opts)
    online.accept_waveform(sample_rate, samples)
    online.input_finished()
    return np.stack([online.get_frame(i) for i in range(online.num_frames_ready)])


def rfft_fbank(wave: torch.Tensor, sample_rate: int = 16000) -> torch.Tensor:
    """The FFT design: fewer flops, more elementwise passes, float32 FFT rounding."""
    window, shift, fft_size = frame_sizes(sample_rate)
    cache = rfft_fbank.__dict__.setdefault("cache", {})
    if sample_rate not in cache:
        mel = torch.cat([mel_banks(80, fft_size, sample_rate), torch.zeros(1, 80, dtype=torch.float64)])
        cache[sample_rate] = (
            (povey_window(window) * INT16_SCALE).float(),
            torch.stack([mel, mel], 1).flatten(0, 1).float(),
        )
    win, mel = cache[sample_rate]
    frames = wave.unfold(-1, window, shift)
    frames = frames - frames.mean(dim=-1, keepdim=True)
    emphasised = torch.cat([frames[..., :1] * 0.03, frames[..., 1:] - 0.97 * frames[..., :-1]], dim=-1) * win
    power = torch.view_as_real(torch.fft.rfft(emphasised, n=fft_size)).square().flatten(-2)
    return (power @ mel).clamp_min(torch.finfo(torch.float32).eps).log()


def best_and_median(times: list[float]) -> tuple[float, float]:
    return min(times), statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--utterances", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--with-rfft", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    sample_rate = 16000
    length = int(args.seconds * sample_rate)
    gen = torch.Generator().manual_seed(0)
    waves = (0.1 * torch.randn(args.utterances, length, generator=gen)).clamp(-1, 1)
    as_lists = [(w.numpy() * INT16_SCALE).tolist() for w in waves]
    frames_total = args.utterances * num_frames(length)

    methods = {
        "kaldi-native-fbank, one at a time": lambda: [knf_fbank(s) for s in as_lists],
        "ours, one at a time": lambda: [fbank(w) for w in waves],
    }
    for b in args.batches:
        methods[f"ours, batches of {b}"] = lambda b=b: [fbank(waves[i : i + b]) for i in range(0, len(waves), b)]
    if args.with_rfft:
        for b in args.batches:
            methods[f"rfft design, batches of {b}"] = lambda b=b: [
                rfft_fbank(waves[i : i + b]) for i in range(0, len(waves), b)
            ]

    ref = knf_fbank(as_lists[0])
    print(
        f"{args.utterances} utterances x {args.seconds:g} s at {sample_rate} Hz ({frames_total} frames), "
        f"torch threads {args.threads}, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, "
        f"load average {os.getloadavg()[0]:.1f}, "
        f"max |ours - kaldi-native-fbank| {np.abs(fbank(waves[0]).numpy() - ref).max():.1e}"
    )
    if args.with_rfft:
        exact = fbank(waves[:8].double())
        for name, got in [("ours", fbank(waves[:8])), ("rfft design", rfft_fbank(waves[:8]))]:
            print(f"  {name}: max |float32 - float64| {(got.double() - exact).abs().max().item():.1e}")

    times: dict[str, list[float]] = {name: [] for name in methods}
    cpu: dict[str, list[float]] = {name: [] for name in methods}
    for fn in methods.values():  # warm-up: caches, MKL/oneDNN kernels
        fn()
    for _ in range(args.rounds):
        for name, fn in methods.items():
            t, c = time.perf_counter(), time.process_time()
            fn()
            times[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)

    base_name = next(iter(methods))
    base = frames_total / best_and_median(times[base_name])[0]
    for name in methods:
        best, median = best_and_median(times[name])
        rate = frames_total / best
        print(
            f"{name:38s} {rate / 1e3:8.1f} kframes/s (median round {frames_total / median / 1e3:7.1f})  "
            f"x{rate / base:5.2f} vs kaldi-native-fbank   {frames_total / min(cpu[name]) / 1e3:7.1f} kframes/CPU-s"
        )
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
