#!/usr/bin/env bash
# The TwinFlow recipe study against the committed base (bench/results/recipe_study.md): one-knob variants of the
# default train recipe, each fine-tuned for max(MILESTONES) steps and scored at every milestone on the same prompts
# (bootstrap standard errors, ratios to the base at 50 Euler steps with guidance 0.5), run one after the other.
#   bench/recipe_study.sh [OUT]        env: MILESTONES=150,300  EVAL_PROMPTS=0 (all)  IMAGES=4  THREADS=2
# Uncontended on this 2-core CPU: ~0.52 s/TwinFlow step, so 12 variants x 300 steps ~ 35 min + ~1 min scoring each
# and ~3 min for the base once. Then: python bench/finetune_curve.py --out OUT --summarize
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-outputs/bench/recipe_study}
COMMON=(--base artifacts/bases/shapes24-fm --eval-prompts "${EVAL_PROMPTS:-0}" --images-per-prompt "${IMAGES:-4}"
        --out "$OUT" --threads "${THREADS:-2}")
VARIANTS=(
  "default="
  "lr1e-4=train.lr=0.0001"
  "lr2e-5=train.lr=0.00002"
  "ema0.995=train.ema_decay=0.995"
  "ema0.9=train.ema_decay=0.9"
  "batch32=train.batch_size=32"
  "batch128=train.batch_size=128"
  "e2e2=++objective.train.overrides.probs={e2e:2,mul:1,any:1,adv:1}"
  "noadv=++objective.train.overrides.probs={e2e:1,mul:1,any:1,adv:0};++objective.train.overrides.dist_match_cof=0"
  "lambda0=++objective.train.overrides.dist_match_cof=0"
  "lambda1.5=++objective.train.overrides.dist_match_cof=1.5"
  "enh0=objective.train.overrides.enhanced_ratio=0"
  "cd0=train.cond_drop=0"
)
python bench/finetune_curve.py "${COMMON[@]}" --base-cfg0 --base-only
for v in "${VARIANTS[@]}"; do
  python bench/finetune_curve.py "${COMMON[@]}" --base-cfg0 --milestones "${MILESTONES:-150,300}" --variant "$v"
done
# steps up to 3x the default budget, for the best recipe: e.g.
#   python bench/finetune_curve.py "${COMMON[@]}" --milestones 250,500,750 --variant best=train.lr=...
