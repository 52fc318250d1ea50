"""infra/proxy/Caddyfile run by a real caddy on loopback, with a self-signed certificate for `localhost` standing in
for the team's (the file is used unchanged: only its environment differs from compose's)."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CADDYFILE = ROOT / "infra" / "proxy" / "Caddyfile"


def available() -> str | None:
    """None when caddy and openssl are here, else why not (for pytest.skip)."""
    missing = [tool for tool in ("caddy", "openssl") if not shutil.which(tool)]
    return f"not installed: {', '.join(missing)} (apt-get install caddy)" if missing else None


def make_cert(folder: Path, host: str = "localhost") -> Path:
    """A team CA and, signed by it, one certificate for `host` per service (mlflow.*, prefect.*); returns the CA's
    certificate (what a client trusts). Two certificates, not one copied twice: caddy caches a certificate by its
    content and tags it for the first site that loads it, so the second site of the same files finds none and
    answers every handshake with an internal-error alert."""
    folder.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    ca_key, ca = folder / "ca.key", folder / "ca.crt"
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=team CA", "-keyout",
            str(ca_key), "-out", str(ca))  # fmt: skip
    for name in ("mlflow", "prefect"):
        csr = folder / f"{name}.csr"
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={host}", "-keyout", str(folder / f"{name}.key"),
                "-out", str(csr))  # fmt: skip
        extensions = folder / f"{name}.ext"
        extensions.write_text(f"subjectAltName=DNS:{host}\nbasicConstraints=CA:FALSE\n")
        openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-days",
                "2", "-extfile", str(extensions), "-out", str(folder / f"{name}.crt"))  # fmt: skip
    return ca


def _handshake(port: int, host: str) -> None:
    """One TLS handshake with the listener on `port`. Caddy accepts connections before its certificate is loaded
    (a handshake then ends in an internal-error alert), so an open port is not yet a ready proxy."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # readiness only: the tests themselves verify against the team's CA
    with socket.create_connection(("127.0.0.1", port), timeout=2) as raw:
        with context.wrap_socket(raw, server_hostname=host):
            pass


def start(
    folder: Path,
    certs: Path,
    mlflow_upstream: str,
    prefect_upstream: str,
    mlflow_port: int,
    prefect_port: int,
    host: str = "localhost",
) -> subprocess.Popen:
    env = {
        **os.environ,
        "MLFLOW_PUBLIC_HOST": host,
        "PREFECT_PUBLIC_HOST": host,
        "TLS_CERT_DIR": str(certs),
        "MLFLOW_TLS_PORT": str(mlflow_port),
        "PREFECT_TLS_PORT": str(prefect_port),
        "MLFLOW_UPSTREAM": mlflow_upstream,
        "PREFECT_UPSTREAM": prefect_upstream,
        "HOME": str(folder),
        "XDG_DATA_HOME": str(folder / "data"),
        "XDG_CONFIG_HOME": str(folder / "config"),
    }
    log = open(folder / "caddy.log", "ab")
    proc = subprocess.Popen(
        ["caddy", "run", "--config", str(CADDYFILE), "--adapter", "caddyfile"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError((folder / "caddy.log").read_text()[-3000:])
        try:
            for port in (prefect_port, mlflow_port):
                _handshake(port, host)
            return proc
        except (OSError, ssl.SSLError):
            time.sleep(0.2)
    raise AssertionError("caddy did not serve TLS: " + (folder / "caddy.log").read_text()[-3000:])
