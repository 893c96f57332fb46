#!/usr/bin/env bash
# One lever of the real-speech recipe, measured against the 5-epoch baseline of README "Baseline measured here":
# trains exp/real/levers/NAME (same data, same 5-epoch schedule, one change) and writes its side-by-side table
# (cosine, mean subtraction, AS-norm) to exp/real/levers/NAME/accuracy.md.
#   bash recipes/shared-data/levers.sh NAME      (NAME: see the case below)
set -euo pipefail
cd "$(dirname "$0")/../.."
name=${1:?usage: levers.sh NAME}
py=.venv/bin/python
data=exp/real/data
exp=exp/real/levers/$name
export OMP_WAIT_POLICY=PASSIVE
[[ -s $data/train.jsonl ]] || $py recipes/shared-data/build_lists.py --manifest "$data" >/dev/null
[[ -d exp/real/noise/rirs ]] || .venv/bin/speakerforge prepare noise --out exp/real/noise --speech "$data/train.jsonl"
base=(--config configs/demo-ecapa.yaml --set train.epochs=5 --set margin.start_epoch=2 --set margin.end_epoch=4
  --set optim.warmup_epochs=1)
long=(--set train.epochs=15 --set margin.start_epoch=4 --set margin.end_epoch=8)  # 3x the budget
aug=(--set data.augment.noise_dir=exp/real/noise/musan --set data.augment.rir_dir=exp/real/noise/rirs)
sources=("$data/train.jsonl")
case $name in
  baseline) extra=() ;;
  tts50) extra=(); sources+=("${TTS_CORPUS:-exp/real/tts}/train.jsonl" "${TTS_CORPUS:-exp/real/tts}/test.jsonl") ;;
  speed) extra=(--set "data.speed_perturb=[1.0,0.9,1.1]") ;;
  aug) extra=("${aug[@]}") ;;
  subcenter) extra=(--set head.subcenters=3) ;;
  crop2) extra=(--set data.crop_seconds=2.0) ;;
  wide) extra=(--set "model.args={channels: 128, embedding_dim: 128}") ;;
  campplus) extra=(--set model.name=campplus
    --set "model.args={embedding_dim: 128, m_channels: 16, init_channels: 64, growth_rate: 16, bn_size: 2}") ;;
  seed2) extra=(--set train.seed=2) ;;  # the baseline with another seed: how much of a difference is noise
  long) extra=("${long[@]}") ;;
  long-speed-aug) extra=("${long[@]}" --set "data.speed_perturb=[1.0,0.9,1.1]" "${aug[@]}") ;;
  *) echo "unknown lever $name" >&2; exit 2 ;;
esac
t0=$(date +%s)
.venv/bin/speakerforge --quiet train "${base[@]}" "${extra[@]}" --exp "$exp" --data "${sources[@]}"
echo "train wall: $(($(date +%s) - t0)) s" > "$exp/wall.txt"
$py bench/accuracy.py --model "$exp" --scoring all > "$exp/accuracy.md"
cat "$exp/wall.txt" "$exp/accuracy.md"
