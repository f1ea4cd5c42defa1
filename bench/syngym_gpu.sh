#!/usr/bin/env bash
# Supervised-only vs SeFAR on SynGym (10% labels) with a longer budget than the CPU quickstart, on one GPU.
#   OUT=bench/results bash bench/syngym_gpu.sh [key=value ...]     (extra overrides apply to both runs)
# Uses the same config as `make quickstart` (configs/encoder/syngym_tiny.yaml), 8x the steps, 2x the batch.
set -euo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT="${OUT:-bench/results}"
DATA="${DATA:-/tmp/syngym}"
RUNS="${RUNS:-$OUT}"  # run folders (checkpoints); results and metrics are copied to $OUT
mkdir -p "$OUT" "$RUNS"
if [ ! -f "$DATA/manifest.json" ]; then
  python3 -m sefar data synth --out "$DATA" --size default --workers "$(nproc)"
fi
common=(data.root="$DATA" optim.epochs=40 optim.steps_per_epoch=40 "optim.milestones=[34]" optim.batch_size=16
        optim.micro_batch_size=16 ssl.supervised_epochs=8 ssl.ramp_epochs=8 ssl.ema_decay=0.995 log_every=100
        save_every=800 data.num_workers="$(( $(nproc) - 2 ))" "$@")
for mode in supervised sefar; do
  python3 -m sefar encoder train configs/encoder/syngym_tiny.yaml out="$RUNS/syngym_$mode" ssl.mode=$mode \
    "${common[@]}" 2>&1 | grep -v "step/s\|batch/s\|s/step\|s/batch"
  if [ "$RUNS" != "$OUT" ]; then
    cp "$RUNS/syngym_$mode/final/results.json" "$OUT/syngym_${mode}_results.json"
    cp "$RUNS/syngym_$mode/metrics.jsonl" "$OUT/syngym_${mode}_metrics.jsonl"
  fi
done
