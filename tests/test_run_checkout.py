"""Which checkout a run works on, and what an isolated run carries from it (real git repositories).

- without --workdir, `twinflow run` works on the checkout of the current folder (or its nearest parent with a
  dvc.yaml), never on the checkout the package happens to be installed from;
- an untracked symlink in the checkout (a `.venv` link to an environment elsewhere, a link to a data folder) is
  carried into a run's workspace as the link it is: copying it followed the link and crashed every isolated run
  with IsADirectoryError.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from support.pipeline import REPO, make_toy_project

from flows import workspace
from flows.params import repo_root
from twinflow_core.errors import ConfigError


def test_the_checkout_is_the_current_folders(tmp_path, monkeypatch):
    project = make_toy_project(tmp_path / "proj")
    (project / "sub").mkdir()
    monkeypatch.chdir(project / "sub")
    assert repo_root() == project.resolve() != REPO.resolve()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="no dvc.yaml here nor in a parent folder.*--workdir"):
        repo_root()
    # the CLI, from a folder that is no project: one line, nothing run in the installed checkout
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", "train.steps=2"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 10 and "--workdir" in done.stderr and len(done.stderr.strip().splitlines()) == 1, (
        done.stderr
    )


def test_untracked_symlinks_are_carried_as_links_into_a_run_workspace(tmp_path):
    project = make_toy_project(tmp_path / "proj")
    env_dir = tmp_path / "some-env"
    (env_dir / "bin").mkdir(parents=True)
    (project / "venv-link").symlink_to(env_dir, target_is_directory=True)  # a folder behind an untracked link
    (project / "gone-link").symlink_to(tmp_path / "nothing-there")  # a dangling one
    (project / "note.txt").write_text("an untracked file\n")
    ws = workspace.create_isolated(project, "with-links", log=lambda line: None)
    try:
        assert (ws.path / "venv-link").is_symlink() and os.readlink(ws.path / "venv-link") == str(env_dir)
        assert (ws.path / "gone-link").is_symlink()
        assert (ws.path / "note.txt").read_text() == "an untracked file\n"
        assert list((env_dir / "bin").iterdir()) == []  # nothing written through the link
    finally:
        workspace.remove_isolated(ws)
    assert (project / "venv-link").is_symlink() and env_dir.is_dir()


def test_a_dot_venv_symlink_is_ignored_by_git(tmp_path):
    """The project's .gitignore names `.venv` without a trailing slash, which a symlink matches too."""
    project = make_toy_project(tmp_path / "proj")
    (project / ".gitignore").write_text((REPO / ".gitignore").read_text())
    (project / ".venv").symlink_to(tmp_path, target_is_directory=True)
    untracked = subprocess.run(
        ["git", "ls-files", "--others", "--exclude-standard"], cwd=project, capture_output=True, text=True, check=True
    ).stdout.split()
    assert ".venv" not in untracked
