#!/usr/bin/env bash
# Supervised-only vs SeFAR on SynGym (10% labels) with a longer budget than the CPU quickstart, on one GPU.
#   OUT=bench/results bash bench/syngym_gpu.sh [key=value ...]     (extra overrides apply to both runs)
# Uses the same config as `make quickstart` (configs/encoder/syngym_tiny.yaml), 2.5x the steps and 2x the batch (1,600 of 32).
set -euo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT="${OUT:-bench/results}"
DATA="${DATA:-/tmp/syngym}"
RUNS="${RUNS:-outputs/bench}"  # run folders (checkpoints); the result file goes to $OUT
mkdir -p "$OUT" "$RUNS"
# (re)generate unless DATA holds the default-size SynGym of this code's version (the reason is printed)
if ! python3 -c '
import sys
from encoder.data.syngym import dataset_identity
try:
    size = dataset_identity(sys.argv[1])["size"]
except Exception as err:
    sys.exit(f"regenerating: {err}")
if size != "default":
    sys.exit(f"regenerating: {sys.argv[1]} holds the {size!r} size, not default")
' "$DATA"; then
  python3 -m sefar data synth --out "$DATA" --size default --workers "$(nproc)"
fi
common=(optim.epochs=40 optim.steps_per_epoch=40 optim.batch_size=32
        optim.micro_batch_size=32 ssl.supervised_epochs=8 ssl.ramp_epochs=8 ssl.ema_decay=0.995 log_every=100
        save_every=800 data.num_workers="$(( $(nproc) - 2 ))" "$@")
python3 -m bench.syngym_tables --data "$DATA" --level element --seeds 0 --rows supervised-only SeFAR \
  --runs "$RUNS/syngym_gpu" --out "$OUT/syngym_tables_element_gpu.json" "${common[@]}"
