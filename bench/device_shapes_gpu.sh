#!/usr/bin/env bash
# The shapes world on one GPU (conf/experiment/shapes_gpu.yaml): a flow-matching base of 10,000 steps and a
# TwinFlow fine-tune of 2,500 steps (exported every 625), both at batch 256 with the 11.7M-parameter net at 32 px,
# then the capacity study's scores (1, 2, 4 NFE against the base's 50 guided Euler steps, all 132 geneval-shapes
# prompts and 64 dpg-shapes items, IMAGES images each, paired bootstrap SEs). Training is estimated at ~7 min on
# one H100 (the estimate is in the yaml); the scores sample on the GPU too.
#   bench/device_shapes_gpu.sh [OUT]     (OUT defaults to $OUT when set, e.g. the device runner's folder)
# Writes OUT/wnative/{base,tf-s1}, OUT/capacity_study_table.md, capacity_study.json/.png, device.txt, timing.txt.
# A CPU smoke of the same path: BASE_STEPS=4 MILESTONES=2,4 EVAL_PROMPTS=8 EXTRA=trainer=cpu bench/device_shapes_gpu.sh /tmp/x
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-${OUT:-outputs/bench/shapes_gpu}}
IMAGES=${IMAGES:-2}
BASE_STEPS=${BASE_STEPS:-10000}
MILESTONES=${MILESTONES:-625,1250,1875,2500}
EVAL_PROMPTS=${EVAL_PROMPTS:-0}
EXTRA=${EXTRA:-}
mkdir -p "$DEST"
{ nvidia-smi -L || true; python -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"; } \
  > "$DEST/device.txt" 2>&1
cat "$DEST/device.txt"
start=$(date +%s)
set +e
python bench/capacity_study.py --experiment shapes_gpu --widths native --base-steps "$BASE_STEPS" \
  --milestones "$MILESTONES" --images-per-prompt "$IMAGES" --eval-prompts "$EVAL_PROMPTS" --threads 8 \
  --out "$DEST" ${EXTRA:+--set "$EXTRA"} > "$DEST/run.log" 2>&1
rc=$?
set -e
grep -E "step [0-9]+/[0-9]+,|done|capacity_study:" "$DEST/run.log" | tail -8 || true
if [ "$rc" != 0 ]; then tail -20 "$DEST/run.log"; exit "$rc"; fi
python bench/capacity_study.py --out "$DEST" --summarize --results "$DEST" \
  --command "bench/device_shapes_gpu.sh (IMAGES=$IMAGES BASE_STEPS=$BASE_STEPS MILESTONES=$MILESTONES)"
{ times; echo "device_shapes_gpu.sh: $(( $(date +%s) - start )) s wall"; } | tee "$DEST/timing.txt"
