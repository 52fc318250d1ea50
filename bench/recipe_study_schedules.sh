#!/usr/bin/env bash
# The second TwinFlow recipe study against the committed base (bench/results/recipe_study_schedules.md): the
# default recipe (lr 1e-3, cond_drop 0, 750 steps) against levers the first study (recipe_study.sh) left out:
# a cosine learning-rate decay, a slower export average (train.export_ema_decay), the plain L2 loss, a higher
# peak lr under the decay, the official data-free mode (image_free with the frozen base as CFG teacher, guidance
# 1.5 = the reference's), and three training seeds for the default and the cosine decay. Each variant is
# fine-tuned from the base with the train stage's own code, exported at 500 and 750 steps, and scored on the
# same prompts as the first study (all 132 geneval-shapes + 64 dpg-shapes prompts x 4 images, bootstrap SEs,
# ratios to the base at 50 Euler steps with guidance 0.5). Three variants run side by side, one thread each
# (measured 2026-12-02: ~1.2-1.6 s/step each on a 2-core CPU, ~18 min a batch, ~1 h in all).
#   bench/recipe_study_schedules.sh [OUT]      then: python bench/finetune_curve.py --out OUT --summarize
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-outputs/bench/recipe_study_schedules}
# the recipe of the time, pinned (later studies changed the defaults): constant lr, buckets 1:1:1:1
COMMON=(--base artifacts/bases/shapes24-fm --eval-prompts 0 --images-per-prompt 4 --out "$OUT" --milestones 500,750
        --set train.lr_schedule=constant --set "++objective.train.overrides.probs={e2e:1,mul:1,any:1,adv:1}")
python bench/finetune_curve.py "${COMMON[@]}" --threads 2 --base-only
batch() {
  for v in "$@"; do python bench/finetune_curve.py "${COMMON[@]}" --threads 1 --variant "$v" & done
  wait
}
batch "ctl=" "cos=train.lr_schedule=cosine" "avg=train.export_ema_decay=0.995"
batch "free=train.lr_schedule=cosine;train.ema_decay=1.0;++objective.train.overrides.image_free=true;objective.train.overrides.enhanced_ratio=1.5" \
      "l2=train.lr_schedule=cosine;++objective.train.overrides.loss=l2" \
      "cos2e-3=train.lr_schedule=cosine;train.lr=0.002"
batch "cos-s2=train.lr_schedule=cosine;train.seed=2" "cos-s3=train.lr_schedule=cosine;train.seed=3" \
      "ctl-s3=train.seed=3"
python bench/finetune_curve.py --out "$OUT" --summarize
