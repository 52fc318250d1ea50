"""A failed run in the checkout leaves it as it was: DVC deletes a stage's outputs before running it, and the flow
puts them back when the stage fails (flows/stage_backup.py).

Outside in: a copy of the project as a fresh clone has it, prepared once by the user (`dvc repro prepare`, committed),
then pointed at an image folder (built here with PIL) holding a file that is not an image, under the same data.name.
`twinflow run` in the checkout (no overrides, no --isolate) fails in `prepare` with the one line of the data family;
`git status --porcelain` and the sha256 of every file of every DVC output (the committed samples.png, the cached
prepared shards) are what they were. Inside: the same on the toy stages, where an upstream stage that completes in
the same `dvc repro` keeps what it made and a stage's new output that did not exist before is removed.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from support import prefect_db
from support.pipeline import copy_project, make_toy_project, toy_env
from support.user_files import image_folder_with_a_bad_image

from flows import dvc_ops, stage_backup
from flows.faults import StageFailed


def _sh(cwd: Path, *args: str, env: dict | None = None) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (args, proc.stdout[-3000:], proc.stderr[-3000:])
    return proc.stdout


def _digests(root: Path, folders: tuple[str, ...]) -> dict[str, str]:
    """sha256 of every file under the folders that hold DVC outputs, and of dvc.lock."""
    files = [root / "dvc.lock"] + [p for f in folders for p in sorted((root / f).rglob("*")) if p.is_file()]
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files if p.is_file()}


def test_a_failed_stage_gets_its_outputs_back_and_a_completed_upstream_stage_keeps_its_own(tmp_path, monkeypatch):
    for key, value in toy_env().items():
        monkeypatch.setenv(key, value)
    root = make_toy_project(tmp_path / "proj")
    dvc = [sys.executable, "-m", "dvc"]
    _sh(root, *dvc, "repro", "validate")
    _sh(root, "git", "add", "-A")
    _sh(root, "git", "commit", "-qm", "prepared and validated")
    status = _sh(root, "git", "status", "--porcelain")
    report = (root / "reports/data/toy/validation.json").read_bytes()

    params = yaml.safe_load((root / "params.yaml").read_text())
    params["toy"].update(size=17, fail="validate")  # prepare reruns and completes, then validate fails
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    lines: list[str] = []
    with pytest.raises(StageFailed), stage_backup.outputs_kept_on_failure(root, lines.append):
        dvc_ops.repro_stage("validate", root, lines.append)
    assert (root / "reports/data/toy/validation.json").read_bytes() == report  # DVC had deleted it
    assert (root / "data/prepared/toy/images.txt").read_text() == "17 images\n"  # prepare completed: kept
    assert any("outputs restored" in line and "validation.json" in line for line in lines), lines
    assert status == ""
    # prepare's new lock entry, as DVC records a completed stage; validate's report is not listed: it is back
    assert _sh(root, "git", "status", "--porcelain") == " M dvc.lock\n M params.yaml\n"
    assert not (root / stage_backup.BACKUP_DIR).exists()

    # an output that was not there before the failed stage: removed with the rest of its partial work
    (root / "reports/data/toy/validation.json").unlink()
    with pytest.raises(StageFailed), stage_backup.outputs_kept_on_failure(root, lines.append):
        dvc_ops.repro_stage("validate", root, lines.append)
    assert not (root / "reports/data/toy/validation.json").exists()


@pytest.mark.slow
def test_a_failed_run_in_the_checkout_leaves_git_status_and_every_output_as_they_were(tmp_path):
    project = copy_project(tmp_path / "proj")
    home = tmp_path / "prefect"
    env = prefect_db.standalone_env(home)
    dvc = [sys.executable, "-m", "dvc"]
    # the user's own small dataset, prepared and committed (a cached output and a committed one exist)
    params = (project / "params.yaml").read_text()
    assert "    n_images: 16000" in params
    (project / "params.yaml").write_text(params.replace("    n_images: 16000", "    n_images: 200", 1))
    _sh(project, *dvc, "repro", "prepare", env=env)
    _sh(project, "git", "add", "-A")
    _sh(project, "git", "commit", "-qm", "prepared")
    # then their image folder under the same data.name, as params.yaml's comment says: uncomment `source`
    folder = image_folder_with_a_bad_image(tmp_path / "pets")
    params = (project / "params.yaml").read_text().replace("  # source: imagefolder", "  source: imagefolder", 1)
    (project / "params.yaml").write_text(params.replace('    path: ""', f"    path: {folder}", 1))
    status = _sh(project, "git", "status", "--porcelain")
    assert status == " M params.yaml\n", status  # an edit not yet committed: it must stay exactly that
    folders = ("data", "reports", "metrics", "checkpoints", "artifacts")
    before = _digests(project, folders)
    assert "reports/data/shapes/samples.png" in before and any(k.startswith("data/prepared/shapes/") for k in before)

    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", "--no-push", "--no-register"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    err = done.stderr
    assert done.returncode == 11, err[-4000:]
    assert "Traceback" not in err, err[-4000:]
    last = err.rstrip("\n").split("\n")[-1]
    assert last.startswith("twinflow run: error: stage 'prepare' failed (exit 11): ") and "b.png" in last, last
    assert _sh(project, "git", "status", "--porcelain") == status
    assert _digests(project, folders) == before
    prepare = _sh(project, *dvc, "status", "prepare", env=env)
    assert "modified:           data" in prepare and "deleted" not in prepare, (
        prepare
    )  # stale by the edit, nothing missing
