"""Planted credentials and the grep that looks for them in everything a run leaves behind.

The values are realistic in shape (an AWS key pair, a tracking password, a bearer token), long enough for the
redaction helper to mask them (twinflow_core/redaction.py), and made of characters that URL-encoding leaves as they
are, so a leak is found whichever way it was written.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

# Drawn afresh in each test session: the values are in no file, not even this one (a run's project is a copy of
# the repository, tests/ included, and its grep must find only what the run itself wrote).
PLANTED = {
    "AWS_ACCESS_KEY_ID": "AKIA" + os.urandom(8).hex().upper(),
    "AWS_SECRET_ACCESS_KEY": "plantedSecret" + os.urandom(14).hex(),
    "MLFLOW_TRACKING_TOKEN": "planted-token-" + os.urandom(8).hex(),
}
PASSWORD = "planted-pw-" + os.urandom(8).hex()  # in the tracking URI: http://pipeline:<PASSWORD>@host:port
# One password per channel a run records as given, each in a tracking URI: `twinflow run register.tracking_uri=...`,
# `twinflow run --tracking-uri ...` and params.yaml's register.tracking_uri. A run refuses each of them in one
# line (flows/params.refuse_credentials); the grep then finds none of them anywhere.
RECORDED = {
    "override": "planted-override-pw-" + os.urandom(8).hex(),
    "flag": "planted-flag-pw-" + os.urandom(8).hex(),
    "params": "planted-params-pw-" + os.urandom(8).hex(),
}


def secrets() -> list[str]:
    return [*PLANTED.values(), PASSWORD, *RECORDED.values()]


def _git_objects(repo: Path) -> bytes:
    """Every object of a git repository, decompressed (commits of run refs, their trees and blobs)."""
    listing = subprocess.run(
        ["git", "cat-file", "--batch-all-objects", "--batch"], cwd=repo, capture_output=True, check=True
    )
    return listing.stdout


def leaks_in_files(root: Path) -> dict[str, list[str]]:
    """{file or 'git objects of <repo>': [secrets found]} over every file under root, raw bytes; git object stores
    are zlib-compressed, so each repository's objects are read back through git."""
    found: dict[str, list[str]] = {}
    planted = [(s, s.encode()) for s in secrets()]
    for path in sorted(root.rglob("*")):
        if path.is_dir() and path.name == ".git":
            data, where = _git_objects(path.parent), f"git objects of {path.parent}"
        elif path.is_file() and ".git" not in path.relative_to(root).parts:
            data, where = path.read_bytes(), str(path)
        else:
            continue
        hits = [s for s, b in planted if b in data]
        if hits:
            found[where] = hits
    return found


def leaks_in_text(**texts: str) -> dict[str, list[str]]:
    return {name: hits for name, text in texts.items() if (hits := [s for s in secrets() if s in text])}
