"""Registration time of a tiny run against the team MLflow server with basic-auth (infra/mlflow/entrypoint.sh, sqlite
stores, one server worker), per password-cache TTL and per metric ordering.

    python bench/registration_auth.py [--ttl 0 --ttl 60] [--order after before] [--out bench/results/registration_auth.json]

A tiny real generator (tests/support/pipeline.make_outputs) with the evaluate stage's real metrics file
(metrics/eval.json: ~200 metrics) is registered by `flows.register_step.register_outputs` as the pipeline's account.
`--order before` logs the metrics before the model, as the code did (MLflow's log_model then fetches the history
of every metric of the run to link it to the model: one authenticated request each); `after` is the code's order.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def one(ttl: int, order: str, folder: Path) -> float:
    from support import auth_mlflow
    from support.pipeline import make_outputs, scores

    from flows import register_step, tracking
    from flows.servers import stop

    url, proc = auth_mlflow.start(folder / "server", ttl_s=ttl)
    try:
        proj = make_outputs(folder / "proj", scores(0.8, 80.0), seed=2)
        real = json.loads((ROOT / "metrics" / "eval.json").read_text())
        (proj / "metrics" / "eval.json").write_text(json.dumps({**real, **scores(0.8, 80.0)}))
        original = tracking.log_pipeline_run
        if order == "before":
            import mlflow

            def log_first(**kwargs):
                started = mlflow.start_run

                def start(*a, **k):
                    run = started(*a, **k)
                    mlflow.log_metrics({tracking.mlflow_key(n): v for n, v in kwargs["scores"].items()})
                    return run

                mlflow.start_run = start
                try:
                    return original(**kwargs)
                finally:
                    mlflow.start_run = started

            tracking.log_pipeline_run = log_first
        try:
            with auth_mlflow.account_env(auth_mlflow.as_account("pipeline")):
                start = time.monotonic()
                register_step.register_outputs(proj, tracking_uri=url, log=lambda _: None)
                return time.monotonic() - start
        finally:
            tracking.log_pipeline_run = original
    finally:
        stop(proc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ttl", type=int, action="append")
    parser.add_argument("--order", nargs="+", default=["after"], choices=["after", "before"])
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    rows = []
    for ttl in args.ttl or [60]:
        for order in args.order:
            with tempfile.TemporaryDirectory(prefix="twinflow-regbench-") as tmp:
                seconds = one(ttl, order, Path(tmp))
            rows.append({"ttl_s": ttl, "metrics": order, "seconds": round(seconds, 1)})
            print(json.dumps(rows[-1]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
