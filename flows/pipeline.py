"""The Prefect flow: prepare -> validate -> [encode] -> pretrain -> train -> evaluate -> save ref -> push -> register.

Each stage task runs `dvc repro <stage>`, the same command a reproducer types, so an unchanged stage is
skipped and dvc.lock records lineage; its output streams into the task's log. Flow parameters are config
overrides (`train.steps=200`), checked against params.yaml before anything runs.
Where a run works (flows.workspace): without overrides, in the checkout itself under an exclusive lock (a
second such run is refused with a one-line message naming the first); with overrides (or `isolate=True`),
in a git worktree of its own under .dvc/tmp/twinflow-runs/, sharing the DVC cache, with the overrides
written into that workspace's params.yaml only, as `dvc exp run --temp -S` does. The checkout's
params.yaml is never written, so a failed, interrupted or killed run cannot leave a value behind.
After the stages the workspace is saved as a DVC experiment ref (params.yaml, dvc.lock, the uncached
outputs and the code that ran), outputs are pushed to the DVC remote (and the ref to the git remote, if
there is one), then the run is tracked in MLflow and registered, its version naming that ref.
Transient faults (network, S3, tracking server) are retried with exponential backoff; deterministic ones
(bad data, a bad config, a failing stage) fail at once (flows.faults). A failed gate is a normal outcome:
the flow completes with the verdict in its final message.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.runtime import flow_run
from prefect.states import Completed

from flows import dvc_ops, init_arch, init_source, schema, stage_backup, stage_use, tracking, workspace
from flows.config_check import check_overrides
from flows.faults import StageFailed, TransientFault, backoff_delays, gave_up, retry_on_transient
from flows.git import remote_url
from flows.params import Params, flatten, section
from flows.register_step import REGISTER_DEFAULTS, register_outputs
from flows.stage_use import base_unused, encode_unused  # noqa: F401 (also used by tests)
from twinflow_core.redaction import RedactingFilter, redact

STAGES = ("prepare", "validate", "encode", "pretrain", "train", "evaluate")
# push_ref: whether run refs are pushed to a git remote at all (off by default: a clone of a shared repository
# must not write to it; the team deployment turns it on); git_remote: which one ("" = origin, else the only one)
PIPELINE_DEFAULTS = schema.defaults("pipeline")  # flows/schema.py PIPELINE


def push_ref_wanted(cfg: dict) -> bool:
    """pipeline.push_ref, or TWINFLOW_PUSH_REF=1 in the worker's environment (the team deployment sets it)."""

    return bool(cfg["push_ref"]) or os.environ.get("TWINFLOW_PUSH_REF", "").strip().lower() in ("1", "true", "yes")


@task(name="stage", task_run_name="{stage}")
def run_stage(stage: str, root: str, lock_fd: int | None = None) -> dict:
    logger = get_run_logger()
    # DVC deletes a stage's outputs before running it: a failure must not leave the checkout without them
    with stage_backup.outputs_kept_on_failure(root, logger.info):
        result = dvc_ops.repro_stage(stage, root, logger.info, pass_fds=(lock_fd,) if lock_fd is not None else ())
    ran = any(stage_use.is_stage(name, stage) for name in result.ran)  # an optional stage runs as `<stage>@used`
    logger.info(f"stage {stage}: {'ran' if ran else 'unchanged, skipped'} ({result.seconds:.1f} s)")
    return {"stage": stage, "ran": ran, "seconds": round(result.seconds, 2), "also_ran": result.ran}


@task(name="dvc-push", task_run_name="dvc-push")
def push_outputs(root: str, remote: str, ref: str = "", git_remote: str = "", push_ref: bool = False) -> dict:
    """The outputs of dvc.lock to the DVC remote, then, when the team asked for it (pipeline.push_ref), the run's
    ref to the git remote."""
    logger = get_run_logger()
    result = dvc_ops.push(root, logger.info, remote or None)
    pushed_to = None
    if ref and push_ref:
        pushed_to = dvc_ops.push_ref(root, ref, logger.info, git_remote)
    elif ref:
        logger.info(f"{ref} stays in this repository (pipeline.push_ref is off: no git push)")
    return {"seconds": round(result.seconds, 2), "ref_pushed_to": pushed_to}


@task(name="save-ref", task_run_name="save-ref")
def save_ref(root: str, name: str, message: str) -> dict:
    """The workspace as a DVC experiment ref (params.yaml, dvc.lock, uncached outputs, code)."""
    ref, commit = workspace.save_run_ref(Path(root), name, message)
    get_run_logger().info(
        f"run saved as {ref} ({commit[:10]}): `dvc exp apply {commit[:10]}` brings it into a checkout"
    )
    return {"ref": ref, "commit": commit}


