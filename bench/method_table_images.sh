#!/usr/bin/env bash
# The image half of the method table (bench/results/method_table_images.md): fm, rcgm, twinflow and meanflow
# fine-tuned from one flow-matching base per dataset for the same CPU-seconds budget (BUDGET), scored at 1, 2 and
# 4 NFE. shapes: the committed base artifacts/bases/shapes24-fm (default net, 24 px); digits: a base of
# DIGITS_BASE_STEPS steps at width DIGITS_WIDTH (16 px), pretrained once into OUT/digits and reused. The two
# datasets run side by side, one thread each, at nice 19.
#   bench/method_table_images.sh [OUT]     (about 25 CPU-minutes; prints the CPU time it took)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-outputs/bench/method_table}
BUDGET=${BUDGET:-90}
DIGITS_WIDTH=${DIGITS_WIDTH:-16}
DIGITS_BASE_STEPS=${DIGITS_BASE_STEPS:-1000}
mkdir -p "$OUT"
start=$(date +%s)
nice -n 19 python bench/method_table_images.py --domain digits --width "$DIGITS_WIDTH" \
  --base-steps "$DIGITS_BASE_STEPS" --budget-cpu-s "$BUDGET" --out "$OUT/digits" > "$OUT/digits.log" 2>&1 &
a=$!
nice -n 19 python bench/method_table_images.py --domain shapes --base artifacts/bases/shapes24-fm \
  --budget-cpu-s "$BUDGET" --out "$OUT/shapes" > "$OUT/shapes.log" 2>&1
wait "$a"
python bench/method_table_images.py --summarize "$OUT/digits,$OUT/shapes" \
  --grid --command "BUDGET=$BUDGET DIGITS_WIDTH=$DIGITS_WIDTH DIGITS_BASE_STEPS=$DIGITS_BASE_STEPS bench/method_table_images.sh $OUT"
times  # the CPU time of every process this script started, and the wall time
echo "method_table_images.sh: $(( $(date +%s) - start )) s wall"
