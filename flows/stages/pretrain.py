"""Stage `pretrain`: the flow-matching base (objective.pretrain, the "fm" preset) -> checkpoints/base/.

    python -m flows.stages.pretrain [--params params.yaml] [--set pretrain.steps=10 ...] [--mlflow-uri URI]

Writes <pretrain.out>/: model.safetensors + model.json (EMA weights; twinflow_core/nets/generator.py), state.ckpt
(optimiser, EMA, RNG, step), train_log.json, summary.json, samples/. A killed run resumes on rerun.
"""

from __future__ import annotations

import sys

from flows.stages._fit import run_stage


def main(argv=None) -> int:
    return run_stage("pretrain", argv)


if __name__ == "__main__":
    sys.exit(main())
