"""An S3 server for tests: moto in server mode on 127.0.0.1 (real HTTP, real boto/s3fs clients), credentials
in the environment, and an uploader. Import the fixtures into a test module to use them."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

SECRET = "s3cr3t-never-printed"  # the secret key; tests assert it never shows up in an error


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def moto_endpoint():
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_env(monkeypatch, moto_endpoint):
    """AWS credentials for moto in os.environ; the endpoint is returned (tests pass it or set it)."""
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return moto_endpoint


def upload(endpoint: str, folder: Path, bucket: str, prefix: str):
    """Every file under `folder` to s3://bucket/prefix/<relative path> (the bucket is created)."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint)
    s3.create_bucket(Bucket=bucket)
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            s3.put_object(Bucket=bucket, Key=f"{prefix}/{p.relative_to(folder).as_posix()}", Body=p.read_bytes())
