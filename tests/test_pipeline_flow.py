"""The Prefect flow around DVC, on a throwaway project with fast stand-in stages (tests/support/toy_stages.py)
and real Prefect (test harness server), real DVC and real MLflow (sqlite): caching, overrides, lineage,
push, the failed-gate outcome, and which faults are retried."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from support.pipeline import make_toy_project, toy_env

from flows.cli import main


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture
def project(tmp_path, monkeypatch):
    for key, value in toy_env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # every stage attempt is logged in the project, also those of runs in a workspace of their own
    monkeypatch.setenv("TOY_ATTEMPTS", str(tmp_path / "proj" / "attempts.log"))
    return make_toy_project(tmp_path / "proj")


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout.strip()


def attempts(root: Path) -> list[str]:
    path = root / "attempts.log"
    return path.read_text().split() if path.exists() else []


def task_runs(flow_run_id) -> dict[str, int]:
    """task name -> run_count (1 = no retry) for one flow run, from the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {r.name: r.run_count for r in runs}


def test_unknown_override_fails_before_anything_runs(project, capsys):
    before = (project / "params.yaml").read_text()
    assert main(["run", "--workdir", str(project), "toy.sizee=3"]) == 10
    err = capsys.readouterr().err
    assert "unknown key 'toy.sizee'" in err and "did you mean 'toy.size'" in err
    assert main(["run", "--workdir", str(project), "toy.size=many"]) == 10
    assert "toy.size is int" in capsys.readouterr().err
    assert (project / "params.yaml").read_text() == before
    assert not (project / "dvc.lock").exists() and attempts(project) == []


def test_flow_runs_caches_pushes_and_registers_once(project, harness):
    from mlflow.tracking import MlflowClient

    from flows.pipeline import pipeline

    params_before = (project / "params.yaml").read_bytes()
    state = pipeline(workdir=str(project), return_state=True)
    assert state.is_completed(), state.message
    summary = state.result()
    assert summary["isolated"] is False and summary["root"] == str(project)
    assert [s["stage"] for s in summary["stages"]] == ["prepare", "validate", "pretrain", "train", "evaluate"]
    assert all(s["ran"] for s in summary["stages"])
    reg = summary["registration"]
    assert (reg["version"], reg["verdict"], reg["champion"]) == ("1", "passed", "1")
    assert summary["samples"] == [str(project / "reports" / "samples_1nfe.png")]
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    ckpt_md5 = next(o["md5"] for o in lock["stages"]["train"]["outs"])
    uri = f"sqlite:///{project / 'mlflow.db'}"
    mv = MlflowClient(uri, uri).get_model_version("tiny-gen", "1")
    assert mv.tags["lineage.checkpoint_md5"] == ckpt_md5
    assert mv.tags["lineage.data_md5"] == next(o["md5"] for o in lock["stages"]["prepare"]["outs"])
    assert mv.tags["lineage.prefect_flow_run_id"] == summary["flow_run_id"]
    assert len(mv.tags["lineage.git_commit"]) == 40
    # the version names the run's DVC experiment ref, which holds this dvc.lock and params.yaml
    ref = mv.tags["lineage.git_ref"]
    assert ref.startswith("refs/exps/") and ref == summary["git_ref"]["ref"]
    assert git(project, "rev-parse", ref) == mv.tags["lineage.git_ref_commit"]
    assert git(project, "show", f"{ref}:dvc.lock") == (project / "dvc.lock").read_text().strip()
    # pushed: the checkpoint's files are in the local remote
    pushed = [p for p in (project / ".dvc-remote").rglob("*") if p.is_file()]
    assert len(pushed) >= 4
    # progress redraws (carriage returns) are logged, not lost; each stage ran exactly once
    assert attempts(project) == ["prepare", "validate", "pretrain", "train", "evaluate"]

    # nothing changed: every stage cached, nothing re-run, no second version
    again = pipeline(workdir=str(project))
    assert not any(s["ran"] for s in again["stages"])
    assert again["registration"]["created"] is False and again["registration"]["version"] == "1"
    assert attempts(project) == ["prepare", "validate", "pretrain", "train", "evaluate"]

    # an override reruns only what depends on it, in a workspace of its own (the checkout's params.yaml
    # is never written); a failing gate completes with the verdict
    lock_before = (project / "dvc.lock").read_bytes()
    state = pipeline(workdir=str(project), overrides=["toy.geneval=0.3"], return_state=True)
    assert state.is_completed()
    assert state.message.startswith("gate failed: geneval-shapes/overall@1nfe 0.3 < 0.5")
    assert "v2 stays challenger, champion v1" in state.message
    summary = state.result()
    assert [s["stage"] for s in summary["stages"] if s["ran"]] == ["evaluate"]
    assert summary["isolated"] is True and not Path(summary["root"]).exists()  # removed after success
    assert (project / "params.yaml").read_bytes() == params_before
    assert (project / "dvc.lock").read_bytes() == lock_before
    run_params = git(project, "show", f"{summary['git_ref']['ref']}:params.yaml")
    assert yaml.safe_load(run_params)["toy"]["geneval"] == 0.3
    assert run_params.startswith("# toy project params")  # comments kept
    assert summary["samples"] == [f"{summary['git_ref']['commit'][:10]}:reports/samples_1nfe.png"]
    client = MlflowClient(uri, uri)
    assert sorted(client.get_model_version("tiny-gen", "2").aliases) == ["challenger"]
    assert str(client.get_model_version_by_alias("tiny-gen", "champion").version) == "1"


