"""End to end on a pretrained diffusers model: `twinflow run` after `configure experiment=sd3_tiny`, on a copy of
the project holding a tiny random SD3 pipeline written by the tiny writer (as a user would hold a downloaded
one): prepare -> validate -> encode (latents) -> train (TwinFlow, full) -> evaluate (1 NFE vs the untouched
pipeline at 50 Euler steps) -> register, with a real Prefect server on 127.0.0.1 and MLflow on a local SQLite
store. The registered version's pyfunc draws images at 1 NFE, and its checkpoint loads in plain diffusers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("diffusers")

from support.pipeline import start_prefect_server, stop  # noqa: E402
from test_pipeline_e2e import copy_project  # noqa: E402

PIPELINE = "artifacts/pretrained/sd3-tiny"


def sh(project, *args, env=None, timeout=300):
    out = subprocess.run(list(args), cwd=project, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    return out.stdout + out.stderr


@pytest.mark.slow
def test_twinflow_run_fine_tunes_a_tiny_pretrained_sd3_and_registers_it(tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient

    from flows.params import apply_overrides, load_params, parse_overrides

    project = copy_project(tmp_path / "proj")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)  # the checkout's sqlite store
    py = sys.executable
    sh(project, py, "-m", "twinflow_core.adapters.tiny", PIPELINE, "--words-from", "shapes", "--wrap", env=env)
    sh(project, py, "-m", "flows.stages.configure", "experiment=sd3_tiny", env=env)
    params = load_params(project / "params.yaml")
    assert params["train"]["init"] == PIPELINE and params["train"]["data"] == params["encode"]["out"]
    apply_overrides(project / "params.yaml", parse_overrides(["data.shapes.n_images=400"], params))
    sh(project, "git", "add", "-A")
    sh(project, "git", "commit", "-q", "-m", "sd3_tiny")

    home = tmp_path / "prefect"
    api, prefect_proc = start_prefect_server(home)
    env.update({"PREFECT_API_URL": api, "PREFECT_HOME": str(home)})
    try:
        out = sh(project, py, "-m", "flows.cli", "run", "--workdir", str(project), env=env, timeout=2400)
    finally:
        stop(prefect_proc)
    assert "stages: prepare ran" in out and "encode ran" in out and "train ran" in out and "evaluate ran" in out
    assert "pretrain ran" not in out.split("stages: ")[1].split("\n")[0]  # no flow-matching base to pretrain
    assert "gate: PASSED" in out and "twinflow-shapes v1" in out, out[-3000:]

    metrics = json.loads((project / "metrics/eval.json").read_text())
    assert "geneval-shapes/overall@1nfe" in metrics and "base/geneval-shapes/overall@euler50-cfg0.5" in metrics
    uri = f"sqlite:///{project / 'mlflow.db'}"
    mv = MlflowClient(uri, uri).get_model_version_by_alias("twinflow-shapes", "champion")
    assert mv.tags["gate.verdict"] == "passed"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    model = mlflow.pyfunc.load_model("models:/twinflow-shapes@champion")
    images = model.predict(["a photo of a red circle", "a photo of two blue squares"])
    assert images.dtype.name == "uint8" and images.shape == (2, 32, 32, 3)
    assert (images == model.predict(["a photo of a red circle", "a photo of two blue squares"])).all()
    # the command a user types first: the registered pipeline folder is fetched whole and draws at 1 NFE
    sh(
        project,
        py,
        "-m",
        "flows.cli",
        "generate",
        "a photo of a red circle",
        "--model",
        "models:/twinflow-shapes@champion",
        "--nfe",
        "1",
        "--out",
        str(tmp_path / "red.png"),
        env=env,
    )
    from PIL import Image

    assert Image.open(tmp_path / "red.png").size[0] >= 32
    assert "Token indices sequence length" not in out  # the tiny tokenizers hold every caption whole
    # no third-party noise in the stage logs: deprecations of calls we make, torchvision notes, loading bars
    for noise in ("torch_dtype", "requires torchvision", "Loading pipeline components", "were not used when"):
        assert noise not in out, noise

    import diffusers

    import twinflow_core.adapters.stock  # noqa: F401  (the export names its scheduler and transformer classes)

    plain = diffusers.StableDiffusion3Pipeline.from_pretrained(str(project / "checkpoints/twinflow"))
    assert plain.transformer.config.num_layers == 2
