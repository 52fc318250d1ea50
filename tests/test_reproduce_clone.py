"""The default UNet configuration, really run, then reproduced from a plain `git clone` of its repository.

A real tiny run of the default pipeline (the committed base in artifacts/bases/, so `pretrain` is not used; a UNet,
so `encode` is not either; only the sizes shrunk) in a copy of the project with a git `origin` and a local-folder
DVC remote. After it: `dvc status` clean and `dvc repro` idle in the checkout (dvc.yaml declares only the stages
the configuration uses, flows/stage_use.py), and nothing pushed to `origin` (pipeline.push_ref is off by default).
Then, as a colleague would: `git clone` (no refs/exps in it), `twinflow models reproduce NAME 1 DIR` from there
(the ref is fetched from the repository the version recorded), `dvc status` clean and `dvc repro --dry` with
nothing to run in DIR, the registered weights. With the ref gone from every repository it knows, the command
says so in one line naming --repo.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.pipeline import copy_project, start_prefect_server, stop

# the default configuration (train.init = the committed base, UNet): only sizes and the gate changed
SMALL = [
    "data.shapes.n_images=400",
    "train.steps=4",
    "train.batch_size=16",
    "train.ckpt_every=2",
    "train.sample_every=0",
    "train.progress=false",
    "evaluate.images_per_prompt=2",
    "evaluate.geneval_max_prompts=6",
    "evaluate.dpg_max_items=2",
    "evaluate.grid_prompts=4",
    "evaluate.batch=16",
    "gate.min.geneval-shapes/overall@1nfe=0.0",
    "gate.min.dpg-shapes/score@1nfe=0.0",
    "gate.ratio.geneval-shapes/overall@1nfe=0",
    "gate.ratio.dpg-shapes/score@1nfe=0",
]


def _sh(cwd: Path, *args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)
    assert not check or proc.returncode == 0, (args, proc.stdout[-3000:], proc.stderr[-3000:])
    return proc


@pytest.mark.slow
def test_the_default_run_is_reproduced_clean_from_a_plain_clone(tmp_path):
    from flows.params import apply_overrides, load_params, parse_overrides

    project = copy_project(tmp_path / "proj")
    apply_overrides(project / "params.yaml", parse_overrides(SMALL, load_params(project / "params.yaml")))
    dvc = [sys.executable, "-m", "dvc"]
    _sh(project, *dvc, "remote", "add", "-f", "-d", "store", str(tmp_path / "dvc-store"))
    _sh(tmp_path, "git", "init", "-q", "--bare", str(tmp_path / "origin.git"))
    _sh(project, "git", "remote", "add", "origin", str(tmp_path / "origin.git"))
    _sh(project, "git", "commit", "-qam", "small default run, a DVC remote outside the checkout")
    _sh(project, "git", "push", "-q", "origin", "HEAD:refs/heads/main")
    home = tmp_path / "prefect"
    api, server = start_prefect_server(home)
    env = {
        **os.environ,
        "PREFECT_API_URL": api,
        "PREFECT_HOME": str(home),
        "OMP_NUM_THREADS": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("TWINFLOW_PUSH_REF", None)
    try:
        # `twinflow run` from the project folder, no --workdir: the checkout of the current folder
        run = _sh(project, sys.executable, "-m", "flows.cli", "run", env=env)
    finally:
        stop(server)
    out = run.stdout + run.stderr
    stages = next(line for line in out.splitlines() if line.startswith("stages: "))
    assert "encode" not in stages and not (project / "checkpoints/base").exists(), stages  # neither ran
    status = _sh(project, *dvc, "status", env=env)
    assert "Data and pipelines are up to date" in status.stdout, status.stdout
    dry = _sh(project, *dvc, "repro", "--dry", env=env)
    assert "Running stage" not in dry.stdout, dry.stdout
    assert _sh(project, "git", "ls-remote", "origin", "refs/exps/*").stdout.strip() == ""  # nothing pushed

    clone = tmp_path / "clone"
    _sh(tmp_path, "git", "clone", "-q", str(tmp_path / "origin.git"), str(clone))
    assert _sh(clone, "git", "for-each-ref", "refs/exps").stdout.strip() == ""
    uri = f"sqlite:///{project / 'mlflow.db'}"
    dest = tmp_path / "v1"
    rep = _sh(
        clone,
        sys.executable,
        "-m",
        "flows.cli",
        "models",
        "--tracking-uri",
        uri,
        "reproduce",
        "twinflow-shapes",
        "1",
        str(dest),
        env=env,
    )
    assert "dvc status: clean" in rep.stdout, rep.stdout + rep.stderr
    status = _sh(dest, *dvc, "status", env=env)
    assert "Data and pipelines are up to date" in status.stdout, status.stdout
    dry = _sh(dest, *dvc, "repro", "--dry", env=env)
    assert "Running stage" not in dry.stdout, dry.stdout
    assert (dest / "checkpoints/twinflow/model.safetensors").read_bytes() == (
        project / "checkpoints/twinflow/model.safetensors"
    ).read_bytes()
    assert not (dest / "data/prepared/shapes-latents").exists()

    # the ref in no repository it can find: one line naming --repo, the usage exit code
    ref = _sh(dest, "git", "for-each-ref", "--format=%(refname)", "refs/exps").stdout.split()[0]
    _sh(project, "git", "update-ref", "-d", ref)
    gone = _sh(
        clone,
        sys.executable,
        "-m",
        "flows.cli",
        "models",
        "--tracking-uri",
        uri,
        "reproduce",
        "twinflow-shapes",
        "1",
        str(tmp_path / "v1-again"),
        env=env,
        check=False,
    )
    assert gone.returncode == 2 and "pass --repo" in gone.stderr and "Traceback" not in gone.stderr, gone.stderr
    assert len(gone.stderr.strip().splitlines()) == 1, gone.stderr
