#!/usr/bin/env bash
# The GPU checks of one device session, in one script (the device tool gives a session ~15 minutes in all):
#   1. bench/gpu.py: full-size CAM++ / ERes2Net training steps, bf16 and fp16, on-device vs from shards;
#   2. the real CLI end to end on the GPU: prepare -> train (fp16, 2 epochs, interrupted after epoch 1 and
#      resumed) -> extract -> score -> eval -> export ONNX, then the same training under torchrun (NCCL, 1 process).
# Usage: bash bench/gpu_session.sh OUT_DIR [--small]   (--small: tiny sizes, to try the script on a CPU first)
set -euo pipefail
out=${1:?usage: bash bench/gpu_session.sh OUT_DIR [--small]}
small=${2:-}
mkdir -p "$out"
py=${PYTHON:-python3}
sf() { "$py" -m speakerforge "$@"; }
work=$(mktemp -d)
export PYTHONUNBUFFERED=1

if [[ -z $small ]]; then
  if [[ ${GPU_BENCH:-1} != 0 ]]; then  # GPU_BENCH=0: the end-to-end part alone
    "$py" bench/gpu.py --budget "${GPU_BENCH_BUDGET:-260}" --data "$work/bench" 2>&1 | tee "$out/gpu_bench.txt"
  fi
  speakers=200 utts=16 seconds=3 model=campplus args='{}' batch=128 workers=8 amp=fp16 device=cuda
else
  "$py" bench/gpu.py --cpu --data "$work/bench" 2>&1 | tee "$out/gpu_bench.txt"
  speakers=8 utts=4 seconds=1.5 model=ecapa_tdnn args='{channels: 16, embedding_dim: 16}' batch=8 workers=0
  amp=bf16 device=cpu
fi

{
  echo "== end to end on $device: $model, $speakers speakers x $utts utts of ${seconds} s, batch $batch, amp $amp"
  t0=$(date +%s)
  sf --quiet prepare synthetic --out "$work/data" --speakers "$speakers" --utts-per-speaker "$utts" \
    --seconds "$seconds" --trials 2000
  common=(--exp "$work/exp" --data "$work/data/manifest.jsonl" --set "model.name=$model" --set "model.args=$args"
    --set data.crop_seconds=2.0 --set "data.batch_size=$batch" --set "data.num_workers=$workers"
    --set "train.amp=$amp" --set "train.device=$device" --set optim.warmup_epochs=0)
  sf train "${common[@]}" --set train.epochs=1
  sf train "${common[@]}" --set train.epochs=2 --allow-config-change   # resumes from epoch 1
  sf extract --model "$work/exp" --data "$work/data/manifest.jsonl" --out "$work/emb.npz" --device "$device"
  sf score --embeddings "$work/emb.npz" --trials "$work/data/trials.txt" --out "$work/scores.txt"
  sf eval --scores "$work/scores.txt" --out-dir "$work/eval"
  sf export --model "$work/exp" --onnx "$work/model.onnx"
  echo "== the same training under torchrun (1 process; NCCL on a GPU, gloo on a CPU)"
  "$py" -m torch.distributed.run --standalone --nproc_per_node=1 -m speakerforge train "${common[@]/$work\/exp/$work/exp-ddp}" \
    --set train.epochs=1
  echo "== end to end done in $(($(date +%s) - t0)) s"
} 2>&1 | tee "$out/gpu_e2e.txt"