def test_a_run_parses_each_params_file_once(project, harness, monkeypatch):
    """The up-front check (as `twinflow run` makes it), the flow, its workspace and the registration share one
    parse per params.yaml: the checkout's once, the run's workspace copy once (the overrides the flow writes
    into it are remembered, not parsed again)."""
    import flows.params as params_module
    from flows.config_check import check_overrides
    from flows.pipeline import pipeline

    parses = []
    real = params_module.load_params
    monkeypatch.setattr(params_module, "load_params", lambda path: parses.append(Path(path).resolve()) or real(path))
    params_module._PARSED.clear()
    check_overrides(["toy.size=3"], str(project))
    state = pipeline(overrides=["toy.size=3"], workdir=str(project), push=False, return_state=True)
    assert state.is_completed(), state.message
    summary = state.result()
    assert summary["isolated"] and summary["registration"]["version"]
    checkout = (project / "params.yaml").resolve()
    assert parses.count(checkout) == 1, parses
    assert len(parses) == 2 and parses[1] != checkout, parses  # and the workspace's copy, once


def test_deterministic_failure_is_not_retried_and_tops_the_error(project, harness):
    from flows.pipeline import pipeline

    params_before = (project / "params.yaml").read_bytes()
    state = pipeline(workdir=str(project), overrides=["toy.fail=validate"], return_state=True)
    assert state.is_failed()
    # the checkout is as it was; the failed run's workspace is kept to look at, with its override
    assert (project / "params.yaml").read_bytes() == params_before and not (project / "dvc.lock").exists()
    (kept,) = (project / ".dvc/tmp/twinflow-runs").iterdir()
    assert yaml.safe_load((kept / "params.yaml").read_text())["toy"]["fail"] == "validate"
    err = state.result(raise_on_failure=False)
    assert str(err).startswith(
        "stage 'validate' failed (exit 11): twinflow_core.errors.DataError: "
        "data/prepared/toy/images.npy: row 3 is blank (validate)"
    )
    assert attempts(project) == ["prepare", "validate"]  # no retry, nothing after it ran
    assert task_runs(state.state_details.flow_run_id)["validate"] == 1


def test_transient_failure_is_retried(project, harness):
    from flows.pipeline import pipeline

    state = pipeline(
        workdir=str(project),
        overrides=["toy.flaky_stage=validate", "toy.flaky=1"],
        push=False,
        register_model=False,
        return_state=True,
    )
    assert state.is_completed(), state.message
    assert attempts(project) == ["prepare", "validate", "validate", "pretrain", "train", "evaluate"]
    assert task_runs(state.state_details.flow_run_id)["validate"] == 2


