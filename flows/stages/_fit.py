"""What the `pretrain` and `train` stage entry points share: read params.yaml, validate, attach MLflow, fit.

    python -m flows.stages.pretrain [--params params.yaml] [--set pretrain.steps=10 ...] [--mlflow-uri URI]

MLflow logging (Lightning's MLFlowLogger) is on when --mlflow-uri or MLFLOW_TRACKING_URI is set: the resolved
config, every loss term, lr, throughput, the sample grids, the exported model.json and the run summary.
Prints one JSON summary line;
a user-fixable problem is one line on stderr, with its family's exit code (README, "Errors and exit codes").
"""

# Lazy imports: lightning, numpy, omegaconf, torch
# (slow to load or not in the base install: only the functions that use them load them)
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from flows import init_source
from flows.params import load_with_sets
from flows.quiet import quiet_loading_bars, quiet_third_party
from flows.stages._cli import stage_main, stage_parser
from flows.tracking import hide_run_links_with_credentials, resolve_tracking_uri
from twinflow_core.redaction import redact


def parse_args(stage: str, argv) -> argparse.Namespace:
    parser = stage_parser(stage, __doc__, f"{stage}.steps=10")
    parser.add_argument(
        "--mlflow-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI"),
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI; unset: no MLflow logging)",
    )
    parser.add_argument(
        "--experiment",
        default=os.environ.get("MLFLOW_EXPERIMENT_NAME", "twinflow"),
        help="MLflow experiment name (default: $MLFLOW_EXPERIMENT_NAME or twinflow)",
    )
    return parser.parse_args(argv)


def load(params_path: str | Path, overrides: list[str]):
    from twinflow_core.training.config_checks import load_sections

    path = Path(params_path)
    where = f"{path} with --set {' '.join(overrides)}" if overrides else str(path)
    return load_sections(load_with_sets(path, overrides), where=where)


def _mlflow_logger(uri: str, experiment: str, stage: str, sections):
    from lightning.pytorch.loggers import MLFlowLogger

    from twinflow_core.training.config import to_dict
    from twinflow_core.training.run import run_key

    hide_run_links_with_credentials(uri)
    logger = MLFlowLogger(
        experiment_name=experiment,
        tracking_uri=uri,
        run_name=f"{stage}-{run_key(sections, stage)}",
        tags={"stage": stage, "twinflow.run_key": run_key(sections, stage)},
    )
    resolved = {
        "model": to_dict(sections.model),
        "objective": to_dict(getattr(sections.objective, stage)),
        stage: to_dict(getattr(sections, stage)),
    }
    logger.log_hyperparams(resolved)
    return logger


def run_stage(stage: str, argv=None) -> int:
    quiet_third_party()  # Lightning's advertising tips out of the stage log
    args = parse_args(stage, argv)
    return stage_main(stage, lambda: _fit(stage, args))


def _fit(stage: str, args: argparse.Namespace) -> None:
    """Fits the stage's model as params.yaml (and --set) say; global rank 0 records the run (MLflow, the summary
    files) and prints its summary."""
    sections = load(args.params, args.overrides)
    section = getattr(sections, stage)
    from twinflow_core.training.config import is_pretrained

    if is_pretrained(sections.model):  # a diffusers pipeline is loaded: its loading bars out of the log
        quiet_loading_bars()
    from twinflow_core.training.launch import detect

    # torchrun, SLURM or Lightning's own launcher: the environment says which, and where this process sits
    launch = detect(section.trainer.devices, section.trainer.num_nodes)
    if init_source.is_remote(section.init):  # s3:// or models:/ -> checkpoints/<stage>-init (see init_source)
        # once per node: local rank 0 fetches, the node's other ranks wait for it (all may start at once)
        section.init = str(
            init_source.fetch_for_launch(
                section.init,
                init_source.local_folder(section.out, stage),
                resolve_tracking_uri(".", None, args.mlflow_uri),
                launch,
            )
        )
    from twinflow_core.training.run import fit

    loggers, hooks = [], []
    if args.mlflow_uri and launch.global_rank == 0:  # the other ranks record nothing in MLflow
        logger = _mlflow_logger(args.mlflow_uri, args.experiment, stage, sections)
        loggers.append(logger)
        hooks.append(lambda path, step: logger.experiment.log_artifact(logger.run_id, str(path), "samples"))
    # progress=None: fit draws a bar on a terminal and prints progress lines in a log (Prefect, dvc repro | tee)
    summary = fit(stage, sections, loggers=loggers, on_grid=hooks, launch=launch)
    if not summary.pop("is_global_zero"):
        return
    out = Path(summary["out"])
    if loggers:
        logger = loggers[0]
        summary["mlflow_run_id"] = logger.run_id
        final = {k: v for k, v in summary.get("final", {}).items() if isinstance(v, (int, float)) and k != "step"}
        logger.log_metrics(
            {"summary/seconds": summary["seconds"], **{f"final/{k}": v for k, v in final.items()}},
            step=summary["steps"],
        )
        for name in ("model.json", "train_log.json"):
            if (out / name).is_file():
                logger.experiment.log_artifact(logger.run_id, str(out / name), "checkpoint")
        logger.finalize("success")
    from twinflow_core.training.run import RUN_KEYS

    # out/ is a DVC output: what the same inputs reproduce bitwise goes there, the wall clock and the run's ids
    # beside it (checkpoints/twinflow.run.json, untracked), so a rerun leaves dvc.lock unchanged
    (out / "summary.json").write_text(json.dumps({k: v for k, v in summary.items() if k not in RUN_KEYS}, indent=1))
    out.with_name(out.name + ".run.json").write_text(  # ids and URIs of this run: never a credential
        redact(json.dumps({k: summary.get(k) for k in RUN_KEYS}, indent=1))
    )
    print(json.dumps(summary))
