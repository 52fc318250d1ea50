#!/usr/bin/env bash
# The TwinFlow recipe study against the committed base (bench/results/recipe_study.md): one-knob variants of the
# former default train recipe (lr 5e-4, EMA 0.98, batch 64, probs 1:1:1:1, lambda 0.5, enhanced 0.5, cond_drop
# 0.1), each fine-tuned to 500 steps and scored at 250 and 500 on the same prompts (all 132 geneval-shapes + 64
# dpg-shapes prompts x 4 images, bootstrap standard errors, ratios to the base at 50 Euler steps with guidance 0.5),
# then the best learning rate to 1500 steps (3x the former default budget). Two variants run side by side, one
# thread each (measured 2026-12-01: ~0.7-0.9 s/step each on an otherwise quiet 2-core CPU; ~55 min in all).
#   bench/recipe_study.sh [OUT]        then: python bench/finetune_curve.py --out OUT --summarize
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-outputs/bench/recipe_study}
COMMON=(--base artifacts/bases/shapes24-fm --eval-prompts 0 --images-per-prompt 4 --out "$OUT" --base-cfg0)
# the former default, pinned, so that the study keeps its meaning when conf/ changes
FORMER=(--set train.lr=0.0005 --set train.ema_decay=0.98 --set train.batch_size=64
        --set train.cond_drop=0.1 --set train.lr_schedule=constant --set "++objective.train.overrides.probs={e2e:1,mul:1,any:1,adv:1}")
python bench/finetune_curve.py "${COMMON[@]}" --threads 2 --base-only
stream() {
  for v in "$@"; do
    python bench/finetune_curve.py "${COMMON[@]}" "${FORMER[@]}" --threads 1 --milestones 250,500 --variant "$v"
  done
}
stream "default=" "lr1e-3=train.lr=0.001" "ema0.995=train.ema_decay=0.995" "ema0.9=train.ema_decay=0.9" \
       "cd0=train.cond_drop=0" &
stream "lr1e-4=train.lr=0.0001" "batch32=train.batch_size=32" \
       "e2e2=++objective.train.overrides.probs={e2e:2,mul:1,any:1,adv:1}" \
       "noadv=++objective.train.overrides.probs={e2e:1,mul:1,any:1,adv:0};++objective.train.overrides.dist_match_cof=0" \
       "lambda0=++objective.train.overrides.dist_match_cof=0" \
       "lambda1.5=++objective.train.overrides.dist_match_cof=1.5" \
       "enh0=objective.train.overrides.enhanced_ratio=0" &
wait
python bench/finetune_curve.py "${COMMON[@]}" "${FORMER[@]}" --threads 1 --milestones 750,1000,1500 \
  --variant "lr1e-3-long=train.lr=0.001"
python bench/finetune_curve.py --out "$OUT" --summarize
