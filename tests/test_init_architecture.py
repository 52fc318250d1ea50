"""An init of another architecture than params.yaml's model section is refused before any stage runs.

Outside in, as a user gets there: in a copy of the project as a fresh clone has it, the data prepared (`dvc repro
prepare`) and a narrower generator made by a plain run of the pretrain stage (`python -m flows.stages.pretrain --set
model.channels=[16,32] ...`, what DVC runs), then `twinflow run train.init=<that folder>` with the default model
(channels [32, 64, 64]). It used to train the init's narrower network while params.yaml, dvc.lock and the run's
record said otherwise; now it is one line naming the init and both values, exit 13, in seconds, nothing changed.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.pipeline import copy_project


def _sh(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (args, proc.stdout[-3000:], proc.stderr[-3000:])
    return proc


@pytest.mark.slow
def test_an_init_of_another_width_is_refused_up_front_naming_both(tmp_path):
    from flows.dvc_ops import tool_env

    project = copy_project(tmp_path / "proj")
    env = {**tool_env(), "OMP_NUM_THREADS": "1", "PREFECT_HOME": str(tmp_path / "prefect")}
    for key in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI"):
        env.pop(key, None)
    params = (project / "params.yaml").read_text()
    (project / "params.yaml").write_text(params.replace("    n_images: 16000", "    n_images: 200", 1))
    _sh(project, sys.executable, "-m", "dvc", "repro", "prepare", env=env)
    _sh(project, "git", "add", "-A")
    _sh(project, "git", "commit", "-qm", "prepared")
    narrow = tmp_path / "narrow"
    sets = [
        "model.channels=[16,32]",
        "model.attn_levels=[1]",
        "pretrain.steps=2",
        "pretrain.batch_size=8",
        "pretrain.ckpt_every=2",
        "pretrain.sample_every=0",
        "pretrain.progress=false",
        f"pretrain.out={narrow}",
        f"pretrain.resume_dir={tmp_path / 'resume'}",
    ]
    _sh(project, sys.executable, "-m", "flows.stages.pretrain", *[a for s in sets for a in ("--set", s)], env=env)
    assert (narrow / "model.safetensors").is_file()
    status = _sh(project, "git", "status", "--porcelain").stdout

    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", "--no-push", "--no-register", f"train.init={narrow}"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    seconds = time.monotonic() - start
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 13, done.stderr[-3000:]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    line = lines[0]
    assert f"train.init {narrow}: made for another architecture" in line, line
    assert "model.channels [16, 32] in the init vs [32, 64, 64]" in line, line
    assert seconds < 60, seconds  # the config check, before Prefect or any stage (about 5 s here)
    assert _sh(project, "git", "status", "--porcelain").stdout == status
    assert not (project / "checkpoints/twinflow").exists()
