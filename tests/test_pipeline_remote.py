"""The pipeline against S3 (moto in server mode on 127.0.0.1): the same code that pushes to the local folder
remote pushes to S3 when the DVC remote is configured so; a run trained from an s3:// init is reproduced in a
fresh clone with a clean `dvc status` (the fetched init travels with the run, under DVC)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from support.pipeline import (
    BIN,
    free_port,
    make_checkpoint,
    make_toy_project,
    start_prefect_server,
    stop,
    toy_env,
    wait_http,
)
from support.s3 import moto_endpoint, s3_env, upload  # noqa: F401 (fixtures)

from flows import dvc_ops


def test_push_to_s3_remote_by_configuration(tmp_path, monkeypatch):
    for key, value in toy_env().items():
        monkeypatch.setenv(key, value)
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    port = free_port()
    moto = subprocess.Popen(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_http(endpoint + "/moto-api/", 60, moto)
        import boto3

        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="twinflow-dvc")
        project = make_toy_project(tmp_path / "proj")
        dvc = [sys.executable, "-m", "dvc"]
        subprocess.run(dvc + ["remote", "add", "team", "s3://twinflow-dvc/store"], cwd=project, check=True)
        subprocess.run(dvc + ["remote", "modify", "team", "endpointurl", endpoint], cwd=project, check=True)
        lines: list[str] = []
        dvc_ops.repro_stage("prepare", project, lines.append)
        dvc_ops.push(project, lines.append, remote="team")
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="twinflow-dvc").get("Contents", [])]
        assert keys and all(k.startswith("store/files/md5/") for k in keys)
        assert any("pushed" in line for line in lines)
        # a missing bucket is not retried: it is a configuration error
        subprocess.run(dvc + ["remote", "modify", "team", "url", "s3://no-such-bucket/x"], cwd=project, check=True)
        subprocess.run(dvc + ["repro", "pretrain"], cwd=project, check=True, capture_output=True, env={**os.environ})
        import pytest

        from flows.faults import StageFailed, TransientFault

        with pytest.raises(StageFailed) as err:
            dvc_ops.push(project, lines.append, remote="team")
        assert not isinstance(err.value, TransientFault)
        assert "dvc push -r team failed" in str(err.value)
    finally:
        stop(moto)


@pytest.mark.slow
def test_a_version_trained_from_an_s3_init_is_reproduced_clean_in_a_fresh_clone(tmp_path, s3_env):
    """train.init=s3://... (a real tiny generator on moto): the run fetches it into checkpoints/train-init, which
    DVC tracks (train-init.dvc in the run's ref, the weights pushed with the run); `twinflow models reproduce`
    in a fresh folder pulls it back: `dvc status` clean, `dvc repro` runs nothing, the same weights."""
    from mlflow.tracking import MlflowClient

    upload(s3_env, make_checkpoint(tmp_path / "base", seed=9), "inits", "runs/base")
    project = make_toy_project(tmp_path / "proj")
    # the toy train stage depends on its init as the real one does (dvc.yaml: ${train.init}/model.*)
    dvc_yaml = yaml.safe_load((project / "dvc.yaml").read_text())
    train = dvc_yaml["stages"]["train"]
    train["deps"] = ["${train.init}/model.json", "${train.init}/model.safetensors"]
    train["params"] = ["toy.seed", "train.init"]
    (project / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml, sort_keys=False))
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"] = {"init": "checkpoints/base", "out": "checkpoints/twinflow"}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "commit", "-qam", "train from its init"], cwd=project, check=True)
    home = tmp_path / "prefect"
    api, server = start_prefect_server(home)
    env = {
        **os.environ,
        **toy_env(),
        "PREFECT_API_URL": api,
        "PREFECT_HOME": str(home),
        "AWS_ENDPOINT_URL": s3_env,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    try:
        run = subprocess.run(
            [sys.executable, "-m", "flows.cli", "run", "--workdir", str(project), "train.init=s3://inits/runs/base"],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
        dest = tmp_path / "elsewhere" / "v1"
        rep = subprocess.run(
            [sys.executable, "-m", "flows.cli", "models", "reproduce", "tiny-gen", "1", str(dest)],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        stop(server)
    assert rep.returncode == 0 and "dvc status: clean" in rep.stdout, (rep.stdout + rep.stderr)[-4000:]
    assert yaml.safe_load((dest / "params.yaml").read_text())["train"]["init"] == "checkpoints/train-init"
    source = json.loads((dest / "checkpoints/train-init/source.json").read_text())
    assert source["uri"] == "s3://inits/runs/base"
    assert (dest / "checkpoints/train-init/model.safetensors").read_bytes() == (
        tmp_path / "base" / "model.safetensors"
    ).read_bytes()
    status = subprocess.run([sys.executable, "-m", "dvc", "status"], cwd=dest, env=env, capture_output=True, text=True)
    assert status.returncode == 0 and "up to date" in status.stdout, status.stdout + status.stderr
    repro = subprocess.run(
        [sys.executable, "-m", "dvc", "repro"], cwd=dest, env=env, capture_output=True, text=True, timeout=300
    )
    assert repro.returncode == 0 and "Running stage" not in repro.stdout, repro.stdout + repro.stderr
    assert not (dest / "attempts.log").exists()
    uri = f"sqlite:///{project / 'mlflow.db'}"
    assert (
        MlflowClient(uri, uri).get_model_version("tiny-gen", "1").tags["lineage.git_ref_commit"]
        == subprocess.run(["git", "rev-parse", "HEAD"], cwd=dest, capture_output=True, text=True).stdout.strip()
    )
