"""The team Prefect API behind its auth string, and the TLS proxy of infra/proxy/Caddyfile in front of it, on
loopback with a real `prefect server start` and a real caddy: a client without the auth string (or with a wrong
one) can neither deploy nor read, with one line from the project's commands; the auth string is in no process's
command line; plain HTTP to the proxy is refused, HTTPS with the team's CA works."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from support import prefect_db, tls_proxy
from support.argv import secrets_in_argv

from flows.servers import free_port, start_prefect_server, stop

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
AUTH = "twinflow:prefect-" + os.urandom(8).hex()


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-auth")
    prefect_db.seed(home)
    api, proc = start_prefect_server(home, auth_string=AUTH)
    yield api, proc
    stop(proc)


def _call(url: str, auth: str | None = None, body: dict | None = None, **ssl) -> tuple[int, str]:
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30, **ssl) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _env(tmp: Path, api: str, auth: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_AUTH_STRING", "PREFECT_API_KEY")}
    env.update(
        {
            "PREFECT_API_URL": api,
            "PREFECT_HOME": str(tmp / "client-home"),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
        }
    )
    if auth:
        env["PREFECT_API_AUTH_STRING"] = auth
    return env


def _deploy(tmp: Path, api: str, auth: str | None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.deployments",
            "deploy",
            "--pool",
            "team-pool",
            "--only",
            "on-demand",
            "--code",
            str(ROOT),
            "--workdir",
            str(tmp),
        ],
        cwd=ROOT,
        env=_env(tmp, api, auth),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_client_without_the_auth_string_can_neither_deploy_nor_read(prefect_api, tmp_path):
    api, proc = prefect_api
    # the server itself refuses: every call but the health check needs the auth string
    assert _call(api + "/health")[0] == 200
    assert _call(api + "/deployments/filter", body={})[0] == 401
    assert _call(api + "/deployments/filter", auth="twinflow:wrong", body={})[0] == 401
    assert _call(api + "/flows/", body={"name": "intruder"})[0] == 401
    # ...also Prefect's own client, which `prefect deploy` and workers use
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api, PREFECT_API_AUTH_STRING: None}):
        with get_client(sync_client=True) as client:
            with pytest.raises(Exception, match="401"):
                client.create_work_pool(work_pool=WorkPoolCreate(name="intruder-pool", type="process"))

    # the project's deploy command: one line, before anything is written
    for auth, says in (
        (None, "requires a login: set PREFECT_API_AUTH_STRING"),
        ("twinflow:wrong-1234", "refused the login: wrong PREFECT_API_AUTH_STRING"),
    ):
        done = _deploy(tmp_path, api, auth)
        lines = done.stderr.strip().splitlines()
        assert done.returncode != 0 and len(lines) == 1 and says in lines[0], done.stderr[-3000:]
        assert "wrong-1234" not in done.stderr
    done = _deploy(tmp_path, api, AUTH)
    assert done.returncode == 0 and "on-demand -> pool team-pool" in done.stdout, done.stdout + done.stderr
    status, body = _call(api + "/deployments/filter", auth=AUTH, body={})
    assert status == 200 and [d["name"] for d in json.loads(body)] == ["on-demand"]
    assert _call(api + "/work_pools/intruder-pool", auth=AUTH)[0] == 404

    # `twinflow run` checks the login before anything runs
    from support.pipeline import make_toy_project

    proj = make_toy_project(tmp_path / "proj")  # a real project: without the check, its stages would run
    done = subprocess.run(
        [str(Path(sys.executable).parent / "twinflow"), "run", "--workdir", str(proj)],
        cwd=proj,
        env=_env(tmp_path, api, None),
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 14 and len(lines) == 1 and "requires a login" in lines[0], done.stderr[-3000:]
    assert not (proj / "dvc.lock").exists()

    # the auth string is in the server's environment, on no command line (`ps` shows those to every account)
    assert proc.poll() is None
    assert secrets_in_argv([AUTH.split(":", 1)[1]]) == []


def test_plain_http_to_the_tls_proxy_is_refused_https_with_the_teams_ca_works(prefect_api, tmp_path):
    why = tls_proxy.available()
    if why:
        pytest.skip(why)
    import ssl

    api, _ = prefect_api
    ca = tls_proxy.make_cert(tmp_path / "certs")
    mlflow_port, prefect_port = free_port(), free_port()
    upstream = api.removeprefix("http://").removesuffix("/api")
    proxy = tls_proxy.start(
        tmp_path, tmp_path / "certs", f"127.0.0.1:{free_port()}", upstream, mlflow_port, prefect_port
    )
    try:
        tls = f"https://localhost:{prefect_port}/api"
        trusted = ssl.create_default_context(cafile=str(ca))
        assert _call(tls + "/health", context=trusted)[0] == 200
        status, body = _call(tls + "/deployments/filter", auth=AUTH, body={}, context=trusted)
        assert status == 200, body
        assert _call(tls + "/deployments/filter", body={}, context=trusted)[0] == 401  # TLS does not replace auth
        # plain HTTP to either port: refused by the TLS listener, nothing reaches the servers
        for port in (prefect_port, mlflow_port):
            status, body = _call(f"http://localhost:{port}/api/health")
            assert status == 400 and "HTTP request to an HTTPS server" in body, (status, body)
        # a client that does not trust the team's CA is stopped before it sends its login
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            _call(tls + "/health")
        # Prefect's client over TLS with the CA and the auth string (what a worker elsewhere sets)
        env = {**_env(tmp_path, tls, AUTH), "PREFECT_API_SSL_CERT_FILE": str(ca)}
        done = subprocess.run(
            [str(Path(sys.executable).parent / "prefect"), "work-pool", "ls"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0 and "401" not in done.stdout + done.stderr, done.stdout + done.stderr
    finally:
        stop(proxy)
