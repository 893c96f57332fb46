#!/usr/bin/env bash
# FunASR #1560's comparison, re-runnable (finished steps are reused): a small SeACo-Paraformer and a small
# contextual Paraformer (FunASR's networks, same encoder/decoder sizes) pretrained on the generated corpus, each
# written out as a FunASR model directory, then fine-tuned from that directory on held-out sentences (other names)
# in one stage (everything trainable) and in two stages; one table of every model on the test set.
#   bash recipes/asr-funasr/run.sh            # OUT=exp/asr-funasr; about 2 hours on 2 cores, TTS corpus included
# With a released checkpoint the same fine-tune / eval / export commands apply (--init RELEASE_DIR; for a release
# without a ctc head drop `ctc` from the losses, as configs/asr-funasr-seaco-two-stage.yaml does).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-exp/asr-funasr}
CORPUS=${CORPUS:-$OUT/corpus}
SF=${SF:-.venv/bin/speakerforge}
PY=${PY:-.venv/bin/python}
HERE=recipes/asr-funasr
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
mkdir -p "$OUT/eval"

"$SF" asr prepare --out "$CORPUS" --finetune 300

for m in seaco contextual; do   # 1. pretrain from scratch, 2. write the FunASR directory
  "$SF" asr train --config "configs/asr-funasr-small-$m.yaml" --exp "$OUT/$m" --data "$CORPUS/train.jsonl"
  [ -f "$OUT/$m-funasr/model.pt" ] || "$SF" asr export --model "$OUT/$m" --format funasr "$OUT/$m-funasr"
done

for m in seaco contextual; do   # 3. fine-tune each directory on the held-out split, one stage and two
  for s in one-stage two-stage; do
    "$SF" asr train --init "$OUT/$m-funasr" --config "$HERE/ft-$m-$s.yaml" --exp "$OUT/$m-$s" \
      --data "$CORPUS/finetune.jsonl"
  done
done

for e in seaco contextual seaco-one-stage seaco-two-stage contextual-one-stage contextual-two-stage; do
  for d in seaco ctc; do        # 4. FunASR's decoding, and CTC with the list as a context graph
    [ -f "$OUT/eval/$e.$d.json" ] || "$SF" asr eval --model "$OUT/$e" --data "$CORPUS/test.jsonl" \
      --hotwords "$CORPUS/test_hotwords.txt" --decoding "$d" \
      --distractors "$CORPUS/distractors_100.txt" "$CORPUS/distractors_500.txt" --json "$OUT/eval/$e.$d.json"
  done
done
"$PY" "$HERE/table.py" "$OUT/eval" | tee "$OUT/table.md"
