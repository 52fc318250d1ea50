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
COMMON=(--base artifacts/bases/shapes24-fm --eval-prompts 0 --images-per-prompt 4 --out "$OUT" --milestones 750,1000
        --set train.lr_schedule=cosine)
ANY2="++objective.train.overrides.probs={e2e:1,mul:1,any:2,adv:1}"
python bench/finetune_curve.py "${COMMON[@]}" --threads 2 --base-only
for v in "a1000-s1=train.steps=1000;$ANY2" "a1000-s2=train.seed=2;train.steps=1000;$ANY2"; do
  python bench/finetune_curve.py "${COMMON[@]}" --threads 1 --variant "$v" &
done
wait
# the same recipe stretched to 1500 steps (the cosine reaches 0 at 1500), exported at 1000 and 1500
LONG=(--base artifacts/bases/shapes24-fm --eval-prompts 0 --images-per-prompt 4 --out "$OUT" --milestones 1000,1500
      --set train.lr_schedule=cosine)
for v in "a1500-s1=$ANY2" "a1500-s2=train.seed=2;$ANY2"; do
  python bench/finetune_curve.py "${LONG[@]}" --threads 1 --variant "$v" &
done
wait
python bench/finetune_curve.py --out "$OUT" --summarize
