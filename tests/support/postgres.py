"""A real PostgreSQL 15 for tests: initdb + pg_ctl in a temporary folder, on 127.0.0.1 and a free port.

initdb refuses to run as root, so when the test runs as root the cluster belongs to the `postgres` account
(runuser). The binaries are found on PATH or under /usr/lib/postgresql/<version>/bin (Debian's layout).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

from flows.servers import free_port


def pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def available() -> str | None:
    """None when PostgreSQL can run here, else why not (for pytest.skip)."""
    missing = [n for n in ("initdb", "pg_ctl", "postgres", "psql") if not pg_bin(n)]
    if missing:
        return f"PostgreSQL binaries not found: {', '.join(missing)}"
    if os.geteuid() == 0 and not shutil.which("runuser"):
        return "running as root without runuser (initdb refuses root)"
    return None


def _as_owner(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _run(cmd: list[str], timeout: float) -> None:
    done = subprocess.run(_as_owner(cmd), capture_output=True, text=True, timeout=timeout)
    if done.returncode:
        raise RuntimeError(f"{Path(cmd[0]).name} failed ({done.returncode}): {(done.stderr or done.stdout)[-2000:]}")


@contextmanager
def postgres_server(databases: tuple[str, ...], user: str = "twinflow", password: str = "pg-pw"):
    """A running server with `user` (password auth over TCP) owning `databases`; yields (URI template
    `postgresql://user:password@127.0.0.1:port/{db}`, its folder). Stopped (pg_ctl stop -m fast) and removed
    on exit. The folder is a fresh one under the system temp dir: pytest's tmp_path is private to root, and
    the `postgres` account must reach it."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="twinflow-pg-"))
    data = folder / "pgdata"
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    pwfile = folder / "pw"
    pwfile.write_text(password + "\n")
    if os.geteuid() == 0:
        shutil.chown(pwfile, "postgres", "postgres")
    _run(
        [
            pg_bin("initdb"),
            "-D",
            str(data),
            "-U",
            user,
            "--pwfile",
            str(pwfile),
            "--auth-host=scram-sha-256",
            "--auth-local=trust",
            "-E",
            "UTF8",
        ],
        120,
    )
    port = free_port()
    # the socket lives in our folder (the default /run/postgresql may not exist or be writable)
    opts = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off"
    _run(
        [pg_bin("pg_ctl"), "-D", str(data), "-l", str(folder / "server.log"), "-w", "-t", "60", "-o", opts, "start"], 90
    )
    try:
        for db in databases:
            _run(
                [
                    pg_bin("psql"),
                    "-h",
                    str(folder),
                    "-p",
                    str(port),
                    "-U",
                    user,
                    "-d",
                    "postgres",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-c",
                    f'CREATE DATABASE "{db}"',
                ],
                60,
            )
        yield f"postgresql://{user}:{password}@127.0.0.1:{port}/{{db}}", folder
    finally:
        subprocess.run(
            _as_owner([pg_bin("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]), capture_output=True, timeout=60
        )
        shutil.rmtree(folder, ignore_errors=True)
