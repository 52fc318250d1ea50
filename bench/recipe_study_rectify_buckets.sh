#!/usr/bin/env bash
# The third TwinFlow recipe study against the committed base (bench/results/recipe_study_rectify_buckets.md),
# aimed at the two targets that no earlier lever moved: the Fréchet distance at 1 NFE (<= 3x the
# base's) and 2 NFE (>= 0.9x). On top of the current default (cosine decay from lr 1e-3, 750 steps, EMA 0.98,
# lambda 0.5, buckets 1:1:1:1, enhanced ratio 0.5):
#   lam1      the rectify (distribution-matching) weight lambda 1.0: the term that pulls the 1-step samples onto
#             the data distribution (0 was clearly worse in study 1, 1.5 diverged; 1.0 was never measured);
#   any2      twice the `any` bucket (r ~ U[0, t]): the arbitrary jumps a 2-step sampler takes (t = 0.6 -> 0);
#   lam1any2  both.
# Same protocol as the first two studies (bench/recipe_study.sh, bench/recipe_study_schedules.sh): the train
# stage's own code from artifacts/bases/shapes24-fm, exported at 500 and 750 steps, all 132 geneval-shapes + 64
# dpg-shapes prompts x 4 images, bootstrap SEs, ratios to the base at 50 Euler steps with guidance 0.5. Three
# variants side by side, one thread each (~20 min a batch on this 2-core CPU).
# Then the one variant within the default's band, any2, on training seeds 2 and 3 (two side by side).
#   bench/recipe_study_rectify_buckets.sh [OUT]      then: python bench/finetune_curve.py --out OUT --summarize
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-outputs/bench/recipe_study_rectify_buckets}
# the default of the time, pinned (study 4 changed the buckets): cosine lr, buckets 1:1:1:1
COMMON=(--base artifacts/bases/shapes24-fm --eval-prompts 0 --images-per-prompt 4 --out "$OUT" --milestones 500,750
        --set train.lr_schedule=cosine --set "++objective.train.overrides.probs={e2e:1,mul:1,any:1,adv:1}")
LAM1="++objective.train.overrides.dist_match_cof=1.0"
ANY2="++objective.train.overrides.probs={e2e:1,mul:1,any:2,adv:1}"
python bench/finetune_curve.py "${COMMON[@]}" --threads 2 --base-only
batch() {
  for v in "$@"; do python bench/finetune_curve.py "${COMMON[@]}" --threads 1 --variant "$v" & done
  wait
}
batch "lam1=$LAM1" "any2=$ANY2" "lam1any2=$LAM1;$ANY2"
batch "any2-s2=train.seed=2;$ANY2" "any2-s3=train.seed=3;$ANY2"
python bench/finetune_curve.py --out "$OUT" --summarize
