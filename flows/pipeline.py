"""The Prefect flow: prepare -> validate -> pretrain -> train -> evaluate -> push -> register.

Each stage task runs `dvc repro <stage>`, the same command a reproducer types, so an unchanged stage is
skipped and dvc.lock records lineage; its output streams into the task's log. Flow parameters are config
overrides (`train.steps=200`), checked against params.yaml before anything runs and then written into it
(as `dvc exp run -S` does). Transient faults (network, S3, tracking server) are retried with exponential
backoff; deterministic ones (bad data, a bad config, a failing stage) fail at once (flows.faults).
After the stages, outputs are pushed to the DVC remote, then the run is tracked in MLflow and registered;
a failed gate is a normal outcome: the flow completes with the verdict in its final message.
"""
from __future__ import annotations

import glob
import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.states import Completed

from flows import dvc_ops, init_source, tracking
from flows.faults import StageFailed, backoff_delays, retry_on_transient
from flows.overrides import apply_overrides, check_overrides, flatten, load_params, section
from flows.registry import REGISTER_DEFAULTS

STAGES = ("prepare", "validate", "pretrain", "train", "evaluate")
PIPELINE_DEFAULTS = {"push": True, "dvc_remote": "", "retries": 3, "retry_delay_s": 10.0}


@task(name="stage", task_run_name="{stage}")
def run_stage(stage: str, root: str) -> dict:
    logger = get_run_logger()
    result = dvc_ops.repro_stage(stage, root, logger.info)
    ran = stage in result.ran
    logger.info(f"stage {stage}: {'ran' if ran else 'unchanged, skipped'} ({result.seconds:.1f} s)")
    return {"stage": stage, "ran": ran, "seconds": round(result.seconds, 2), "also_ran": result.ran}


@task(name="dvc-push", task_run_name="dvc-push")
def push_outputs(root: str, remote: str) -> dict:
    logger = get_run_logger()
    result = dvc_ops.push(root, logger.info, remote or None)
    return {"seconds": round(result.seconds, 2)}


@task(name="register", task_run_name="register")
def register_run(root: str, flow_run_id: str, run_name: str, tracking_uri: str | None) -> dict:
    """Track this pipeline run in MLflow and register its generator (once per weights+scores)."""
    from flows.registry import register_outputs

    logger = get_run_logger()
    return register_outputs(Path(root), flow_run_id=flow_run_id, run_name=run_name,
                            tracking_uri=tracking_uri, log=logger.info)


def localise_inits(root: Path, parsed: dict, tracking_uri: str | None, log) -> dict:
    """The overrides with a remote pretrain.init / train.init (from them or from params.yaml) fetched into
    checkpoints/<stage>-init and replaced by that folder: DVC hashes a local dependency (flows.init_source)."""
    params = load_params(root / "params.yaml")
    current = flatten(params)
    keys = [f"{stage}.{leaf}" for stage in ("pretrain", "train") for leaf in ("init", "out")]
    values = {key: parsed.get(key, current.get(key)) for key in keys}
    if not any(init_source.is_remote(values[key]) for key in init_source.INIT_KEYS):
        return parsed
    local = init_source.localise(values, root, tracking.resolve_tracking_uri(root, params, tracking_uri), log)
    return {**parsed, **{key: local[key] for key in init_source.INIT_KEYS if local[key] != values[key]}}


def _retrying(task_fn, cfg: dict):
    """The task with retries for transient faults only, exponential backoff."""
    retries = int(cfg["retries"])
    return task_fn.with_options(retries=retries, retry_condition_fn=retry_on_transient,
                                retry_delay_seconds=backoff_delays(retries, float(cfg["retry_delay_s"])) or 0)


@flow(name="twinflow-pipeline", log_prints=True)
def pipeline(overrides: list[str] | None = None, workdir: str | None = None, push: bool = True,
             register_model: bool = True, tracking_uri: str | None = None):
    """Run the TwinFlow pipeline. `overrides`: params.yaml keys to change, e.g. ["train.steps=200"]."""
    from prefect.runtime import flow_run

    logger = get_run_logger()
    start = time.monotonic()
    root, parsed = check_overrides(overrides, workdir)  # before anything runs
    parsed = localise_inits(root, parsed, tracking_uri, logger.info)
    if apply_overrides(root / "params.yaml", parsed):
        logger.info(f"params.yaml updated with overrides: {parsed}")
    params = load_params(root / "params.yaml")
    cfg = section(params, "pipeline", PIPELINE_DEFAULTS)
    declared = dvc_ops.stage_names(root)
    missing = [s for s in STAGES if s not in declared]
    if missing:
        raise StageFailed(f"{root / 'dvc.yaml'}: stage(s) {missing} not declared (have {declared})")

    summary: dict = {"root": str(root), "overrides": parsed, "stages": [],
                     "flow_run_id": str(flow_run.id), "flow_run_name": flow_run.name}
    stage_task = _retrying(run_stage, cfg)
    for stage in STAGES:
        summary["stages"].append(stage_task(stage, str(root)))
    if push and cfg["push"]:
        summary["push"] = _retrying(push_outputs, cfg)(str(root), str(cfg["dvc_remote"] or ""))
    reg = section(params, "register", REGISTER_DEFAULTS)
    summary["samples"] = sorted(str(Path(p)) for p in glob.glob(str(root / "reports" / "samples_*.png")))
    summary["scores"] = tracking.read_scores(root / reg["metrics"])
    if register_model:
        summary["registration"] = _retrying(register_run, cfg)(
            str(root), str(flow_run.id), str(flow_run.name), tracking_uri)
    summary["seconds"] = round(time.monotonic() - start, 2)
    registration = summary.get("registration")
    if registration and registration["verdict"] != "passed":
        # Not a crash: the version is registered as challenger with its verdict; champion is unchanged.
        return Completed(message=f"gate failed: {'; '.join(registration['reasons'])}; "
                                 f"v{registration['version']} stays challenger, champion "
                                 f"{'v' + registration['champion'] if registration['champion'] else 'none'}",
                         data=summary)
    return summary
