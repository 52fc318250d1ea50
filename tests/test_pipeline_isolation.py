"""Runs that cannot clash or poison the checkout, and lineage that checks out again.

Fast: override edits change only their values (a copy of the real params.yaml); the checkout lock refuses a
second holder with a one-line message and is free again after its holder is SIGKILLed; a run ref is made
without touching the workspace. Slow: `twinflow run` processes on a throwaway project with fast stand-in
stages (tests/support/toy_stages.py) against one real Prefect server: two at once, one killed, one
registered and reproduced in a fresh clone."""

from __future__ import annotations

import difflib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from support.pipeline import REPO, make_toy_project, start_prefect_server, stop, toy_env

from flows import workspace
from flows.params import apply_overrides, load_params, parse_overrides


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout.strip()


# ---- fast ----


def test_override_edit_changes_only_the_overridden_values(tmp_path):
    path = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", path)
    before = path.read_text()
    overrides = [
        "data.shapes.n_images=400",
        "model.channels=[16,32]",
        "train.steps=4",
        "pretrain.progress=false",
        "data.imagefolder.min_size=8",
        "evaluate.base_cfg=[0.0]",
        "gate.min.geneval-shapes/overall@1nfe=0.0",
    ]
    parsed = parse_overrides(overrides, load_params(path))
    assert apply_overrides(path, parsed)
    after = path.read_text()
    changed = [ln for ln in difflib.ndiff(before.splitlines(), after.splitlines()) if ln[:2] in ("- ", "+ ")]
    assert len(changed) == 2 * len(overrides), changed  # one line out, one line in, per override
    assert "    endpoint_url: null    # S3 endpoint" in after  # untouched nulls stay `null`
    # a trailing comment keeps its column where the new value leaves room
    assert "    min_size: 8           # images with a shorter side" in after
    flat = load_params(path)
    assert flat["train"]["steps"] == 4 and flat["model"]["channels"] == [16, 32]
    assert not apply_overrides(path, parsed) and path.read_text() == after  # same values: not rewritten


def test_override_of_a_block_list_is_written_in_its_place_keeping_every_other_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("# top\nsec:\n  items:\n    - 1\n    - 2\n  other: null   # stays\n  name: 'x'\n")
    assert apply_overrides(path, {"sec.items": [3]})
    text = path.read_text()
    assert text == "# top\nsec:\n  items: [3]\n  other: null   # stays\n  name: 'x'\n"
    assert yaml.safe_load(text) == {"sec": {"items": [3], "other": None, "name": "x"}}


def test_a_run_is_isolated_exactly_when_its_params_must_differ_and_overrides_never_go_in_place(tmp_path):
    from twinflow_core.errors import ConfigError

    (tmp_path / "params.yaml").write_text("train:\n  init: checkpoints/base\n  steps: 4\n")
    assert workspace.wants_isolation(tmp_path, {}) is False
    assert workspace.wants_isolation(tmp_path, {}, isolate=True) is True
    assert workspace.wants_isolation(tmp_path, {"train.steps": 5}) is True
    with pytest.raises(ConfigError, match="never into the checkout's params.yaml"):
        workspace.wants_isolation(tmp_path, {"train.steps": 5}, isolate=False)
    # a remote init makes the run's params.yaml point at the folder it is fetched into: not the checkout's
    (tmp_path / "params.yaml").write_text("train:\n  init: models:/twinflow-shapes@champion\n  steps: 4\n")
    assert workspace.wants_isolation(tmp_path, {}) is True


def test_checkout_lock_refuses_a_second_run_and_is_free_after_its_holder_is_killed(tmp_path):
    root = tmp_path / "proj"
    root.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from flows import workspace\n"
            "with workspace.checkout_lock(Path(sys.argv[1]), 'run-A'):\n print('held', flush=True); time.sleep(120)",
            str(root),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(workspace.CheckoutBusy) as err:
            with workspace.checkout_lock(root, "run-B"):
                pass
        message = str(err.value)
        assert "\n" not in message and "another run is using this checkout" in message
        assert re.search(rf"pid {holder.pid}, started at \d{{4}}-\d\d-\d\dT[\d:]+[+-]\d{{4}}, run id run-A", message)
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        with workspace.checkout_lock(root, "run-C"):  # the kernel dropped the dead holder's lock
            pass
    finally:
        if holder.poll() is None:
            holder.kill()


