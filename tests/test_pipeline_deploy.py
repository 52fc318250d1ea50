"""Deployments from prefect.yaml, served with `python -m flows.deployments serve` against a real
`prefect server start` on 127.0.0.1: the nightly cron carries its timezone, and an on-demand run
triggered through the API completes (fast stand-in stages, real DVC, real MLflow sqlite)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from support.pipeline import REPO, make_toy_project, start_prefect_server, stop, toy_env

from flows.deployments import load_specs


def test_prefect_yaml_defines_nightly_cron_with_timezone_and_on_demand():
    specs = {s["name"]: s for s in load_specs()}
    assert set(specs) == {"nightly", "on-demand"}
    (sched,) = specs["nightly"]["schedules"]
    assert sched["cron"] == "0 2 * * *" and sched["timezone"] == "UTC"
    assert not specs["on-demand"].get("schedules")


def test_deployments_carry_concurrency_limits_and_on_demand_runs_isolated():
    from flows.deployments import build_deployments

    built = {d.name: d for d in build_deployments(load_specs())}
    assert built["nightly"].concurrency_limit == 1  # works in the checkout: one at a time
    assert built["nightly"].concurrency_options.collision_strategy.value == "ENQUEUE"
    assert built["on-demand"].concurrency_limit == 2
    assert built["on-demand"].parameters["isolate"] is True and "isolate" not in built["nightly"].parameters


def test_deploy_to_a_pool_says_where_the_worker_finds_the_code(tmp_path):
    """The pull step a pool deployment carries: this checkout (set_working_directory), or a git clone per run;
    a folder without the project is refused in one line, and deploy needs a server to register to."""
    from flows.deployments import code_storage, main
    from twinflow_core.errors import ConfigError

    assert code_storage().to_pull_step() == {
        "prefect.deployments.steps.set_working_directory": {"directory": str(REPO.resolve())}
    }
    (clone,) = [code_storage(git_url="https://git.internal/ml/twinflow.git", git_branch="main").to_pull_step()]
    step = clone["prefect.deployments.steps.git_clone"]
    assert (step["repository"], step["branch"]) == ("https://git.internal/ml/twinflow.git", "main")
    with pytest.raises(ConfigError, match=r"deploy --code .*: no flows/pipeline.py there"):
        code_storage(str(tmp_path))
    env_api = os.environ.pop("PREFECT_API_URL", None)
    try:
        with pytest.raises(SystemExit, match="set PREFECT_API_URL"):
            main(["deploy", "--pool", "p"])
    finally:
        if env_api is not None:
            os.environ["PREFECT_API_URL"] = env_api


@pytest.mark.slow
def test_served_deployment_run_through_the_api_completes(tmp_path):
    from mlflow.tracking import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    project = make_toy_project(tmp_path / "proj")
    home = tmp_path / "prefect"
    api, server = start_prefect_server(home)
    env = {**os.environ, **toy_env(), "PREFECT_API_URL": api, "PREFECT_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = open(tmp_path / "serve.log", "wb")
    serving = subprocess.Popen(
        [sys.executable, "-m", "flows.deployments", "serve", "--workdir", str(project)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        with temporary_settings(updates={PREFECT_API_URL: api}):
            with get_client(sync_client=True) as client:
                deadline = time.monotonic() + 180
                while True:
                    try:
                        nightly = client.read_deployment_by_name("twinflow-pipeline/nightly")
                        client.read_deployment_by_name("twinflow-pipeline/on-demand")
                        break
                    except Exception:  # noqa: BLE001 - not registered yet
                        assert serving.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
                        assert time.monotonic() < deadline, "deployments did not appear"
                        time.sleep(1)
                (sched,) = nightly.schedules
                assert (sched.schedule.cron, sched.schedule.timezone) == ("0 2 * * *", "UTC")
            run = run_deployment("twinflow-pipeline/on-demand", parameters={"overrides": ["toy.seed=3"]}, timeout=900)
        assert run.state.is_completed(), (run.state.message, (tmp_path / "serve.log").read_text()[-3000:])
        uri = f"sqlite:///{project / 'mlflow.db'}"
        mv = MlflowClient(uri, uri).get_model_version_by_alias("tiny-gen", "champion")
        assert mv.tags["lineage.prefect_flow_run_id"] == str(run.id)
    finally:
        stop(serving)
        stop(server)