@task(name="register", task_run_name="register")
def register_run(
    root: str,
    flow_run_id: str,
    run_name: str,
    tracking_uri: str | None,
    project: str | None = None,
    git_ref: dict | None = None,
) -> dict:
    """Track this pipeline run in MLflow and register its generator (once per weights+scores)."""
    logger = get_run_logger()
    return register_outputs(
        Path(root),
        flow_run_id=flow_run_id,
        run_name=run_name,
        tracking_uri=tracking_uri,
        log=logger.info,
        project=Path(project) if project else None,
        git_ref=git_ref,
    )


def localise_inits(root: Path, parsed: dict, tracking_uri: str | None, log) -> dict:
    """The overrides with a remote pretrain.init / train.init (from them or from params.yaml) fetched into
    checkpoints/<stage>-init and replaced by that folder: DVC hashes a local dependency (flows.init_source), and
    tracks the folder (<folder>.dvc), so a reproduction of the run pulls the same weights."""
    params = Params.read(root / "params.yaml").tree
    current = flatten(params)
    keys = [f"{stage}.{leaf}" for stage in ("pretrain", "train") for leaf in ("init", "out")]
    values = {key: parsed.get(key, current.get(key)) for key in keys}
    if not any(init_source.is_remote(values[key]) for key in init_source.INIT_KEYS):
        return parsed
    local = init_source.localise(values, root, tracking.resolve_tracking_uri(root, params, tracking_uri), log)
    fetched = {key: local[key] for key in init_source.INIT_KEYS if local[key] != values[key]}
    if (root / ".dvc").is_dir():  # under DVC: the run's ref and push carry what it trained from
        for rel in dict.fromkeys(fetched.values()):
            init_source.track(root, rel, log)
    return {**parsed, **fetched}


def _redact_logs() -> None:
    """Every handler of Prefect's loggers (the console, the API handler that stores flow and task run logs) masks
    credentials (twinflow_core.redaction.RedactingFilter): stage output streamed into the log included."""

    for name in ("prefect", "prefect.flow_runs", "prefect.task_runs", ""):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(RedactingFilter())


def _retrying(task_fn, cfg: dict):
    """The task with retries for transient faults only, exponential backoff; a transient fault that outlives
    them says so (how many attempts, how far apart) instead of promising a retry."""
    retries = int(cfg["retries"])
    delays = backoff_delays(retries, float(cfg["retry_delay_s"]))
    task = task_fn.with_options(retries=retries, retry_condition_fn=retry_on_transient, retry_delay_seconds=delays or 0)

    def call(*args):
        try:
            return task(*args)
        except TransientFault as err:
            raise gave_up(err, retries + 1, delays) from err

    return call


@flow(name="twinflow-pipeline", log_prints=True)
def pipeline(
    overrides: list[str] | None = None,
    workdir: str | None = None,
    push: bool = True,
    register_model: bool = True,
    tracking_uri: str | None = None,
    isolate: bool | None = None,
):
    """Run the TwinFlow pipeline. `overrides`: params.yaml keys to change, e.g. ["train.steps=200"].
    `isolate`: work in a workspace of its own (default: exactly when there are overrides or a remote init)."""

    logger = get_run_logger()
    start = time.monotonic()
    _redact_logs()
    root, parsed, checkout_params = check_overrides(overrides, workdir, tracking_uri)  # before anything runs
    isolated = workspace.wants_isolation(root, parsed, isolate)
    run_label = f"{flow_run.name or 'run'}-{str(flow_run.id or '')[:8]}".strip("-")
    # MLflow's default store is the checkout's mlflow.db, wherever the stages run (an override of
    # register.tracking_uri counts, as it would in the run's params.yaml)
    tracking_uri = tracking.resolve_tracking_uri(root, checkout_params.with_overrides(parsed).tree, tracking_uri)
    if isolated:
        ws = workspace.create_isolated(root, workspace.ref_name(run_label), logger.info)
        try:
            summary = _run_in(ws, parsed, push, register_model, tracking_uri, run_label, logger, start)
        except BaseException:
            logger.error(
                f"run workspace kept for a look: {ws.path} (remove it with "
                f"`git worktree remove --force {ws.path}`); {root / 'params.yaml'} is untouched"
            )
            raise
        workspace.remove_isolated(ws)  # its outputs are in the DVC cache and the ref, its record in MLflow
    else:
        with workspace.checkout_lock(root, str(flow_run.id)) as fd:
            ws = workspace.Workspace(checkout=root, path=root, isolated=False, lock_fd=fd)
            summary = _run_in(ws, parsed, push, register_model, tracking_uri, run_label, logger, start)
    registration = summary.get("registration")
    if registration and registration["verdict"] != "passed":
        # Not a crash: the version is registered as challenger with its verdict; champion is unchanged.
        return Completed(
            message=f"gate failed: {'; '.join(registration['reasons'])}; "
            f"v{registration['version']} stays challenger, champion "
            f"{'v' + registration['champion'] if registration['champion'] else 'none'}",
            data=summary,
        )
    return summary


