#!/usr/bin/env bash
# Device check (one command, < 10 minutes on one H100): SD3.5-Medium's transformer config with all 24 layers at
# 512 px, random init, bf16-mixed: 50 TwinFlow vs flow-matching steps, full and LoRA (step time, peak GPU memory),
# and 1-NFE images/s against the 28-step base. Needs the project's Python deps with a CUDA torch (PYTHON=...).
# Results: $OUT (the device runner's folder) or bench/results/, as device_sd35_full_width.{json,md}.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
OUTDIR=${OUT:-bench/results}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
exec timeout 580 "$PY" bench/device_sd35_full_width.py --out "$OUTDIR" --steps 50 --budget-s 540
