"""The pretrain and train stage entry points end to end (shrunk config), with MLflow logging to a real store."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from tests.support import mlflow_db
from tests.support.training import ROOT, make_dataset, smoke_params, stage_cmd, stage_env

pytestmark = pytest.mark.slow


def test_pretrain_then_train_with_mlflow(tmp_path):
    data = make_dataset(tmp_path / "data")
    params = smoke_params(tmp_path, data, ["pretrain.sample_every=2", "pretrain.log_every=1", "pretrain.progress=true"])
    uri = mlflow_db.sqlite_uri(tmp_path / "mlflow.db")
    import mlflow

    # an experiment the stage creates itself keeps its artifacts in ./mlruns of its cwd, the checkout
    mlflow.MlflowClient(uri).create_experiment("stage-test", artifact_location=(tmp_path / "mlruns").as_uri())
    env = {**stage_env(), "MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_NAME": "stage-test"}
    pre = subprocess.run(stage_cmd("pretrain", params), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert pre.returncode == 0, pre.stderr[-3000:]
    summary = json.loads(pre.stdout.strip().splitlines()[-1])
    # no terminal here (as in a Prefect task log): progress comes as lines instead of a bar
    assert "pretrain: step 4/4" in pre.stdout, pre.stdout[-2000:]
    base = tmp_path / "base"
    for name in ("model.json", "model.safetensors", "state.ckpt", "train_log.json", "summary.json"):
        assert (base / name).is_file(), name
    assert sorted(p.name for p in (base / "samples").iterdir()) == [
        "step-00000002-1nfe.png",
        "step-00000002-euler25.png",
        "step-00000004-1nfe.png",
        "step-00000004-euler25.png",
    ]

    client = mlflow.MlflowClient(uri)
    run = client.get_run(summary["mlflow_run_id"])
    assert run.data.params["pretrain/steps"] == "4" and run.data.params["objective/preset"] == "fm"
    for key in ("loss", "loss/mul", "lr", "grad_norm", "perf/samples_per_sec", "perf/sec_per_step"):
        assert key in run.data.metrics, key
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 4
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "samples")}
    assert "samples/step-00000004-1nfe.png" in artifacts
    assert {a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")} >= {"checkpoint/model.json"}

    env.pop("MLFLOW_TRACKING_URI")
    tr = subprocess.run(stage_cmd("train", params), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert tr.returncode == 0, tr.stderr[-3000:]
    meta = json.loads((tmp_path / "twinflow" / "model.json").read_text())
    assert meta["extra"]["stage"] == "train" and meta["extra"]["init"] == str(base)
    assert meta["extra"]["objective"]["probs"]["adv"] == 1.0 and meta["extra"]["steps"] == 4
    history = json.loads((tmp_path / "twinflow" / "train_log.json").read_text())
    assert {"loss/adv", "loss/rectify", "loss/e2e"} <= set(history[-1])
    assert not [k for k in history[-1] if k.startswith("perf/")]  # wall clock: MLflow and twinflow.run.json only
    run_record = json.loads((tmp_path / "twinflow.run.json").read_text())
    assert run_record["seconds"] > 0 and run_record["sec_per_step_median"] > 0

    # the same inputs again, from nothing: every file of the output (the DVC-tracked directory) bitwise the same,
    # so a rerun leaves dvc.lock unchanged
    import shutil

    out = tmp_path / "twinflow"
    first = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    shutil.rmtree(out)
    shutil.rmtree(tmp_path / "resume")
    again = subprocess.run(stage_cmd("train", params), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    second = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert sorted(second) == sorted(first) and [n for n in first if first[n] != second[n]] == []

    from twinflow_core.checkpoint import load_generator

    gen = load_generator(tmp_path / "twinflow")
    imgs = gen.generate(["a photo of a red circle", "a photo of two blue squares"], nfe=1, seed=0)
    assert imgs.shape == (2, 16, 16, 3) and imgs.dtype == np.uint8


def test_train_with_a_missing_base_is_a_one_line_error(tmp_path):
    data = make_dataset(tmp_path / "data")
    params = smoke_params(tmp_path, data)
    proc = subprocess.run(
        stage_cmd("train", params, f"train.init={tmp_path}/nowhere"),
        cwd=ROOT,
        env=stage_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 13
    assert proc.stderr.strip().splitlines() == [
        f"train: error: generator checkpoint {tmp_path}/nowhere: no model.json "
        "(expected model.safetensors + model.json)"
    ]
