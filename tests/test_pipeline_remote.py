"""The pipeline's push step against an S3 remote (moto in server mode on 127.0.0.1): the same code that
pushes to the local folder remote pushes to S3 when the DVC remote is configured so."""
from __future__ import annotations

import os
import subprocess
import sys

from flows import dvc_ops
from support.pipeline import BIN, free_port, make_toy_project, stop, toy_env, wait_http


def test_push_to_s3_remote_by_configuration(tmp_path, monkeypatch):
    for key, value in toy_env().items():
        monkeypatch.setenv(key, value)
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    port = free_port()
    moto = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
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
        subprocess.run(dvc + ["repro", "pretrain"], cwd=project, check=True, capture_output=True,
                       env={**os.environ})
        from flows.faults import StageFailed, TransientFault
        import pytest

        with pytest.raises(StageFailed) as err:
            dvc_ops.push(project, lines.append, remote="team")
        assert not isinstance(err.value, TransientFault)
        assert "dvc push -r team failed" in str(err.value)
    finally:
        stop(moto)
