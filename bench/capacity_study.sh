#!/usr/bin/env bash
# The capacity study (bench/results/capacity_study.md): the default UNet scaled to widths 4, 8 and 32 (the
# default net) and 16, 24k to 1.34M parameters (56x); WIDTHS_A / WIDTHS_B change them (e.g. add 64). Per width a flow-matching base of the default's 3000 steps (width 32:
# the committed base artifacts/bases/shapes24-fm, trained with this same pretrain recipe) and a TwinFlow fine-tune
# of TF_STEPS steps with the default recipe (cosine to 0 at TF_STEPS), exported every TF_STEPS/4 steps, scored on
# all 132 geneval-shapes prompts and 64 dpg-shapes items at IMAGES images each. The fine-tuning budget and the
# images per prompt are shrunk from the default (1000 steps, 4 images) to fit a shared 2-core CPU; the point is
# the trend with size at an equal budget. Two chains side by side, one thread each.
#   bench/capacity_study.sh [OUT]        (about 20 CPU-minutes; the script prints the CPU time it took)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-outputs/bench/capacity_study}
TF_STEPS=${TF_STEPS:-300}
IMAGES=${IMAGES:-2}
SEEDS=${SEEDS:-1}
MILESTONES="$((TF_STEPS / 4)),$((TF_STEPS / 2)),$((3 * TF_STEPS / 4)),$TF_STEPS"
COMMON=(--out "$OUT" --base-steps 3000 --images-per-prompt "$IMAGES" --threads 1 --seeds "$SEEDS"
        --milestones "$MILESTONES" --existing-base 32=artifacts/bases/shapes24-fm)
mkdir -p "$OUT"
start=$(date +%s)
python bench/capacity_study.py "${COMMON[@]}" --widths "${WIDTHS_A:-8,16}" > "$OUT/chain-a.log" 2>&1 &
a=$!
python bench/capacity_study.py "${COMMON[@]}" --widths "${WIDTHS_B:-32,4}" > "$OUT/chain-b.log" 2>&1
wait "$a"
python bench/capacity_study.py --out "$OUT" --summarize \
  --command "TF_STEPS=$TF_STEPS IMAGES=$IMAGES SEEDS=$SEEDS bench/capacity_study.sh $OUT"
# the CPU time of every process this script started (children, waited for), and the wall time
times
echo "capacity_study.sh: $(( $(date +%s) - start )) s wall"
