"""Local servers on loopback for the pipeline: `prefect server start` (needed for cron schedules) and
`mlflow server` (a tracking server instead of the sqlite file). Used by `python -m flows.deployments serve
--start-server` and by the end-to-end tests. Each server runs in its own session and is stopped by its PID.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=3) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout_s} s")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (it was started in its own session), SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def _spawn_until_healthy(cmd: list[str], log_path: Path, env: dict, health_url: str, timeout: float) -> subprocess.Popen:
    """Start `cmd` in its own session, output to `log_path`; wait for `health_url`, stop it if that fails."""
    log = open(log_path, "ab")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    try:
        wait_http(health_url, timeout, proc)
    except Exception:
        stop(proc)
        raise
    return proc


def start_mlflow_server(store: Path, port: int | None = None) -> tuple[str, subprocess.Popen]:
    """`mlflow server` on 127.0.0.1 with a sqlite store and artifacts served by the server."""
    store.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    uri = f"http://127.0.0.1:{port}"
    proc = _spawn_until_healthy(
        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
         "--artifacts-destination", (store / "artifacts").as_uri()],
        store / f"mlflow-server-{port}.log", os.environ.copy(), uri + "/health", 120)
    return uri, proc


def start_prefect_server(home: Path, port: int | None = None, database_url: str | None = None) -> tuple[str, subprocess.Popen]:
    """`prefect server start` on 127.0.0.1 with its own PREFECT_HOME (sqlite there, or `database_url`, e.g.
    postgresql+asyncpg://user:pw@host/prefect); returns (api url, process)."""
    home.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    if database_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
    env.pop("PREFECT_API_URL", None)
    api = f"http://127.0.0.1:{port}/api"
    proc = _spawn_until_healthy([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                home / "server.log", env, api + "/health", 180)
    return api, proc
