"""Tests never modify the checkout: every tracked file's (size, mtime, mode) is recorded once per session and
compared after each test, so the test that writes into the repository fails, naming the files it touched.
Stores that MLflow makes on its own in its working folder (git-ignored, so not tracked) are watched too: a test
that lets a tool default to the checkout leaves a store there that the user's own runs then read."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def tracked_files(repo: Path = REPO) -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=repo, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []  # not a git checkout (an sdist): nothing to guard
    return [p for p in out.decode().split("\0") if p]


def snapshot(files: list[str], repo: Path = REPO) -> dict[str, tuple]:
    state = {}
    for rel in files:
        try:
            st = os.stat(repo / rel)
            state[rel] = (st.st_size, st.st_mtime_ns, st.st_mode)
        except FileNotFoundError:
            state[rel] = None
    return state


def changed(before: dict[str, tuple], after: dict[str, tuple]) -> list[str]:
    return sorted(rel for rel in before if before[rel] != after.get(rel))


# MLflow's defaults relative to the working folder: a sqlite file, a file store / artifact root, served artifacts
TOOL_DEFAULTS = ("mlflow.db", "mlruns", "mlartifacts")


def tool_stores(repo: Path = REPO) -> set[str]:
    return {name for name in TOOL_DEFAULTS if (repo / name).exists()}