def test_run_ref_is_a_dvc_experiment_made_without_touching_the_workspace(tmp_path):
    root = make_toy_project(tmp_path / "proj")
    (root / "params.yaml").write_text((root / "params.yaml").read_text().replace("seed: 0", "seed: 7"))
    (root / "new.txt").write_text("made by the run\n")
    status, head = git(root, "status", "--porcelain"), git(root, "rev-parse", "HEAD")
    index = (root / ".git" / "index").read_bytes()
    ref, commit = workspace.save_run_ref(root, "happy run/1", "a run")
    assert ref == f"refs/exps/{head[:2]}/{head[2:]}/happy-run-1"
    assert git(root, "status", "--porcelain") == status and git(root, "rev-parse", "HEAD") == head
    assert (root / ".git" / "index").read_bytes() == index
    assert "seed: 7" in git(root, "show", f"{commit}:params.yaml") and git(root, "show", f"{commit}:new.txt")
    assert "attempts.log" not in git(root, "ls-tree", "-r", "--name-only", commit)  # .gitignore respected
    listed = subprocess.run(
        [sys.executable, "-m", "dvc", "exp", "list", "--all-commits"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "happy-run-1" in listed  # DVC sees it as one of its experiments


# ---- slow: real `twinflow run` processes ----


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect")
    api, proc = start_prefect_server(home)
    yield {"PREFECT_API_URL": api, "PREFECT_HOME": str(home)}
    stop(proc)


def _env(prefect_api: dict) -> dict:
    env = {**os.environ, **toy_env(), **prefect_api, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _twinflow(project: Path, env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "run", "--workdir", str(project), *args],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _wait_for(predicate, what: str, timeout: float = 240.0, procs=()) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        for p in procs:
            assert p.poll() is None, f"{what}: a run ended early:\n{p.stdout.read()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc), children first found first."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        kids = [p for p, pp in parents.items() if pp in frontier and p not in found]
        found += kids
        frontier = kids
    return found


def _attempts(root: Path) -> list[str]:
    path = root / "attempts.log"
    return path.read_text().split() if path.exists() else []


def _saved_ref(out: str) -> str:
    match = re.search(r"saved as (refs/exps/\S+)", out)
    assert match, out[-3000:]
    return match.group(1)


@pytest.mark.slow
def test_two_runs_at_once_complete_with_their_own_params_and_a_third_is_refused(tmp_path, prefect_api):
    """A (no overrides, in the checkout, slow train) and B (toy.seed=5, its own workspace) run at once and
    both complete with their own parameters; C (no overrides) while A holds the checkout is refused with
    one line naming A, and changes nothing of A's."""
    project = make_toy_project(tmp_path / "proj", sleep_stage="train", sleep=6)
    params_before = (project / "params.yaml").read_bytes()
    env = _env(prefect_api)
    a = _twinflow(project, env, "--no-register")
    _wait_for(lambda: "train" in _attempts(project), "run A in its train stage", procs=[a])
    b = _twinflow(project, env, "--no-register", "toy.seed=5", "toy.sleep=0")
    c = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", "--workdir", str(project), "--no-register"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out_a, out_b = a.communicate(timeout=600)[0], b.communicate(timeout=600)[0]
    assert a.returncode == 0, out_a[-4000:]
    assert b.returncode == 0, out_b[-4000:]
    assert c.returncode == 2, c.stdout + c.stderr
    refusal = [ln for ln in c.stderr.splitlines() if "another run is using this checkout" in ln]
    assert (
        len(refusal) == 1
        and c.stderr.strip().splitlines()[-1] == refusal[0]
        and re.search(rf"\(pid {a.pid}, started at \S+, run id [0-9a-f-]{{36}}\)", refusal[0])
    )
    assert _attempts(project).count("train") == 1  # only A trained here; C ran nothing

    ref_a, ref_b = _saved_ref(out_a), _saved_ref(out_b)
    assert "worked in this checkout" in out_a and "worked in its own workspace" in out_b
    assert yaml.safe_load(git(project, "show", f"{ref_a}:params.yaml"))["toy"]["seed"] == 0
    run_b = yaml.safe_load(git(project, "show", f"{ref_b}:params.yaml"))["toy"]
    assert (run_b["seed"], run_b["sleep"]) == (5, 0)
    lock_a = yaml.safe_load((project / "dvc.lock").read_text())
    lock_b = yaml.safe_load(git(project, "show", f"{ref_b}:dvc.lock"))
    assert lock_a["stages"]["train"]["params"]["params.yaml"]["toy.seed"] == 0
    assert lock_b["stages"]["train"]["params"]["params.yaml"]["toy.seed"] == 5
    assert lock_a["stages"]["train"]["outs"] != lock_b["stages"]["train"]["outs"]
    assert git(project, "show", f"{ref_a}:dvc.lock") == (project / "dvc.lock").read_text().strip()
    assert (project / "params.yaml").read_bytes() == params_before  # nobody wrote the checkout's params
    status = subprocess.run(
        [sys.executable, "-m", "dvc", "status"], cwd=project, env=env, capture_output=True, text=True
    )
    assert "up to date" in status.stdout, status.stdout  # A's outputs, intact
    assert git(project, "worktree", "list").count("\n") == 0  # B's workspace is gone


@pytest.mark.slow
def test_interrupted_and_killed_runs_leave_the_checkout_as_it_was(tmp_path, prefect_api):
    """SIGTERM to a run mid-stage: it stops, its stage with it, and the checkout is free at once;
    SIGKILL of a whole run: params.yaml byte for byte as before, and the next run completes."""
    project = make_toy_project(tmp_path / "proj", sleep_stage="train", sleep=120)
    params_before = (project / "params.yaml").read_bytes()
    env = _env(prefect_api)
    lock = project / workspace.LOCK_FILE

    run = _twinflow(project, env, "--no-register", "--no-push")
    _wait_for(lambda: "train" in _attempts(project), "the train stage", procs=[run])
    time.sleep(1)
    run.send_signal(signal.SIGTERM)  # the run's own pid only: the stage must be stopped by the run
    run.communicate(timeout=120)
    assert run.returncode != 0
    assert (project / "params.yaml").read_bytes() == params_before
    import fcntl

    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # nothing (no orphaned stage) still holds it
    finally:
        os.close(fd)

    run = _twinflow(project, env, "--no-register", "--no-push")
    _wait_for(lambda: _attempts(project).count("train") == 2, "the second train stage", procs=[run])
    for pid in [run.pid, *_descendants(run.pid)]:  # the whole pipeline: the run, dvc and the stage
        os.kill(pid, signal.SIGKILL)
    run.wait(30)
    assert (project / "params.yaml").read_bytes() == params_before
    with workspace.checkout_lock(project, "after-kill"):  # no stale lock
        pass

    # recoverable: the next run (the slow stage shortened in its own workspace) completes
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "run",
            "--workdir",
            str(project),
            "--no-register",
            "--no-push",
            "toy.sleep=0",
        ],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert (project / "params.yaml").read_bytes() == params_before


@pytest.mark.slow
def test_registered_version_is_reproduced_in_a_fresh_clone(tmp_path, prefect_api):
    """An override run (its own workspace, removed afterwards) is registered; `twinflow models reproduce`
    checks its ref out in a new folder and pulls its outputs: `dvc status` there is clean, `dvc repro`
    runs nothing, and the checkpoint is the registered one."""
    from mlflow.tracking import MlflowClient

    project = make_toy_project(tmp_path / "proj")
    # a shared repository the project was cloned from: runs must not write to it unless the team asked
    origin = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", str(origin))
    git(project, "remote", "add", "origin", str(origin))
    git(project, "push", "-q", "origin", "HEAD:refs/heads/main")
    env = _env(prefect_api)
    env.pop("TWINFLOW_PUSH_REF", None)
    run = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", "--workdir", str(project), "toy.seed=4"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    assert git(project, "ls-remote", "origin", "refs/exps/*") == ""  # pipeline.push_ref is off by default
    uri = f"sqlite:///{project / 'mlflow.db'}"
    mv = MlflowClient(uri, uri).get_model_version("tiny-gen", "1")
    assert mv.tags["lineage.git_repo"] == str(project)  # where the ref lives

    # from a plain clone of the shared repository (no refs/exps): the ref comes from the recorded repository
    clone = tmp_path / "colleague"
    git(tmp_path, "clone", "-q", str(origin), str(clone))
    dest = tmp_path / "elsewhere" / "v1"
    rep = subprocess.run(
        [sys.executable, "-m", "flows.cli", "models", "--tracking-uri", uri, "reproduce", "tiny-gen", "1", str(dest)],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert rep.returncode == 0, (rep.stdout + rep.stderr)[-4000:]
    assert "dvc status: clean" in rep.stdout
    assert git(dest, "rev-parse", "HEAD") == mv.tags["lineage.git_ref_commit"]
    assert yaml.safe_load((dest / "params.yaml").read_text())["toy"]["seed"] == 4
    assert not git(dest, "status", "--porcelain")
    repro = subprocess.run(
        [sys.executable, "-m", "dvc", "repro"], cwd=dest, env=env, capture_output=True, text=True, timeout=300
    )
    assert repro.returncode == 0 and "Running stage" not in repro.stdout, repro.stdout
    assert not (dest / "attempts.log").exists()  # no stage command ran there
    lock = yaml.safe_load((dest / "dvc.lock").read_text())
    assert next(o["md5"] for o in lock["stages"]["train"]["outs"]) == mv.tags["lineage.checkpoint_md5"]
    assert (dest / "checkpoints/twinflow/model.safetensors").is_file()

    # the team deployment's setting (infra/prefect.team.yaml): the ref goes to origin, and the version names it
    run = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", "--workdir", str(project), "toy.seed=5"],
        cwd=project,
        env={**env, "TWINFLOW_PUSH_REF": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    mv2 = MlflowClient(uri, uri).get_model_version("tiny-gen", "2")
    assert mv2.tags["lineage.git_ref"] in git(project, "ls-remote", "origin", "refs/exps/*")
    assert mv2.tags["lineage.git_repo"] == str(origin)
