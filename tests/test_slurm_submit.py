"""The sbatch script submitted by its Prefect task (flows/slurm.py), with stand-ins for `sbatch` and `srun` on PATH
(SLURM itself cannot be installed here). The stand-in does what SLURM does that matters: it prints the job id
(--parsable), opens the script's `--output` log in the submit folder without creating any folder (a path into a
folder a fresh clone lacks fails the job), runs the script with the job's SLURM_* variables, and with --wait exits
with the job's exit code. A real `train` stage runs inside (the smoke configuration, 2 steps, Lightning's SLURM
environment); a job whose stage fails fails the task, and the CLI's last line names the job, its exit code and its log.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from support.pipeline import start_prefect_server, stop

from tests.support.training import ROOT, make_dataset, smoke_params

SBATCH = r"""#!/bin/bash
# stand-in for `sbatch [--parsable] [--wait] SCRIPT ARGS...`
while [[ $1 == --* ]]; do shift; done
script=$1; shift
job=$((4000 + RANDOM % 1000))
echo "$job"
out=$(sed -n 's/^#SBATCH --output=//p' "$script" | head -n1)
out=${out:-slurm-%j.out}
out=${out//%j/$job}
# SLURM opens the log before the script runs and creates no folder for it
: > "$out" 2>/dev/null || exit 1
export SLURM_JOB_ID=$job SLURM_SUBMIT_DIR=$PWD SLURM_JOB_NAME=twinflow SLURM_NTASKS=1 SLURM_NTASKS_PER_NODE=1 \
       SLURM_NNODES=1 SLURM_NODEID=0 SLURM_PROCID=0 SLURM_LOCALID=0 SLURM_NODELIST=127.0.0.1
bash "$script" "$@" >> "$out" 2>&1
"""
SRUN = """#!/bin/bash
# stand-in for `srun [options] COMMAND...` on one task
while [[ $1 == -* ]]; do shift; done
exec "$@"
"""


def _exe(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.mark.slow
def test_a_prefect_task_submits_the_sbatch_script_and_reports_its_exit_code(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    _exe(bindir / "sbatch", SBATCH)
    _exe(bindir / "srun", SRUN)
    checkout = tmp_path / "checkout"  # a fresh clone: no outputs/ folder
    checkout.mkdir()
    data = make_dataset(tmp_path / "data")
    stage_params = smoke_params(tmp_path, data, ["pretrain.steps=2", "pretrain.ckpt_every=1"])
    # the template's placement (a GPU trainer, one node, one task); the stage itself reads the smoke params
    (checkout / "params.yaml").write_text(
        yaml.safe_dump({"pretrain": {"trainer": {"accelerator": "gpu", "devices": 1, "num_nodes": 1}}})
    )
    env = {
        **os.environ,
        "PATH": f"{bindir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    api, server = start_prefect_server(tmp_path / "prefect")
    env.update({"PREFECT_API_URL": api, "PREFECT_HOME": str(tmp_path / "prefect")})

    def submit(*stage_args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "flows.slurm",
                "--stage",
                "pretrain",
                "--workdir",
                str(checkout),
                "--params",
                "params.yaml",
                "--",
                *stage_args,
            ],
            cwd=checkout,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )

    try:
        ok = submit("--params", str(stage_params))
        bad = submit("--params", str(tmp_path / "no-such-params.yaml"))
    finally:
        stop(server)
    assert ok.returncode == 0, (ok.stdout + ok.stderr)[-4000:]
    assert "ended with exit code 0" in ok.stdout
    log = Path(ok.stdout.strip().splitlines()[-1].split("its log: ")[1])
    assert log.parent == checkout and log.name.startswith("slurm-twinflow-pretrain-")
    summary = json.loads([ln for ln in log.read_text().splitlines() if ln.startswith("{")][-1])
    assert (summary["launcher"], summary["steps"]) == ("slurm", 2)
    assert (checkout / "outputs/slurm/pretrain.sbatch").is_file()

    assert bad.returncode == 10, bad.stderr[-3000:]  # the stage's own exit code (a config error)
    # the CLI's last word (above it, Prefect's own log of the failed task, as in the Prefect UI)
    last = bad.stderr.strip().splitlines()[-1]
    assert last.startswith("slurm: error: SLURM job ") and "failed with exit code 10" in last, bad.stderr[-3000:]
    log = Path(last.split("its log: ")[1])
    assert log.is_file() and "no-such-params.yaml" in log.read_text()  # the stage's own error line is in it
