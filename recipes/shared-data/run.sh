#!/usr/bin/env bash
# The real-speech recipe: the most accurate speaker model 30 CPU-minutes make from ../shared/data, scored side by
# side with resemblyzer 0.1.4 on the committed dev sets. `make real` runs it (creating .venv and installing
# resemblyzer, a bench-only tool). Each step is cached: a re-run skips what is done (the training resumes or is
# already finished, embeddings are cached by model content), so it reprints the same table in seconds.
#   bash recipes/shared-data/run.sh [--shared ../shared/data] [--exp exp/real/recipe] [--config configs/real-ecapa.yaml]
set -euo pipefail
cd "$(dirname "$0")/../.."
shared=../shared/data exp=exp/real/recipe config=configs/real-ecapa.yaml
while (($#)); do
  case $1 in
    --shared) shared=$2; shift 2 ;;
    --exp) exp=$2; shift 2 ;;
    --config) config=$2; shift 2 ;;
    *) echo "run.sh: unknown option $1 (--shared DIR, --exp DIR, --config YAML)" >&2; exit 2 ;;
  esac
done
[[ -d $shared ]] || { echo "run.sh: $shared not found: the recipe trains on ../shared/data (--shared DIR)" >&2; exit 2; }
py=.venv/bin/python sf=.venv/bin/speakerforge data=exp/real/data
t0=$(date +%s)
stamp() { echo "[$(($(date +%s) - t0)) s] $*"; }

stamp "training list (recipes/shared-data/lists/train.tsv) -> $data/train.jsonl"
$py recipes/shared-data/build_lists.py --shared "$shared" --out "$data/lists" --manifest "$data" >/dev/null
cmp -s "$data/lists/train.tsv" recipes/shared-data/lists/train.tsv ||
  { echo "run.sh: $shared does not give the committed lists (see recipes/shared-data/README.md)" >&2; exit 1; }

stamp "training $exp ($config)"
$sf train --config "$config" --exp "$exp" --data "$data/train.jsonl"

stamp "side by side with resemblyzer on the dev sets"
$py bench/accuracy.py --model "$exp" --shared "$shared" --scoring all | tee "$exp/accuracy.md"
stamp "done: $exp/accuracy.md"
