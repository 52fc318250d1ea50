"""Stand-in stage commands for fast orchestration tests: `python -m support.toy_stages <stage>`.

They read params.yaml and write the outputs the real stages write (a real tiny generator checkpoint,
metrics/eval.json with the evaluate stage's metric names, a sample grid), in well under a second, so the
flow, DVC caching, retries, faults and registration can be tested without minutes of training.
Knobs in params.yaml `toy:`: fail (a stage that raises a DataError), flaky (a stage that fails with a
connection error that many times first), scores, sleep_stage/sleep (a stage that takes that many seconds,
so that runs overlap or can be interrupted mid-stage).
Attempts go to $TOY_ATTEMPTS when set (a run in a workspace of its own logs to its project's file), else
to attempts.log where the stage runs. Every attempt is appended to attempts.log.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import yaml

from twinflow_core.errors import DataError


def main(stage: str) -> int:
    params = yaml.safe_load(Path("params.yaml").read_text())
    toy = params["toy"]
    log = os.environ.get("TOY_ATTEMPTS", "attempts.log")
    with open(log, "a") as fh:
        fh.write(stage + "\n")
    print(f"toy stage {stage}: starting")
    if toy.get("fail") == stage:
        print(f"twinflow_core.errors.DataError: data/prepared/toy/images.npy: row 3 is blank ({stage})")
        return DataError.exit_code  # as a real stage does for bad data
    if toy.get("sleep_stage") == stage:
        import time

        time.sleep(float(toy.get("sleep", 0)))
    if toy.get("flaky_stage") == stage:
        tries = Path(log).read_text().split().count(stage)
        if tries <= int(toy.get("flaky", 0)):
            print(
                "requests.exceptions.ConnectionError: HTTPSConnectionPool(host='s3.example'): "
                "Max retries exceeded (Connection refused)"
            )
            return 1
    if stage == "prepare":
        out = Path("data/prepared/toy")
        out.mkdir(parents=True, exist_ok=True)
        (out / "images.txt").write_text(f"{toy['size']} images\n")
    elif stage == "validate":
        Path("reports/data/toy").mkdir(parents=True, exist_ok=True)
        Path("reports/data/toy/validation.json").write_text(json.dumps({"success": True}))
    elif stage == "pretrain":
        Path("checkpoints/base").mkdir(parents=True, exist_ok=True)
        Path("checkpoints/base/base.txt").write_text(f"base {toy['seed']}\n")
    elif stage == "train":
        from support.pipeline import make_checkpoint

        make_checkpoint(Path("checkpoints/twinflow"), seed=int(toy["seed"]))
    elif stage == "evaluate":
        from support.pipeline import CAPTIONS, scores

        from twinflow_core.checkpoint import load_generator
        from twinflow_core.viz import save_image_grid

        Path("metrics").mkdir(exist_ok=True)
        s = scores(float(toy["geneval"]), float(toy["dpg"]))
        Path("metrics/eval.json").write_text(json.dumps(s, indent=1))
        images = load_generator("checkpoints/twinflow").generate(CAPTIONS, nfe=1, seed=0)
        save_image_grid(images, "reports/samples_1nfe.png", captions=CAPTIONS)
    for i in range(3):
        print(f"{stage} progress {i + 1}/3", end="\r", flush=True)
    print(f"\ntoy stage {stage}: done")
    return 0


DVC_YAML = {
    "stages": {
        "prepare": {
            "cmd": "python -m support.toy_stages prepare",
            "params": ["toy.size"],
            "outs": ["data/prepared/toy"],
        },
        "validate": {
            "cmd": "python -m support.toy_stages validate",
            "deps": ["data/prepared/toy"],
            "params": ["toy.fail", "toy.flaky"],
            "outs": [{"reports/data/toy/validation.json": {"cache": False}}],
        },
        "pretrain": {
            "cmd": "python -m support.toy_stages pretrain",
            "deps": ["data/prepared/toy"],
            "params": ["toy.seed"],
            "outs": ["checkpoints/base"],
        },
        "train": {
            "cmd": "python -m support.toy_stages train",
            "deps": ["checkpoints/base"],
            "params": ["toy.seed"],
            "outs": ["checkpoints/twinflow"],
        },
        "evaluate": {
            "cmd": "python -m support.toy_stages evaluate",
            "deps": ["checkpoints/twinflow"],
            "params": ["toy.geneval", "toy.dpg"],
            "outs": [{"reports/samples_1nfe.png": {"cache": False}}],
            "metrics": [{"metrics/eval.json": {"cache": False}}],
        },
    }
}

if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
