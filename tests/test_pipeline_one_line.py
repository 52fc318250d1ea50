"""A user's mistake found inside the flow reads as one, not as a crash: `twinflow run` on a copy of the project whose
image folder (built here with PIL, not the project's helpers) holds a file that is not an image. `prepare` finds it;
the command must end with the one line of the data family (exit 11) naming the file and the run's log, with no
Python traceback and no Prefect "Encountered exception during execution" report on stderr (they used to be ~40 lines
before the right message), and the log file must hold the traceback. The checkout is left as it was (`git status`;
the run works in a workspace of its own).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from support import prefect_db
from support.pipeline import copy_project
from support.user_files import image_folder_with_a_bad_image


@pytest.mark.slow
def test_a_bad_image_found_by_prepare_is_one_line_and_the_traceback_is_in_the_log(tmp_path):
    project = copy_project(tmp_path / "proj")
    folder = image_folder_with_a_bad_image(tmp_path / "pets")
    home = tmp_path / "prefect"
    env = prefect_db.standalone_env(home)
    # the image folder as a user configures it (params.yaml's own comment: uncomment `source`), committed
    params = (project / "params.yaml").read_text()
    assert "  # source: imagefolder" in params and '    path: ""' in params
    params = params.replace("  # source: imagefolder", "  source: imagefolder", 1)
    (project / "params.yaml").write_text(params.replace('    path: ""', f"    path: {folder}", 1))
    subprocess.run(["git", "commit", "-qam", "my images"], cwd=project, check=True)
    status = subprocess.run(["git", "status", "--porcelain"], cwd=project, capture_output=True, text=True).stdout
    # --isolate: the workspace of its own is what a failed run keeps (the in-place case: test_failed_run_keeps_outputs)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "run",
            "--workdir",
            str(project),
            "--no-push",
            "--no-register",
            "--isolate",
        ],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    err = done.stderr
    assert done.returncode == 11, err[-4000:]
    assert "Traceback" not in err and "Encountered exception" not in err, err[-4000:]
    last = err.rstrip("\n").split("\n")[-1]
    assert last.startswith("twinflow run: error: stage 'prepare' failed (exit 11): ") and "b.png" in last, last
    log = Path(last.rsplit("(log: ", 1)[1].rstrip(")"))
    assert log.parent == project / ".dvc/tmp/twinflow-logs", log
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "StageFailed" in text, text[-3000:]
    assert text.rstrip("\n").endswith(last)  # the closing line is in the log too
    assert (
        subprocess.run(["git", "status", "--porcelain"], cwd=project, capture_output=True, text=True).stdout == status
    )
