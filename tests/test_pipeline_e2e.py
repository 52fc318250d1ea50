"""End to end: `twinflow run` on a copy of the project with a tiny config (the real stages: prepare,
validate, pretrain, train, evaluate), against a real MLflow tracking server and a real Prefect server,
both started on 127.0.0.1 by the test, and the outputs pushed to an S3 DVC remote (moto, also on 127.0.0.1). Then:
the run is in Prefect, the version is in MLflow and loads with pyfunc and generates at 1 NFE, `dvc status` is
clean, and a second run reuses every stage.

Planted credentials (security): the run is given an AWS key pair (the S3 remote), a tracking URI with
`user:password@` and an MLFLOW_TRACKING_TOKEN, all in the environment, where the README says they go; before it,
three attempts put a distinct password each where a run would record it (an override of register.tracking_uri,
--tracking-uri, params.yaml) and are refused in one line (exit 10). Afterwards no output holds any of them: the
runs' stdout/stderr, every file under the test's folder (the project with params.yaml, dvc.lock, metrics/, reports/,
checkpoints/, outputs/, .dvc/ and the objects of its git repository with the runs' refs; the MLflow server's store
and artifacts; the Prefect server's database of flow runs, their parameters and logs), the objects pushed to S3, and
the MLflow runs' params and tags and the version's tags, as the API returns them. No config key takes a `?token=`
URI a tracking server or S3 would accept, so that form is covered by the redaction tests (tests/test_security.py)
only."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from support.pipeline import (
    BIN,
    TINY,
    copy_project,
    free_port,
    start_mlflow_server,
    start_prefect_server,
    stop,
    wait_http,
)
from support.planted_secrets import PASSWORD, PLANTED, RECORDED, leaks_in_files, leaks_in_text


@pytest.mark.slow
def test_twinflow_run_end_to_end_on_loopback_servers(tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient

    project = copy_project(tmp_path / "proj")
    # the tiny config written into the copy: a run without overrides works in the checkout itself (one
    # with overrides would get a workspace of its own and leave no outputs here for `dvc status` to check)
    from flows.params import apply_overrides, load_params, parse_overrides

    apply_overrides(project / "params.yaml", parse_overrides(TINY, load_params(project / "params.yaml")))
    plain_uri, mlflow_proc = start_mlflow_server(tmp_path / "mlflow")
    # the server takes any credentials; the client sends them (basic auth from the URI, the bearer token)
    mlflow_uri = plain_uri.replace("http://", f"http://pipeline:{PASSWORD}@")
    home = tmp_path / "prefect"
    api, prefect_proc = start_prefect_server(home)
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    moto_proc = subprocess.Popen(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    env = {
        **os.environ,
        **PLANTED,
        "AWS_DEFAULT_REGION": "us-east-1",
        "PREFECT_API_URL": api,
        "PREFECT_HOME": str(home),
        "MLFLOW_TRACKING_URI": mlflow_uri,
    }
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        env.pop(key, None)
    twinflow = [sys.executable, "-m", "flows.cli", "run", "--workdir", str(project)]
    try:
        import boto3

        wait_http(endpoint + "/moto-api/", 60, moto_proc)
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id=PLANTED["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=PLANTED["AWS_SECRET_ACCESS_KEY"],
        )
        s3.create_bucket(Bucket="twinflow-dvc")
        dvc = [sys.executable, "-m", "dvc"]
        subprocess.run(dvc + ["remote", "add", "-d", "team", "s3://twinflow-dvc/store"], cwd=project, check=True)
        subprocess.run(dvc + ["remote", "modify", "team", "endpointurl", endpoint], cwd=project, check=True)
        subprocess.run(["git", "commit", "-qam", "S3 remote"], cwd=project, check=True)

        # the channels a run records as given (an override, --tracking-uri, params.yaml), each with its own
        # password: refused in one line before anything starts (no Prefect flow run, no ref, nothing written)
        params_text = (project / "params.yaml").read_text()
        server = plain_uri.removeprefix("http://")
        refused = {}
        for channel, extra in (
            ("override", [f"register.tracking_uri=http://pipeline:{RECORDED['override']}@{server}"]),
            ("flag", ["--tracking-uri", f"http://pipeline:{RECORDED['flag']}@{server}"]),
            ("params", []),
        ):
            if channel == "params":
                (project / "params.yaml").write_text(
                    params_text.replace(
                        'tracking_uri: ""', f'tracking_uri: "http://pipeline:{RECORDED["params"]}@{server}"'
                    )
                )
                assert RECORDED["params"] in (project / "params.yaml").read_text()
            attempt = subprocess.run(
                twinflow + extra, cwd=project, env=env, capture_output=True, text=True, timeout=300
            )
            (project / "params.yaml").write_text(params_text)  # the user takes the secret out again
            lines = attempt.stderr.strip().splitlines()
            assert attempt.returncode == 10 and len(lines) == 1, attempt.stderr[-3000:]
            assert "holds a password in a URI" in lines[0] and "MLFLOW_TRACKING_PASSWORD" in lines[0], lines[0]
            refused[f"refused {channel}"] = attempt.stdout + attempt.stderr

        first = subprocess.run(twinflow, cwd=project, env=env, capture_output=True, text=True, timeout=1500)
        out = first.stdout + first.stderr
        assert first.returncode == 0, out[-6000:]
        assert "gate: PASSED" in out and "twinflow-shapes v1" in out
        redacted = plain_uri.replace("http://", "http://pipeline:***@")
        assert "champion" in out and "samples: " in out and "MLflow UI: " + redacted in out
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
            ["a red circle", "two blue squares"]
        )
        assert images.dtype.name == "uint8" and images.shape[0] == 2 and images.shape[-1] == 3

        # the stages this run used (encode, for latent models only, never ran here)
        status = subprocess.run(
            [sys.executable, "-m", "dvc", "status", "prepare", "validate", "pretrain", "train", "evaluate"],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
        )
        assert "Data and pipelines are up to date" in status.stdout, status.stdout

        second = subprocess.run(twinflow, cwd=project, env=env, capture_output=True, text=True, timeout=900)
        out2 = second.stdout + second.stderr
        assert second.returncode == 0, out2[-4000:]
        assert "stages: prepare cached, validate cached, pretrain cached, train cached, evaluate cached" in out2
        assert "already registered; no new version" in out2
        assert len(client.search_model_versions("name='twinflow-shapes'")) == 1

        # the planted credentials: in no output
        pushed = [o["Key"] for o in s3.list_objects_v2(Bucket="twinflow-dvc").get("Contents", [])]
        assert len(pushed) >= 4
        objects = {
            f"s3://twinflow-dvc/{k}": s3.get_object(Bucket="twinflow-dvc", Key=k)["Body"].read().decode("latin-1")
            for k in pushed
        }
        recorded = {}
        for exp in client.search_experiments():
            for run in client.search_runs([exp.experiment_id]):
                recorded[f"run {run.info.run_name}"] = repr((run.data.params, run.data.tags))
        for mv in client.search_model_versions("name='twinflow-shapes'"):
            recorded[f"version {mv.version}"] = repr((mv.tags, mv.source, mv.run_link))
        leaks = leaks_in_text(
            first=out, second=out2, dvc_status=status.stdout + status.stderr, **objects, **recorded, **refused
        )
        leaks.update(leaks_in_files(tmp_path))
        assert leaks == {}, "\n".join(f"{where}: {hits}" for where, hits in leaks.items())
        # not a grep that cannot find anything: the same run's outputs do hold the values that are not secret
        assert "pipeline:***@" in out and endpoint in (project / ".dvc" / "config").read_text()
    finally:
        stop(prefect_proc)
        stop(mlflow_proc)
        stop(moto_proc)
