"""Stage `train`: TwinFlow fine-tuning (objective.train) of the base in train.init -> checkpoints/twinflow/.

    python -m flows.stages.train [--params params.yaml] [--set train.init=path/to/generator ...] [--mlflow-uri URI]

train.init is the pretrain stage's output by default, or any generator checkpoint directory (model.json +
model.safetensors). Outputs as for pretrain. A killed run resumes on rerun.
"""
from __future__ import annotations

import sys


def main(argv=None) -> int:
    from flows.stages._fit import run_stage

    return run_stage("train", argv)


if __name__ == "__main__":
    sys.exit(main())