def _run_in(
    ws: workspace.Workspace,
    parsed: dict,
    push: bool,
    register_model: bool,
    tracking_uri: str,
    run_label: str,
    logger,
    start: float,
) -> dict:
    """The stages, the run's ref, push and registration, all in `ws.path`."""

    root = ws.path
    parsed = localise_inits(root, parsed, tracking_uri, logger.info)
    written = Params.read(root / "params.yaml")  # the workspace's copy (in place: the checkout's, parsed already)
    if ws.isolated:  # the optional stages' lists follow the overrides (in place: params.yaml must already agree)
        parsed = {**parsed, **stage_use.overrides(written.with_overrides(parsed).tree)}
    written, changed = written.write(parsed)
    if changed:
        logger.info(redact(f"{root / 'params.yaml'} updated with overrides: {parsed}"))
    params = written.tree
    stage_use.check(params, str(root / "params.yaml"))
    init_arch.check_inits(params, root, str(root / "params.yaml"))  # a fetched init too, before the first stage
    cfg = section(params, "pipeline", PIPELINE_DEFAULTS)
    declared = dvc_ops.stage_names(root)  # dvc.yaml's keys: an optional stage is declared there even when unused
    missing = [s for s in STAGES if s not in declared and not (s == "encode" and encode_unused(params))]
    if missing:
        raise StageFailed(f"{root / 'dvc.yaml'}: stage(s) {missing} not declared (have {declared})")

    summary: dict = {
        "root": str(root),
        "checkout": str(ws.checkout),
        "isolated": ws.isolated,
        "overrides": parsed,
        "stages": [],
        "flow_run_id": str(flow_run.id),
        "flow_run_name": flow_run.name,
    }
    stage_task = _retrying(run_stage, cfg)
    for stage in STAGES:
        if stage == "encode" and encode_unused(params):  # a UNet run: no latents, and no line about them
            continue
        unused = stage == "pretrain" and base_unused(params)
        if unused:  # the base comes from elsewhere (by default the committed one): a 15-minute stage nobody reads
            logger.info(f"stage pretrain: not needed, skipped ({unused})")
            summary["stages"].append({"stage": stage, "ran": False, "seconds": 0.0, "also_ran": [], "skipped": unused})
            continue
        summary["stages"].append(stage_task(stage, str(root), ws.lock_fd))
    summary["git_ref"] = save_ref(
        str(root),
        run_label,
        redact(
            f"twinflow run {run_label} (flow run {flow_run.id})"
            + (f"\n\noverrides: {json.dumps(parsed, sort_keys=True)}" if parsed else "")
        ),
    )
    if push and cfg["push"]:
        summary["push"] = _retrying(push_outputs, cfg)(
            str(root),
            str(cfg["dvc_remote"] or ""),
            summary["git_ref"]["ref"],
            str(cfg["git_remote"] or ""),
            push_ref_wanted(cfg),
        )
    # the repository a reproduction fetches the ref from: the git remote it was pushed to, else this checkout's
    # repository (a worktree's refs live there)
    pushed_to = (summary.get("push") or {}).get("ref_pushed_to")
    summary["git_ref"] = {
        **summary["git_ref"],
        "repo": remote_url(root, pushed_to) if pushed_to else str(ws.checkout),
    }
    reg = section(params, "register", REGISTER_DEFAULTS)
    grids = sorted(Path(p).relative_to(root) for p in glob.glob(str(root / "reports" / "samples_*.png")))
    # an isolated workspace is removed after a successful run: its grids are in the ref (and in MLflow)
    summary["samples"] = [f"{summary['git_ref']['commit'][:10]}:{g}" if ws.isolated else str(root / g) for g in grids]
    summary["scores"] = tracking.read_scores(root / reg["metrics"])
    if register_model:
        summary["registration"] = _retrying(register_run, cfg)(
            str(root), str(flow_run.id), str(flow_run.name), tracking_uri, str(ws.checkout), summary["git_ref"]
        )
    summary["seconds"] = round(time.monotonic() - start, 2)
    return summary
