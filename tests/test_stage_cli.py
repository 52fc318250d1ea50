"""Each stage's command line as DVC runs it (`python -m flows.stages.<stage>`, flows/stages/_cli.py): a stage that
finishes exits 0 with its summary on stdout and nothing on stderr; a user's mistake exits with its family's code
and one line `<stage>: error: ...`, no traceback; `--params` and `--set` read the same way in every stage."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def stage(name: str, *args: str, root: Path | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", f"flows.stages.{name}", *args] + (["--root", str(root)] if root else [])
    return subprocess.run(cmd, cwd=root or REPO, capture_output=True, text=True, timeout=300)


@pytest.fixture()
def root(tmp_path):
    """A project folder with the committed params.yaml and prompt sets (prepare keeps their prompts out of the
    training captions)."""
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(REPO / "data" / "prompts", tmp_path / "data" / "prompts")
    return tmp_path


def test_prepare_and_validate_exit_0_with_their_summary_and_a_quiet_stderr(root):
    done = stage("prepare", "--set", "data.shapes.n_images=300", root=root)
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    assert done.stdout.startswith("prepare: 300 shapes images at 24px -> ") and done.stdout.count("\n") == 1
    done = stage("validate", "--set", "data.shapes.n_images=300", root=root)
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    assert done.stdout.startswith("validate: shapes: all expectations met (300 rows)")


def test_a_failed_expectation_is_one_line_and_exit_11(root):
    assert stage("prepare", "--set", "data.shapes.n_images=64", root=root).returncode == 0
    done = stage("validate", root=root)  # 64 images cannot hold each caption kind's share: a data problem
    assert done.returncode == 11 and done.stdout == "", done.stderr
    assert done.stderr.startswith("validate: error: shapes: 1 expectation(s) failed: ") and done.stderr.count("\n") == 1


@pytest.mark.parametrize(
    "name, args, code, says",
    [
        ("prepare", ["--set", "data.shapes.n_images=-3"], 10, "prepare: error: data.shapes.n_images: expected >= 1"),
        ("prepare", ["--set", "data.shapes.n_images"], 10, "prepare: error: override 'data.shapes.n_images'"),
        ("validate", ["--params", "missing.yaml"], 10, "validate: error: "),
        ("encode", ["--params", "missing.yaml"], 10, "encode: error: missing.yaml: params file not found"),
        ("evaluate", ["--set", "evaluate.batch=0"], 10, "evaluate: error: evaluate.batch: expected >= 1, got 0"),
        ("train", ["--set", "train.steps=0"], 10, "train: error: "),
        ("configure", ["--params", "missing.yaml"], 10, "configure: error: missing.yaml: params file not found"),
    ],
)
def test_a_mistake_is_one_line_naming_the_stage_and_its_exit_code(tmp_path, name, args, code, says):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    cmd = [sys.executable, "-m", f"flows.stages.{name}", *args]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == code, done.stderr[-2000:]
    assert done.stderr.startswith(says) and done.stderr.count("\n") == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
