"""The team services of infra/ started for real on loopback: PostgreSQL 15 (started here), the MLflow server by
infra/mlflow/entrypoint.sh (basic-auth, tracking + registry + auth database on PostgreSQL, artifacts proxied to a
moto S3 server), the Prefect server on PostgreSQL behind its auth string. Checked: no password on any server's
command line; names reserved by `setup`; the pipeline's account registers a real generator version (artifacts land
in S3) and holds `challenger`; only the release manager promotes into the production model; a wrong password and a
reader's write are refused with one clear line; a client calling the server by its service name passes the host
check, an unknown host does not; a deployment on a process work pool is run to Completed by a `prefect worker start
--pool` process and a second clone pulls the run's outputs."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from flows.servers import free_port, start_prefect_server, stop, wait_http
from tests.support import postgres
from tests.support.s3 import moto_endpoint  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
ADMIN_PW, SECRET_KEY = "admin-pw-never-printed", "csrf-key-" + "k" * 24
USERS = {"pipeline": "pipeline-pw-0001", "release": "release-pw-0001", "reader": "reader-pw-00001"}  # >= 12
AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "s3-secret", "AWS_DEFAULT_REGION": "us-east-1"}
PREFECT_AUTH = "twinflow:prefect-" + os.urandom(6).hex()  # the Prefect API's auth string (infra/docker-compose.yml)


@pytest.fixture(scope="module")
def servers(moto_endpoint, tmp_path_factory):
    why = postgres.available()
    if why:
        pytest.skip(why)
    import boto3

    tmp = tmp_path_factory.mktemp("team")
    boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        **{k.lower(): v for k, v in AWS.items() if k != "AWS_DEFAULT_REGION"},
        region_name="us-east-1",
    ).create_bucket(Bucket="team")
    with postgres.postgres_server(("mlflow", "mlflow_auth", "prefect")) as (pg, pg_folder):
        port = free_port()
        env = {
            **os.environ,
            **AWS,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "MLFLOW_BACKEND_STORE_URI": pg.format(db="mlflow"),
            "MLFLOW_AUTH_DATABASE_URI": pg.format(db="mlflow_auth"),
            "MLFLOW_ARTIFACTS_DESTINATION": "s3://team/mlflow",
            "MLFLOW_S3_ENDPOINT_URL": moto_endpoint,
            "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PW,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": SECRET_KEY,
            "MLFLOW_ALLOWED_HOSTS": f"127.0.0.1:{port},mlflow:{port}",
            "MLFLOW_HOST": "127.0.0.1",
            "MLFLOW_PORT": str(port),
            "MLFLOW_WORKERS": "1",
            "MLFLOW_AUTH_CACHE_TTL_SECONDS": "30",
            "MLFLOW_AUTH_CONFIG_PATH": str(tmp / "basic_auth.ini"),
        }
        log = open(tmp / "mlflow.log", "wb")
        mlflow_proc = subprocess.Popen(
            [str(ROOT / "infra" / "mlflow" / "entrypoint.sh")],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        prefect_proc = None
        try:
            # Prefect migrates its database while MLflow migrates its own
            api, prefect_proc = start_prefect_server(
                tmp / "prefect",
                database_url=pg.format(db="prefect").replace("postgresql://", "postgresql+asyncpg://"),
                auth_string=PREFECT_AUTH,
            )
            url = f"http://127.0.0.1:{port}"
            try:
                wait_http(url + "/health", 300, mlflow_proc)
            except Exception:
                raise AssertionError((tmp / "mlflow.log").read_text()[-3000:]) from None
            _create_accounts(url)  # here, not in a test: each test of this module may run alone
            yield {
                "mlflow": url,
                "port": port,
                "prefect": api,
                "s3": moto_endpoint,
                "tmp": tmp,
                "sessions": {mlflow_proc.pid, prefect_proc.pid},
                "pg_folder": str(pg_folder),
                "pg_password": pg.split(":")[2].split("@")[0],
            }
        finally:
            stop(mlflow_proc)
            if prefect_proc is not None:
                stop(prefect_proc)


def _create_accounts(url: str) -> None:
    """The pipeline's, the release manager's and a reader's accounts, made by the admin."""
    from mlflow.server.auth.client import AuthServiceClient

    names = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    saved = {key: os.environ.get(key) for key in names}
    os.environ.update(dict(zip(names, ("admin", ADMIN_PW))))
    try:
        admin = AuthServiceClient(url)
        for user, password in USERS.items():
            admin.create_user(user, password)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _as(monkeypatch, user: str, password: str):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)


