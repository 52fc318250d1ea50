"""Stage `train`: TwinFlow fine-tuning (objective.train) of the base in train.init -> checkpoints/twinflow/.

    python -m flows.stages.train [--params params.yaml] [--set train.init=path/to/generator ...] [--mlflow-uri URI]

train.init is the pretrain stage's output by default, or any generator checkpoint: a directory (model.json +
model.safetensors), `s3://bucket/prefix`, or an MLflow URI such as `models:/twinflow-shapes@champion`; a remote
one is fetched into checkpoints/train-init first (flows/init_source.py). Outputs as for pretrain. A killed run
resumes on rerun.
"""

from __future__ import annotations

import sys

from flows.stages._fit import run_stage


def main(argv=None) -> int:
    return run_stage("train", argv)


if __name__ == "__main__":
    sys.exit(main())