@pytest.mark.slow
def test_tracking_server_down_fails_at_registration_then_registers_once(project, harness):
    """Down: the flow fails at `register` (after its retries) naming the server; the artifacts stay and
    are pushed; nothing is registered. Back up: a re-run registers exactly once, stages all cached."""
    from mlflow.tracking import MlflowClient
    from support.pipeline import free_port, start_mlflow_server, stop

    from flows.pipeline import pipeline

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    state = pipeline(workdir=str(project), tracking_uri=uri, return_state=True)
    assert state.is_failed()
    err = str(state.result(raise_on_failure=False))
    assert err.startswith(f"MLflow tracking server {uri} is unreachable")
    runs = task_runs(state.state_details.flow_run_id)
    assert "(connection refused); nothing was registered" in err
    assert runs["register"] == 3  # retries: 2 in the toy params; transient, so retried
    assert (project / "checkpoints/twinflow/model.safetensors").is_file()
    assert json.loads((project / "metrics/eval.json").read_text())["geneval-shapes/overall@1nfe"] == 0.8
    assert any((project / ".dvc-remote").rglob("*"))

    server_uri, proc = start_mlflow_server(project.parent / "mlflow-server", port=port)
    try:
        first = pipeline(workdir=str(project), tracking_uri=uri)
        second = pipeline(workdir=str(project), tracking_uri=uri)
        assert not any(s["ran"] for s in first["stages"])
        assert (first["registration"]["version"], first["registration"]["created"]) == ("1", True)
        assert (second["registration"]["version"], second["registration"]["created"]) == ("1", False)
        assert len(MlflowClient(uri, uri).search_model_versions("name='tiny-gen'")) == 1
    finally:
        stop(proc)


@pytest.mark.slow
def test_s3_down_at_push_is_retried_then_one_line_then_a_rerun_pushes(project, harness, capsys, monkeypatch):
    """The DVC remote is S3 (moto on 127.0.0.1). Stopped at push: `dvc push` is retried with backoff (toy params:
    2 retries), then the flow fails with one line naming the push (exit 17). Started again on the same port: a
    rerun (every stage cached) pushes."""
    import sys

    import boto3
    from support.pipeline import BIN, free_port, stop, wait_http

    from flows.cli import error_line
    from flows.faults import TransientFault
    from flows.pipeline import pipeline

    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"

    def start_moto():
        proc = subprocess.Popen(
            [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_http(endpoint + "/moto-api/", 60, proc)
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="twinflow-dvc")
        return proc

    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run(dvc + ["remote", "add", "team", "s3://twinflow-dvc/store"], cwd=project, check=True)
    subprocess.run(dvc + ["remote", "modify", "team", "endpointurl", endpoint], cwd=project, check=True)
    params = (project / "params.yaml").read_text().replace("dvc_remote: ''", "dvc_remote: team")
    (project / "params.yaml").write_text(params)
    git(project, "commit", "-qam", "push to S3")
    moto = start_moto()
    stop(moto)  # S3 goes away before the run
    moto = None
    try:
        state = pipeline(workdir=str(project), register_model=False, return_state=True)
        assert state.is_failed()
        err = state.result(raise_on_failure=False)
        line, code = error_line("run", err)
        assert code == 17 and isinstance(err, TransientFault), line
        assert "\n" not in str(err) and "dvc push -r team failed" in line, line
        assert "gave up after 3 attempts, waiting 0.1, 0.2 s" in line and "will be retried" not in line, line
        assert task_runs(state.state_details.flow_run_id)["dvc-push"] == 3
        assert (project / "checkpoints/twinflow/model.safetensors").is_file()  # outputs kept
        moto = start_moto()
        summary = pipeline(workdir=str(project), register_model=False)
        assert "push" in summary and not any(s["ran"] for s in summary["stages"])
        keys = [
            o["Key"]
            for o in boto3.client("s3", endpoint_url=endpoint)
            .list_objects_v2(Bucket="twinflow-dvc")
            .get("Contents", [])
        ]
        assert len(keys) >= 4 and all(k.startswith("store/files/md5/") for k in keys)
        assert attempts(project) == ["prepare", "validate", "pretrain", "train", "evaluate"]  # stages ran once
    finally:
        if moto is not None:
            stop(moto)