def _get(url: str, host: str, user: str, password: str) -> int:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    req = urllib.request.Request(url, headers={"Host": host, "Authorization": f"Basic {token}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as err:
        return err.code


def test_team_mlflow_and_prefect_on_postgres(servers, tmp_path, monkeypatch):
    import boto3
    from mlflow.tracking import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    from flows import register_step, release
    from tests.support.pipeline import make_outputs, scores
    from twinflow_core.errors import TwinflowError, exit_code

    url = servers["mlflow"]
    for key, value in AWS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", servers["s3"])

    # the service name passes the host check; an unknown host is refused although /health answers
    search = f"{url}/api/2.0/mlflow/experiments/search?max_results=1"
    assert _get(search, f"mlflow:{servers['port']}", "admin", ADMIN_PW) == 200
    assert _get(search, f"elsewhere:{servers['port']}", "admin", ADMIN_PW) == 403

    # no password on any command line of the servers (`ps` shows them to every local account): MLflow and its
    # workers, Prefect's, PostgreSQL's
    from support.argv import secrets_in_argv

    assert (
        secrets_in_argv(
            [servers["pg_password"], ADMIN_PW, SECRET_KEY, PREFECT_AUTH],
            sessions=servers["sessions"],
            marks=(servers["pg_folder"],),
        )
        == []
    )

    # the admin reserves the names (models, locks, experiment) for the accounts that write them
    _as(monkeypatch, "admin", ADMIN_PW)
    release.setup(url, "tiny-gen", pipeline="pipeline", release="release", experiment="tests", log=lambda _: None)

    # the pipeline's account registers a real version; its artifacts are proxied into S3; it holds challenger
    _as(monkeypatch, "pipeline", USERS["pipeline"])
    root = make_outputs(tmp_path / "proj", scores(0.8, 80.0), seed=2)
    result = register_step.register_outputs(root, tracking_uri=url)
    client = MlflowClient(url, url)
    version = client.get_model_version_by_alias("tiny-gen", "challenger").version
    assert str(result["version"]) == str(version)
    keys = [
        o["Key"]
        for o in boto3.client("s3", endpoint_url=servers["s3"])
        .list_objects_v2(Bucket="team", Prefix="mlflow/")
        .get("Contents", [])
    ]
    assert any(k.endswith("model.safetensors") for k in keys), keys

    # ...but cannot promote into production
    with pytest.raises(TwinflowError) as err:
        release.promote_to_production(client, "tiny-gen", version, account="pipeline")
    assert "account 'pipeline' lacks the permission" in str(err.value) and "\n" not in str(err.value)
    assert exit_code(err.value) == 14  # the registry's family: a permission is the server's say

    # the release manager can
    _as(monkeypatch, "release", USERS["release"])
    rm = MlflowClient(url, url)
    message = release.promote_to_production(rm, "tiny-gen", version, account="release")
    champ = rm.get_model_version_by_alias("tiny-gen-production", "champion")
    assert message.startswith(f"tiny-gen-production v{champ.version}")
    assert champ.tags["source"] == f"models:/tiny-gen/{version}"

    # a reader cannot register; a wrong password is refused: each in one line naming the account
    _as(monkeypatch, "reader", USERS["reader"])
    with pytest.raises(TwinflowError) as err:
        release.promote_to_production(MlflowClient(url, url), "tiny-gen", version, account="reader")
    assert "account 'reader' lacks the permission" in str(err.value)
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException) as raw:
        MlflowClient(url, url).create_model_version("tiny-gen", champ.source, champ.run_id)
    assert "403" in str(raw.value)
    _as(monkeypatch, "pipeline", "wrong-password-1")
    with pytest.raises(TwinflowError) as err:
        release.promote_to_production(MlflowClient(url, url), "tiny-gen", version, account="pipeline")
    assert "wrong user name or password" in str(err.value) and "wrong-password-1" not in str(err.value)
    assert exit_code(err.value) == 14

    # the Prefect server on PostgreSQL records what a client writes
    with temporary_settings(updates={PREFECT_API_URL: servers["prefect"], PREFECT_API_AUTH_STRING: PREFECT_AUTH}):
        with get_client(sync_client=True) as prefect:
            pool = prefect.create_work_pool(work_pool=WorkPoolCreate(name="twinflow-team", type="process"))
            assert prefect.read_work_pool("twinflow-team").id == pool.id
            # and takes the kubernetes pool template of flows/launch_templates.py as a kubernetes pool's base
            from flows import launch_templates

            gpu = tmp_path / "gpu-params.yaml"  # a GPU trainer, as `configure trainer=multinode` writes it
            gpu.write_text(yaml.safe_dump({"train": {"trainer": {"num_nodes": 1, "devices": 4, "accelerator": "gpu"}}}))
            template = launch_templates.render("k8s-pool", gpu)
            prefect.create_work_pool(
                work_pool=WorkPoolCreate(name="twinflow-k8s", type="kubernetes", base_job_template=template)
            )
            assert prefect.read_work_pool("twinflow-k8s").base_job_template == template


def test_a_worker_runs_a_pool_deployment_on_the_team_servers_and_a_second_clone_pulls_its_outputs(
    servers, tmp_path, monkeypatch
):
    """The on-demand deployment registered to a process work pool on the PostgreSQL-backed Prefect server
    (`python -m flows.deployments deploy`, code from this checkout by a set_working_directory pull step), a flow
    run created through the API and picked up by a `prefect worker start --pool` process, which runs the
    pipeline (fast stand-in stages) to Completed; tracked and registered with the pipeline's account, its DVC
    outputs pushed to S3; a fresh clone pulls them."""
    import time

    from mlflow.tracking import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    from flows import deployments
    from tests.support.pipeline import make_toy_project, toy_env

    url, s3, pool = servers["mlflow"], servers["s3"], "twinflow-team-worker"
    project = make_toy_project(tmp_path / "proj")
    dvc = [sys.executable, "-m", "dvc"]
    for args in (["remote", "add", "-d", "team", "s3://team/dvc"], ["remote", "modify", "team", "endpointurl", s3]):
        subprocess.run(dvc + args, cwd=project, check=True, capture_output=True)
    subprocess.run(["git", "commit", "-qam", "S3 remote"], cwd=project, check=True)
    creds = {"MLFLOW_TRACKING_USERNAME": "pipeline", "MLFLOW_TRACKING_PASSWORD": USERS["pipeline"]}
    # the worker's environment is what its flow runs get: the pipeline's credentials, S3, the tracking server
    env = {
        **os.environ,
        **toy_env(),
        **AWS,
        **creds,
        "PREFECT_API_URL": servers["prefect"],
        "PREFECT_API_AUTH_STRING": PREFECT_AUTH,
        "PREFECT_HOME": str(tmp_path / "prefect-worker"),
        "MLFLOW_TRACKING_URI": url,
        "MLFLOW_S3_ENDPOINT_URL": s3,
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    monkeypatch.setenv("PREFECT_API_URL", servers["prefect"])
    monkeypatch.setenv("PREFECT_API_AUTH_STRING", PREFECT_AUTH)
    with temporary_settings(updates={PREFECT_API_URL: servers["prefect"], PREFECT_API_AUTH_STRING: PREFECT_AUTH}):
        assert (
            deployments.main(
                ["deploy", "--pool", pool, "--only", "on-demand", "--code", str(ROOT), "--workdir", str(project)]
            )
            == 0
        )
        with get_client(sync_client=True) as client:
            dep = client.read_deployment_by_name("twinflow-pipeline/on-demand")
            assert client.read_work_pool(pool).type == "process" and dep.work_pool_name == pool
            assert dep.pull_steps == [
                {"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT.resolve())}}
            ]
        # the run is created first and waits in the pool's queue until a worker takes it
        run = run_deployment("twinflow-pipeline/on-demand", parameters={"overrides": []}, timeout=0)
        log = open(tmp_path / "worker.log", "wb")
        worker = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "prefect"),
                "worker",
                "start",
                "--pool",
                pool,
                "--type",
                "process",
                "--limit",
                "1",
            ],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 600
            with get_client(sync_client=True) as client:
                while not (state := client.read_flow_run(run.id).state).is_final():
                    assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
                    assert time.monotonic() < deadline, f"flow run still {state.name}"
                    time.sleep(1)
                picked = client.read_flow_run(run.id)
            assert state.is_completed(), (state.message, (tmp_path / "worker.log").read_text()[-3000:])
            assert picked.work_pool_name == pool and picked.infrastructure_pid  # run by the worker's process
        finally:
            stop(worker)
    # registered on the team server with the pipeline's account
    os.environ.update(creds)
    try:
        mv = MlflowClient(url, url).get_model_version_by_alias("tiny-gen", "challenger")
        assert mv.tags["lineage.prefect_flow_run_id"] == str(run.id)
    finally:
        for key in creds:
            os.environ.pop(key, None)
    # a second clone of the run's commit (the on-demand deployment isolates runs: its dvc.lock is in the run's
    # ref, which the version names) pulls the outputs from S3
    ref, commit = mv.tags["lineage.git_ref"], mv.tags["lineage.git_ref_commit"]
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(project), str(clone)], check=True)
    subprocess.run(["git", "fetch", "-q", "origin", f"{ref}:{ref}"], cwd=clone, check=True)
    subprocess.run(["git", "checkout", "-q", commit], cwd=clone, check=True)
    pulled = subprocess.run(dvc + ["pull"], cwd=clone, env={**os.environ, **AWS}, capture_output=True, text=True)
    assert pulled.returncode == 0, pulled.stderr[-3000:]
    status = subprocess.run(
        dvc + ["status"], cwd=clone, env={**os.environ, **toy_env(), **AWS}, capture_output=True, text=True
    )
    assert status.returncode == 0 and "up to date" in status.stdout.lower(), status.stdout + status.stderr
