"""Local servers on loopback for the pipeline: `prefect server start` (needed for cron schedules) and
`mlflow server` (a tracking server instead of the sqlite file). Used by `python -m flows.deployments serve
--start-server` and by the end-to-end tests. Each server runs in its own session and is stopped by its PID.
`twinflow run` without a configured Prefect API starts the temporary one here (start_temporary_prefect_server,
`python -m flows.servers temporary-prefect PORT`) rather than letting Prefect start it.
"""

# Lazy imports: prefect, requests, uvicorn
# (slow to load or not in the base install: only the functions that use them load them)
from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
import urllib.request
from pathlib import Path

from flows import lifetime
from twinflow_core.errors import TrackingError
from twinflow_core.redaction import redact

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


def _spawn_until_healthy(
    cmd: list[str], log_path: Path, env: dict, health_url: str, timeout: float
) -> subprocess.Popen:
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
        [
            str(BIN / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{store / 'mlflow.db'}",
            "--artifacts-destination",
            (store / "artifacts").as_uri(),
        ],
        store / f"mlflow-server-{port}.log",
        # MLflow's job runner (GenAI jobs, which this project never submits) starts a pool of consumer processes
        # that cost seconds of CPU to start and keep polling: off unless the environment turns it on
        {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ},
        uri + "/health",
        120,
    )
    return uri, proc


def start_prefect_server(
    home: Path, port: int | None = None, database_url: str | None = None, auth_string: str | None = None
) -> tuple[str, subprocess.Popen]:
    """`prefect server start` on 127.0.0.1 with its own PREFECT_HOME (sqlite there, or `database_url`, e.g.
    postgresql+asyncpg://user:pw@host/prefect); `auth_string` ("user:password"): every API call but the health
    check then needs it (PREFECT_API_AUTH_STRING on the clients). Both go by environment, never argv; returns
    (api url, process)."""
    home.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    if database_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
    if auth_string:
        env["PREFECT_SERVER_API_AUTH_STRING"] = auth_string
    env.pop("PREFECT_API_URL", None)
    env.pop("PREFECT_API_AUTH_STRING", None)
    api = f"http://127.0.0.1:{port}/api"
    proc = _spawn_until_healthy(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        home / "server.log",
        env,
        api + "/health",
        180,
    )
    return api, proc


def prefect_api_configured() -> str:
    """The Prefect API this process would use ("" when none, i.e. Prefect would start its temporary server), read
    without importing Prefect (its settings are fixed at import): PREFECT_API_URL in the environment, else in the
    active profile of $PREFECT_HOME/profiles.toml (or PREFECT_PROFILES_PATH), where `prefect config set` puts it."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]

    home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    path = Path(os.environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml").expanduser()
    try:
        profiles = tomllib.loads(path.read_text())
    except (OSError, ValueError):
        return ""
    active = os.environ.get("PREFECT_PROFILE") or profiles.get("active") or "ephemeral"
    return str(((profiles.get("profiles") or {}).get(active) or {}).get("PREFECT_API_URL") or "")


def start_temporary_prefect_server(timeout_s: float, log_path: Path | None = None) -> tuple[str, subprocess.Popen]:
    """The API server Prefect starts when no API is configured (its "temporary server": uvicorn on the
    PREFECT_HOME database, no UI, no background services), started so that only its owner ends it: in a session of
    its own (a signal to the owner's process group, as Ctrl-C, `timeout` send it, does not reach it), deaf to stop
    signals (systemd sends SIGTERM to every process of a unit at once), and stopped when its stdin closes
    (`stop_temporary`, or the owner's death, SIGKILL included; the kernel's parent-death signal backs that up). The
    owner can thus record a run's end on it after any stop signal. Prefect's own, started in the owner's group and
    ended at its exit, was stopped by a group signal under the running flow (minutes of "Error logging to API"), and
    left running, re-parented to init, when the owner was signalled alone. Output to `log_path` when given."""
    port = free_port()
    env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
    env.pop("PREFECT_API_URL", None)
    log = open(log_path, "ab") if log_path else None
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.servers", "temporary-prefect", str(port)],
        stdin=subprocess.PIPE,
        stdout=log,
        stderr=subprocess.STDOUT if log else None,
        env=env,
        start_new_session=True,
        preexec_fn=lifetime.die_with_parent_hook(),
    )
    if log:
        log.close()  # the server has its own descriptor
    api = f"http://127.0.0.1:{port}/api"
    try:
        wait_http(api + "/health", timeout_s, proc)
    except BaseException:
        stop_temporary(proc)
        raise
    return api, proc


def check_prefect_login(timeout_s: float = 10.0) -> None:
    """When a Prefect API is configured (PREFECT_API_URL), one call that needs its login (PREFECT_API_AUTH_STRING,
    the `user:password` the server was started with): refused, it is one line now (exit 14), not a traceback from
    the flow's first call."""
    if not prefect_api_configured():
        return  # the run's own temporary server: nobody else's, and Prefect must not be imported before it starts

    import requests
    from prefect.settings import get_current_settings

    api = get_current_settings().api
    if not api.url:
        return  # an ephemeral server of this process: nobody else's
    auth = api.auth_string.get_secret_value() if api.auth_string else None
    headers = {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else {}
    if api.key:
        headers = {"Authorization": f"Bearer {api.key}"}
    verify = False if api.tls_insecure_skip_verify else (api.ssl_cert_file or True)
    url = api.url.rstrip("/")
    try:
        answer = requests.post(
            f"{url}/flows/filter", json={"limit": 1}, headers=headers, timeout=timeout_s, verify=verify
        )
    except requests.exceptions.SSLError:
        raise TrackingError(
            f"Prefect API {redact(url)}: TLS check failed; point PREFECT_API_SSL_CERT_FILE at the team's CA certificate"
        ) from None
    except requests.RequestException as err:
        raise TrackingError(
            f"Prefect API {redact(url)} is unreachable ({type(err).__name__}); is PREFECT_API_URL right?"
        ) from None
    if answer.status_code in (401, 403):
        raise TrackingError(
            f"Prefect API {redact(url)} refused the login: wrong PREFECT_API_AUTH_STRING"
            if headers
            else f"Prefect API {redact(url)} requires a login: set PREFECT_API_AUTH_STRING (user:password)"
        )


def stop_temporary(proc: subprocess.Popen, grace_s: float = 15.0) -> None:
    """End a start_temporary_prefect_server: close its stdin, wait, SIGKILL if it lingers."""
    try:
        proc.stdin.close()
    except OSError:
        pass
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def _serve_temporary_prefect(port: int) -> None:
    """The server process of start_temporary_prefect_server: uvicorn (in a thread, so it installs no signal
    handlers) until stdin reaches its end."""

    for sig in lifetime.STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(
            "prefect.server.api.server:create_app",
            factory=True,
            host="127.0.0.1",
            port=port,
            log_level="error",
            lifespan="on",
        )
    )
    thread = threading.Thread(target=server.run, name="prefect-api", daemon=True)
    thread.start()
    while sys.stdin.buffer.read(65536):  # EOF: the owner closed the pipe, or is gone
        pass
    server.should_exit = True
    thread.join(timeout=10)


if __name__ == "__main__":
    if sys.argv[1:2] == ["temporary-prefect"]:
        _serve_temporary_prefect(int(sys.argv[2]))
