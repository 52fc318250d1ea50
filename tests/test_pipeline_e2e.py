"""End to end: `twinflow run` on a copy of the project with a tiny config (the real stages: prepare,
validate, pretrain, train, evaluate), against a real MLflow tracking server and a real Prefect server,
both started on 127.0.0.1 by the test. Then: the run is in Prefect, the version is in MLflow and loads
with pyfunc and generates at 1 NFE, `dvc status` is clean, and a second run reuses every stage."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support.pipeline import REPO, start_mlflow_server, start_prefect_server, stop

# A run of seconds per stage: a few images, the tiny net, 4 steps, a handful of prompts; gate at 0 so it passes.
TINY = [
    "data.shapes.n_images=400",
    "model.channels=[16,32]", "model.attn_levels=[1]", "model.text_dim=32", "model.text_layers=1",
    "model.heads=2", "model.time_dim=32",
    "pretrain.steps=4", "pretrain.batch_size=16", "pretrain.ckpt_every=2", "pretrain.sample_every=0",
    "pretrain.progress=false",
    "train.init=checkpoints/base", "evaluate.base=checkpoints/base",  # a fresh tiny base, not the committed one
    "train.steps=4", "train.batch_size=16", "train.ckpt_every=2", "train.sample_every=0", "train.progress=false",
    "evaluate.images_per_prompt=2",  # the default guided 50-step reference: 16 images of a tiny net
    "evaluate.geneval_max_prompts=6", "evaluate.dpg_max_items=2",
    "evaluate.grid_prompts=4", "evaluate.batch=16",
    "gate.min.geneval-shapes/overall@1nfe=0.0", "gate.min.dpg-shapes/score@1nfe=0.0",
    "gate.ratio.geneval-shapes/overall@1nfe.min=0", "gate.ratio.dpg-shapes/score@1nfe.min=0",
]


def copy_project(dest: Path) -> Path:
    """What a fresh clone has: tracked and not-ignored files (no outputs, no dvc.lock, no caches)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.split("\n")
    for rel in filter(None, files):
        src = REPO / rel
        if rel == "dvc.lock" or not src.is_file():
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / rel)
    for rel in (".dvc/config", ".dvc/.gitignore", ".dvcignore"):
        if (REPO / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest / rel)
    for args in (["git", "init", "-q"], ["git", "config", "user.email", "t@example.com"],
                 ["git", "config", "user.name", "t"], ["git", "add", "-A"], ["git", "commit", "-q", "-m", "copy"]):
        subprocess.run(args, cwd=dest, check=True, capture_output=True)
    return dest


@pytest.mark.slow
def test_twinflow_run_end_to_end_on_loopback_servers(tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient

    project = copy_project(tmp_path / "proj")
    # the tiny config written into the copy: a run without overrides works in the checkout itself (one
    # with overrides would get a workspace of its own and leave no outputs here for `dvc status` to check)
    from flows.overrides import apply_overrides, load_params, parse_overrides

    apply_overrides(project / "params.yaml", parse_overrides(TINY, load_params(project / "params.yaml")))
    mlflow_uri, mlflow_proc = start_mlflow_server(tmp_path / "mlflow")
    home = tmp_path / "prefect"
    api, prefect_proc = start_prefect_server(home)
    env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_HOME": str(home), "MLFLOW_TRACKING_URI": mlflow_uri}
    twinflow = [sys.executable, "-m", "flows.cli", "run", "--workdir", str(project)]
    try:
        first = subprocess.run(twinflow, cwd=project, env=env, capture_output=True, text=True, timeout=1500)
        out = first.stdout + first.stderr
        assert first.returncode == 0, out[-6000:]
        assert "gate: PASSED" in out and "twinflow-shapes v1" in out
        assert "champion" in out and "samples: " in out and "MLflow UI: " + mlflow_uri in out
        assert "run: worked in this checkout; saved as refs/exps/" in out
        assert f"Prefect UI: {api.removesuffix('/api')}/runs/flow-run/" in out

        client = MlflowClient(mlflow_uri, mlflow_uri)
        mv = client.get_model_version_by_alias("twinflow-shapes", "champion")
        assert mv.tags["gate.verdict"] == "passed" and mv.tags["lineage.checkpoint_md5"]
        flow_run_id = mv.tags["lineage.prefect_flow_run_id"]
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: api}):
            with get_client(sync_client=True) as pc:
                assert pc.read_flow_run(flow_run_id).state.is_completed()
        mlflow.set_tracking_uri(mlflow_uri)
        mlflow.set_registry_uri(mlflow_uri)  # an earlier test in this process may have set another registry
        images = mlflow.pyfunc.load_model("models:/twinflow-shapes@champion").predict(
            ["a red circle", "two blue squares"])
        assert images.dtype.name == "uint8" and images.shape[0] == 2 and images.shape[-1] == 3

        # the stages this run used (encode, for latent models only, never ran here)
        status = subprocess.run([sys.executable, "-m", "dvc", "status", "prepare", "validate", "pretrain", "train",
                                 "evaluate"], cwd=project, env=env,
                                capture_output=True, text=True)
        assert "Data and pipelines are up to date" in status.stdout, status.stdout

        second = subprocess.run(twinflow, cwd=project, env=env, capture_output=True, text=True, timeout=900)
        out2 = second.stdout + second.stderr
        assert second.returncode == 0, out2[-4000:]
        assert "stages: prepare cached, validate cached, pretrain cached, train cached, evaluate cached" in out2
        assert "already registered; no new version" in out2
        assert len(client.search_model_versions("name='twinflow-shapes'")) == 1
    finally:
        stop(prefect_proc)
        stop(mlflow_proc)
