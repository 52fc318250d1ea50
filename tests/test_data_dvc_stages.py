"""End to end through DVC on a fresh copy: `dvc repro validate` builds and validates the shapes dataset, a
second run does nothing, and a corrupted shard makes the validate stage fail naming the expectation."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def dvc(args, cwd):
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")  # `python` = this venv
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, capture_output=True, text=True)


@pytest.mark.slow
def test_dvc_repro_validate_builds_once_and_catches_a_corrupt_shard(tmp_path):
    root = tmp_path / "clone"
    root.mkdir()
    for rel in ("twinflow_core", "flows", "data/prompts"):
        shutil.copytree(REPO / rel, root / rel, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["shapes"]["n_images"] = 400
    params["data"]["shard_size"] = 128
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert dvc(["init", "--no-scm"], root).returncode == 0

    first = dvc(["repro", "validate"], root)
    assert first.returncode == 0, first.stderr
    assert "Running stage 'prepare'" in first.stdout and "Running stage 'validate'" in first.stdout
    assert (root / "data/prepared/shapes/meta.json").is_file()
    assert '"success": true' in (root / "reports/data/shapes/validation.json").read_text()
    assert (root / "reports/data/shapes/samples.png").is_file()

    second = dvc(["repro", "validate"], root)
    assert second.returncode == 0 and "Running stage" not in second.stdout
    assert "didn't change" in second.stdout

    shard = root / "data/prepared/shapes/shards/images-00002.npz"
    data = bytearray(shard.read_bytes())
    data[-200] ^= 0xFF  # inside the zip's central directory region / last entry: the file no longer checks out
    shard.chmod(0o644)
    shard.write_bytes(bytes(data))
    bad = dvc(["repro", "--single-item", "validate"], root)
    assert bad.returncode != 0
    assert "expect_column_values_to_be_in_set(sha256_ok)" in bad.stderr + bad.stdout
    assert "FAILED" in (root / "reports/data/shapes/validation.md").read_text()
