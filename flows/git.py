"""Running git for a run: one command with a one-line error, and the remote that run refs are pushed to.
Below flows/workspace.py (run workspaces and refs) and flows/dvc_ops.py (pushing a run), which both use it."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from twinflow_core.errors import TwinflowError


class WorkspaceError(TwinflowError):
    """A run workspace or its git ref could not be made."""


def git(cwd: Path, *args: str, env: dict | None = None, check: bool = True) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise WorkspaceError(
            f"git {' '.join(args[:2])} in {cwd} failed: "
            f"{(proc.stderr or proc.stdout).strip().splitlines()[-1:] or ['no output']}"
        )
    return proc.stdout.strip()


def git_remote(path: Path, wanted: str = "") -> str | None:
    """The git remote run refs are pushed to: `wanted` if given, else origin, else the only one, else none."""
    remotes = git(path, "remote", check=False).split()
    if wanted:
        if wanted not in remotes:
            raise WorkspaceError(f"{path}: no git remote {wanted!r} (have {remotes or 'none'})")
        return wanted
    if "origin" in remotes:
        return "origin"
    return remotes[0] if len(remotes) == 1 else None


def remote_url(path: Path, remote: str) -> str:
    """A git remote's URL without credentials (a user:token@ in an https URL stays with git's credential store)."""
    url = git(path, "remote", "get-url", remote)
    return re.sub(r"^([a-z][a-z0-9+.-]*://)[^/@]*@", r"\1", url)
