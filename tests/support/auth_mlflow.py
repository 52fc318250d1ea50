"""The team MLflow server (infra/mlflow/entrypoint.sh: basic-auth) on loopback with sqlite stores, and its three
accounts: the pipeline's, a release manager's, a reader's. PostgreSQL is not the point of the tests that use it
(tests/test_team_servers.py runs the same entrypoint on PostgreSQL)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from support import mlflow_db

from flows.servers import free_port, wait_http

ROOT = Path(__file__).resolve().parents[2]
ADMIN_PW = "admin-pw-" + os.urandom(6).hex()
USERS = {
    "pipeline": "pipeline-pw-" + os.urandom(4).hex(),
    "release": "release-pw-" + os.urandom(4).hex(),
    "reader": "reader-pw-" + os.urandom(4).hex(),
}  # MLflow wants >= 12 characters


def start(folder: Path, ttl_s: int | None = None, extra_hosts: str = "") -> tuple[str, subprocess.Popen]:
    """The server, started and answering, with the accounts made; returns (url, process)."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "MLFLOW_BACKEND_STORE_URI": mlflow_db.sqlite_uri(folder / "mlflow.db"),
        "MLFLOW_AUTH_DATABASE_URI": f"sqlite:///{folder / 'auth.db'}",
        "MLFLOW_ARTIFACTS_DESTINATION": (folder / "artifacts").as_uri(),
        "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PW,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "csrf-" + os.urandom(12).hex(),
        "MLFLOW_ALLOWED_HOSTS": f"127.0.0.1:{port},localhost:{port}" + (f",{extra_hosts}" if extra_hosts else ""),
        "MLFLOW_HOST": "127.0.0.1",
        "MLFLOW_PORT": str(port),
        "MLFLOW_WORKERS": "1",
        "MLFLOW_AUTH_CONFIG_PATH": str(folder / "basic_auth.ini"),
    }
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_URI"):
        env.pop(key, None)
    if ttl_s is not None:
        env["MLFLOW_AUTH_CACHE_TTL_SECONDS"] = str(ttl_s)
    else:
        env.pop("MLFLOW_AUTH_CACHE_TTL_SECONDS", None)  # the entrypoint's default
    log = open(folder / "mlflow.log", "ab")
    proc = subprocess.Popen(
        [str(ROOT / "infra" / "mlflow" / "entrypoint.sh")],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/health", 240, proc)
    except Exception:
        from flows.servers import stop

        stop(proc)
        raise AssertionError((folder / "mlflow.log").read_text()[-3000:]) from None
    create_accounts(url)
    return url, proc


def as_account(user: str, password: str | None = None) -> dict[str, str]:
    return {"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password or USERS.get(user, ADMIN_PW)}


def admin_env() -> dict[str, str]:
    return {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": ADMIN_PW}


def create_accounts(url: str) -> None:
    """The pipeline's, the release manager's and a reader's accounts, made by the admin."""
    from mlflow.server.auth.client import AuthServiceClient

    with account_env(admin_env()):
        admin = AuthServiceClient(url)
        for user, password in USERS.items():
            admin.create_user(user, password)


class account_env:
    """os.environ with these MLflow credentials for the block (in-process clients read them per request)."""

    def __init__(self, values: dict[str, str]):
        self.values, self.saved = values, {}

    def __enter__(self):
        self.saved = {k: os.environ.get(k) for k in self.values}
        os.environ.update(self.values)
        return self

    def __exit__(self, *exc):
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
