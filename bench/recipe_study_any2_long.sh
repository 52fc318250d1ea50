#!/usr/bin/env bash
# The fourth TwinFlow recipe study against the committed base (bench/results/recipe_study_any2_long.md): the
# third study's most consistent recipe, twice the `any` bucket (buckets 1:1:2:1), trained longer, 1000 steps with
# the cosine decay reaching 0 at step 1000 (exported at 750 and 1000), training seeds 1 and 2, side by side, one
# thread each (~17 min on this 2-core CPU); then the same to 1500 steps (~19 min). Same protocol as studies 1-3: the train stage's own code from
# artifacts/bases/shapes24-fm, all 132 geneval-shapes + 64 dpg-shapes prompts x 4 images, bootstrap SEs, ratios to
# the base at 50 Euler steps with guidance 0.5.
#   bench/recipe_study_any2_long.sh [OUT]      then: python bench/finetune_curve.py --out OUT --summarize
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-outputs/bench/recipe_study_any2_long}
# the recipe of the time, pinned: cosine lr (finetune_curve.py sets train.steps to the last milestone)
COMMON=(--base artifacts/bases/shapes24-fm --eval-prompts 0 --images-per-prompt 4 --out "$OUT" --set train.lr_schedule=cosine)
ANY2="++objective.train.overrides.probs={e2e:1,mul:1,any:2,adv:1}"
python bench/finetune_curve.py "${COMMON[@]}" --threads 2 --base-only
two_seeds() {  # MILESTONES NAME: seeds 1 and 2 side by side
  python bench/finetune_curve.py "${COMMON[@]}" --milestones "$1" --threads 1 --variant "$2-s1=$ANY2" &
  python bench/finetune_curve.py "${COMMON[@]}" --milestones "$1" --threads 1 --variant "$2-s2=train.seed=2;$ANY2" &
  wait
}
two_seeds 750,1000 a1000    # the cosine reaches 0 at step 1000
two_seeds 1000,1500 a1500   # the same recipe stretched to 1500 steps
python bench/finetune_curve.py --out "$OUT" --summarize
