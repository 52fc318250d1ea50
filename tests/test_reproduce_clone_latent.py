"""A latent (diffusers) run, really run, then reproduced from a plain `git clone` of its repository.

The same path as tests/test_reproduce_clone.py for the default UNet, on a pretrained pipeline instead: a tiny SD3
folder made with plain diffusers (tests/support/plain_sd3.py, nothing of the project builds it), wrapped, `dvc add`ed
and configured as the README says (`configure experiment=sd3_tiny model.source=...`), so `encode` runs and `pretrain`
does not. After `twinflow run` in the checkout: `dvc status` clean, `dvc repro` idle. From a plain clone of the git
remote, `twinflow models reproduce NAME 1 DIR`: `dvc status` clean and `dvc repro --dry` with nothing to run in DIR,
the latents and the registered transformer's weights the run's.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

pytest.importorskip("diffusers")

from support.pipeline import copy_project, start_prefect_server, stop  # noqa: E402
from test_reproduce_clone import _sh  # noqa: E402

MODEL = "models/tiny-sd3-ext"
SUPPORT = Path(__file__).resolve().parent / "support"
# the sd3_tiny experiment with fewer steps and prompts: the machinery, not quality
SMALL = [
    "data.shapes.n_images=400",
    "train.steps=2",
    "train.ckpt_every=2",
    "evaluate.images_per_prompt=2",
    "evaluate.geneval_max_prompts=2",
    "evaluate.dpg_max_items=1",
    "evaluate.grid_prompts=2",
]


@pytest.mark.slow
def test_a_latent_run_is_reproduced_clean_from_a_plain_clone(tmp_path):
    from flows.params import apply_overrides, load_params, parse_overrides

    project = copy_project(tmp_path / "proj")
    py = sys.executable
    dvc = [py, "-m", "dvc"]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "PATH": f"{Path(py).parent}{os.pathsep}{os.environ['PATH']}",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("TWINFLOW_PUSH_REF", None)
    _sh(project, py, str(SUPPORT / "plain_sd3.py"), MODEL, "--image-size", "32", env=env)
    _sh(project, py, "-m", "twinflow_core.adapters.pipeline", "wrap", MODEL, "--family", "sd3", "--image-size", "32")
    _sh(project, *dvc, "add", MODEL, env=env)
    _sh(project, py, "-m", "flows.stages.configure", "experiment=sd3_tiny", f"model.source={MODEL}", env=env)
    apply_overrides(project / "params.yaml", parse_overrides(SMALL, load_params(project / "params.yaml")))
    _sh(project, *dvc, "remote", "add", "-f", "-d", "store", str(tmp_path / "dvc-store"))
    _sh(tmp_path, "git", "init", "-q", "--bare", str(tmp_path / "origin.git"))
    _sh(project, "git", "remote", "add", "origin", str(tmp_path / "origin.git"))
    _sh(project, "git", "add", "-A")
    _sh(project, "git", "commit", "-qm", "a pipeline folder of my own, sd3_tiny, a DVC remote outside the checkout")
    _sh(project, "git", "push", "-q", "origin", "HEAD:refs/heads/main")
    home = tmp_path / "prefect"
    api, server = start_prefect_server(home)
    env.update({"PREFECT_API_URL": api, "PREFECT_HOME": str(home)})
    try:
        run = _sh(project, py, "-m", "flows.cli", "run", env=env)
    finally:
        stop(server)
    out = run.stdout + run.stderr
    stages = next(line for line in out.splitlines() if line.startswith("stages: "))
    assert "encode ran" in stages and "train ran" in stages and "pretrain ran" not in stages, stages
    status = _sh(project, *dvc, "status", env=env)
    assert "Data and pipelines are up to date" in status.stdout, status.stdout
    dry = _sh(project, *dvc, "repro", "--dry", env=env)
    assert "Running stage" not in dry.stdout, dry.stdout

    clone = tmp_path / "clone"
    _sh(tmp_path, "git", "clone", "-q", str(tmp_path / "origin.git"), str(clone))
    uri = f"sqlite:///{project / 'mlflow.db'}"
    dest = tmp_path / "v1"
    rep = _sh(
        clone, py, "-m", "flows.cli", "models", "--tracking-uri", uri, "reproduce", "twinflow-shapes", "1", str(dest)
    )
    assert "dvc status: clean" in rep.stdout, rep.stdout + rep.stderr
    status = _sh(dest, *dvc, "status", env=env)
    assert "Data and pipelines are up to date" in status.stdout, status.stdout
    dry = _sh(dest, *dvc, "repro", "--dry", env=env)
    assert "Running stage" not in dry.stdout, dry.stdout
    for rel in ("checkpoints/twinflow", "data/prepared/shapes-latents"):
        ours = sorted(p.relative_to(project / rel) for p in (project / rel).rglob("*") if p.is_file())
        theirs = sorted(p.relative_to(dest / rel) for p in (dest / rel).rglob("*") if p.is_file())
        assert ours == theirs and ours, rel
        assert all((project / rel / p).read_bytes() == (dest / rel / p).read_bytes() for p in ours), rel
