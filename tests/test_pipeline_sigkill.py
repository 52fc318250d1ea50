"""SIGKILL of the whole pipeline during `train` (a fault test): `twinflow run` on a copy of the project with a
tiny config (the real stages, a real Prefect server on 127.0.0.1) is killed, its whole process group at once, as
soon as train has written a resume state and before it has finished. Then:

- nothing of the pipeline survives the kill (the dvc and the stage it started go with it: flows/lifetime.py);
- params.yaml is byte for byte as it was;
- the same command again resumes train from the newest state (checkpoints/twinflow.run.json `resumed_from`), and
  every file of the train output is bitwise the one an uninterrupted train writes: `dvc repro train` in a copy of
  the killed project taken without its resume states (same config, same upstream outputs, train from step 0);
- dvc.lock records the same hash for the train output in both.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from support.pipeline import TINY, copy_project, start_prefect_server, stop

STEPS = 16  # train steps: a state every 2, so the kill comes with most of the run still ahead


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def train_md5(project: Path) -> str:
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    return next(o["md5"] for o in lock["stages"]["train"]["outs"] if o["path"] == "checkpoints/twinflow")


# stands in for `dvc repro`: a child of the flow's process that starts a stage, which imports flows.stages; DVC
# starts it through `$SHELL -c`, and dash (/bin/sh, DVC's shell when SHELL is unset) forks a lone command where bash
# execs it: the stage is then a grandchild of dvc, under a shell that a parent-death signal of the stage watches
# (the trailing `; true` keeps the shell in between whatever its version does with a lone command)
_STAGE = "import flows.stages, time; print('stage up', flush=True); time.sleep(120)"
_MIDDLE = {
    "direct": f"import subprocess, sys\nsubprocess.run([sys.executable, '-c', {_STAGE!r}])",
    "dash": "import shlex, subprocess, sys\n"
    f"subprocess.run(['/bin/sh', '-c', shlex.quote(sys.executable) + ' -c ' + shlex.quote({_STAGE!r}) + ' ; true'])",
}
_FLOW = """
import sys
from flows.dvc_ops import run_streaming
run_streaming([sys.executable, "-c", sys.argv[1]], ".", lambda line: print(line, flush=True), "middle")
"""


@pytest.mark.parametrize("middle", sorted(_MIDDLE))
def test_a_sigkilled_flow_process_takes_its_command_and_the_stage_with_it(tmp_path, middle):
    """flows/lifetime.py without the pipeline around it (seconds): SIGKILL the process that ran run_streaming;
    the command it started (in a session of its own) and the stage that command started (directly, or through a
    shell that does not exec it) end too."""
    import psutil

    proc = subprocess.Popen(
        [sys.executable, "-c", _FLOW, _MIDDLE[middle]],
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    tree: list = []
    try:
        assert proc.stdout.readline().strip() == "stage up"
        tree = psutil.Process(proc.pid).children(recursive=True)
        assert len(tree) == (2 if middle == "direct" else 3), [" ".join(p.cmdline()) for p in tree]
        assert os.getpgid(tree[0].pid) != os.getpgid(proc.pid)  # out of the killed group
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        _, alive = psutil.wait_procs(tree, timeout=15)
        assert not alive, [" ".join(p.cmdline()) for p in alive]
    finally:
        for p in tree:  # when the test fails: no orphan left sleeping
            if p.is_running():
                p.kill()


@pytest.mark.slow
def test_sigkilled_pipeline_resumes_train_and_ends_bitwise_equal(tmp_path):
    import psutil

    from flows.dvc_ops import tool_env
    from flows.params import apply_overrides, load_params, parse_overrides

    project = copy_project(tmp_path / "proj")
    # written into the copy and committed: a run without overrides works in the checkout, as `make run` does
    # grids every 2 steps: the killed run's grids are gone with its outputs, and the resumed run puts them back
    sets = [*TINY, f"train.steps={STEPS}", "train.ckpt_every=2", "train.sample_every=2"]
    apply_overrides(project / "params.yaml", parse_overrides(sets, load_params(project / "params.yaml")))
    subprocess.run(["git", "commit", "-qam", "tiny config"], cwd=project, check=True)
    params_before = (project / "params.yaml").read_bytes()
    home = tmp_path / "prefect"
    api, prefect = start_prefect_server(home)
    # SHELL=/bin/sh: DVC runs each stage through dash, which forks it (see _MIDDLE): the case a CI runner without
    # SHELL meets, where a parent-death signal alone left train running to its end after the kill
    env = {**tool_env(), "PREFECT_API_URL": api, "PREFECT_HOME": str(home), "OMP_NUM_THREADS": "1", "SHELL": "/bin/sh"}
    env.pop("MLFLOW_TRACKING_URI", None)
    twinflow = [sys.executable, "-m", "flows.cli", "run", "--workdir", str(project), "--no-push", "--no-register"]
    states = project / "outputs" / "resume"
    model = project / "checkpoints" / "twinflow" / "model.safetensors"
    try:
        with open(tmp_path / "killed.log", "wb") as log:
            proc = subprocess.Popen(
                twinflow, cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            deadline = time.monotonic() + 600
            while not list(states.glob("train-*/step-*.ckpt")):
                assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-4000:]
                assert time.monotonic() < deadline, "train wrote no resume state within 600 s"
                time.sleep(0.05)
            tree = psutil.Process(proc.pid).children(recursive=True)
            assert any("flows.stages.train" in " ".join(p.cmdline()) for p in tree)
            os.killpg(proc.pid, signal.SIGKILL)  # the group of `twinflow run`: what kill -9 -PGID does
            proc.wait()
        _, alive = psutil.wait_procs(tree, timeout=30)
        assert not alive, f"still running after the kill: {[' '.join(p.cmdline()) for p in alive]}"
        assert not model.exists(), "train had finished before the kill"
        killed_at = sorted(p.name for p in states.glob("train-*/step-*.ckpt"))
        assert killed_at and f"step-{STEPS:08d}.ckpt" not in killed_at
        assert (project / "params.yaml").read_bytes() == params_before

        # the uninterrupted reference: the killed project without its resume states, train from step 0
        other = tmp_path / "other"
        shutil.copytree(project, other, symlinks=True)
        shutil.rmtree(other / "outputs" / "resume")
        full = subprocess.run(
            [sys.executable, "-m", "dvc", "repro", "train"],
            cwd=other,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert full.returncode == 0, (full.stdout + full.stderr)[-4000:]
        assert "Running stage 'train'" in full.stdout and "Running stage 'pretrain'" not in full.stdout
        assert json.loads((other / "checkpoints/twinflow.run.json").read_text())["resumed_from"] is None

        again = subprocess.run(twinflow, cwd=project, env=env, capture_output=True, text=True, timeout=900)
        out = again.stdout + again.stderr
        assert again.returncode == 0, out[-6000:]
        assert "stages: prepare cached, validate cached, pretrain cached, train ran" in out, out[-3000:]
        record = json.loads((project / "checkpoints/twinflow.run.json").read_text())
        newest = sorted(states.glob("train-*/step-*.ckpt"))  # the kept ones now end at the final step
        assert record["resumed_from"] and Path(record["resumed_from"]).name == killed_at[-1], record
        assert (project / record["resumed_from"]).parent == newest[-1].parent  # resume_dir is relative
        assert 0 < record["steps_run"] < STEPS, record

        resumed, reference = files(project / "checkpoints/twinflow"), files(other / "checkpoints/twinflow")
        assert sorted(resumed) == sorted(reference) and {"model.safetensors", "state.ckpt"} <= set(resumed)
        assert sum(name.startswith("samples/step-") for name in resumed) == STEPS // 2  # a 1-NFE grid per 2 steps
        assert [name for name in resumed if resumed[name] != reference[name]] == []
        assert train_md5(project) == train_md5(other)
        assert (project / "params.yaml").read_bytes() == params_before
    finally:
        stop(prefect)
