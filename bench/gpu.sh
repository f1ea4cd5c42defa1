#!/usr/bin/env bash
# Paper-scale measurements on one GPU: the SSL training step (ours vs the reference's structure) for ViT-S and
# ViT-B at 224² x 8 frames in bf16. Needs torch + timm only (run from the repository root):
#   OUT=bench/results bash bench/gpu.sh
set -euo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT="${OUT:-bench/results}"
mkdir -p "$OUT"
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))"
for model in vit_small vit_base; do
  python3 -m bench.train_step --model "$model" --img-size 224 --batch 8 --bf16 --iters 5 --warmup 2 \
    --out "$OUT/train_step_${model}_224_bf16.json"
done
