"""A stage on a SLURM cluster from Prefect: the sbatch script rendered from params.yaml (flows/launch_templates.py),
submitted with `sbatch --parsable --wait` from the checkout, which blocks until the job ends and exits with its
exit code. The task reports the job id and that code; a job that failed is a StageFailed naming the job, its
exit code and its log file (in the submit folder, the script's `--output`).

    python -m flows.slurm [--params params.yaml] [--stage train] [--set partition=... ...] [-- STAGE_ARGS ...]

runs the flow once from the command line (the Prefect API in PREFECT_API_URL, else an ephemeral one).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

from prefect import flow, get_run_logger, task

from flows import launch_templates
from flows.faults import StageFailed
from twinflow_core.errors import ConfigError, TwinflowError, exit_code

SCRIPTS = Path("outputs/slurm")  # rendered scripts, inside the checkout (git-ignored outputs/)


def submit(script: Path, cwd: Path, log, stage_args: tuple[str, ...] = ()) -> dict:
    """`sbatch --parsable --wait SCRIPT [ARGS]` in `cwd`: {"job_id", "exit_code", "log"} (raises on no sbatch)."""
    try:
        proc = subprocess.Popen(
            ["sbatch", "--parsable", "--wait", str(script), *stage_args],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    except FileNotFoundError:
        raise ConfigError(
            f"sbatch: not found on PATH (run this on a SLURM login node, or submit the script {script} there by hand)"
        ) from None
    job_id, lines = "", []
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        lines.append(line)
        if not job_id and re.fullmatch(r"\d+(;\S+)?", line):  # --parsable: "<job id>[;<cluster>]"
            job_id = line.split(";")[0]
            log(f"submitted {script} as SLURM job {job_id}; waiting for it to end")
        elif line:
            log(line)
    rc = proc.wait()
    output = re.search(r"^#SBATCH --output=(\S+)$", script.read_text(), re.M)
    log_file = str(cwd / output.group(1).replace("%j", job_id or "<job id>")) if output else "(sbatch's default)"
    return {"job_id": job_id, "exit_code": rc, "log": log_file, "tail": lines[-5:]}


@task(name="sbatch", task_run_name="sbatch-{stage}")
def submit_stage(
    stage: str,
    root: str,
    params: str = "params.yaml",
    settings: dict | None = None,
    stage_args: list[str] | None = None,
) -> dict:
    """Render the stage's sbatch script into outputs/slurm/, submit it, wait, report the job's exit code."""

    logger = get_run_logger()
    cwd = Path(root).resolve()
    script = cwd / SCRIPTS / f"{stage}.sbatch"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(launch_templates.render("sbatch", cwd / params, stage, settings))
    result = submit(script, cwd, logger.info, tuple(stage_args or ()))
    logger.info(
        f"SLURM job {result['job_id'] or '?'} ({stage}) ended with exit code {result['exit_code']}; "
        f"its log: {result['log']}"
    )
    if result["exit_code"] != 0:
        raise StageFailed(
            f"SLURM job {result['job_id'] or '?'} ({stage}) failed with exit code "
            f"{result['exit_code']}; its log: {result['log']}",
            result["exit_code"],
        )
    return result


@flow(name="twinflow-slurm-stage")
def slurm_stage(
    stage: str = "train",
    workdir: str = ".",
    params: str = "params.yaml",
    settings: dict | None = None,
    stage_args: list[str] | None = None,
) -> dict:
    """One training stage as a SLURM batch job (the checkout on storage the cluster's nodes share)."""
    return submit_stage(stage, workdir, params, settings, stage_args)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    stage_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(prog="python -m flows.slurm", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--stage", default="train", choices=["pretrain", "train"])
    parser.add_argument("--workdir", default=".")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    settings = dict(item.split("=", 1) for item in args.sets if "=" in item)
    try:
        result = slurm_stage(args.stage, args.workdir, args.params, settings, stage_args)
    except TwinflowError as err:  # a failed job too (StageFailed: its exit code when an input family's, else 16)
        print(f"slurm: error: {err}", file=sys.stderr)
        return exit_code(err)
    print(f"SLURM job {result['job_id']} ({args.stage}) ended with exit code 0; its log: {result['log']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
