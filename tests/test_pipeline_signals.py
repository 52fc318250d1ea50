"""Stop signals to `twinflow run`, as a user, `timeout` or systemd send them, during `train`: the real command on a
copy of the project with the tiny config, with no Prefect API configured (so the run starts its temporary server,
the case where one was left behind), started in a session of its own, and signalled once train has written a resume
state. Each case checks:

- the exit status is 128 + the signal's number (130 for SIGINT, 143 for SIGTERM), within seconds (printed);
- stderr ends with one line saying so and naming the run's log, holds no traceback, no Prefect crash report, no
  "Error logging to API";
- within 10 s of the signal no process of the run is left: none whose environment carries the run's marker (every
  process the run started inherits it: the temporary Prefect server, `dvc repro`, its shell, the stage), whatever
  its parent now is;
- what finished stages made is kept (dvc.lock and the outputs of prepare, validate, pretrain) and so are train's
  resume states, and the next run resumes from them: the cases run one after another on the same project, and each
  later run's log shows Lightning restoring the newest state the run before it left, with the earlier stages cached.

The cases: SIGTERM to the command's pid (it used to stop the stage but leave the temporary Prefect server running,
re-parented to init), SIGTERM to its process group (`timeout`, systemd: it used to stop the server under the running
flow and run on for minutes logging "Error logging to API"), SIGINT to the group (Ctrl-C in a terminal), and
SIGTERM to every process of the run at once (systemd stopping a unit: the temporary server gets it too, and must
outlive the flow's last report).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml
from support import prefect_db
from support.pipeline import TINY, copy_project

pytestmark = pytest.mark.slow
MARK = "TWINFLOW_SIGNAL_TEST_RUN"  # an environment variable every process of a run inherits


def run_processes(mark: str) -> list[str]:
    """'pid cmdline' of every process whose environment holds MARK=mark (this user's processes; /proc)."""
    found = []
    needle = f"{MARK}={mark}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:  # ended meanwhile, or not ours
            continue
        if state != "Z":  # a zombie has ended; only its parent has not read its status yet
            found.append(f"{entry.name} {cmd}")
    return found


def states(project: Path) -> list[Path]:
    return sorted(project.glob("outputs/resume/train-*/step-*.ckpt"), key=lambda p: p.stat().st_mtime)


def stages_done(project: Path) -> dict:
    """dvc.lock's stages by stage name (an optional stage is locked as `<stage>@used`)."""
    lock = project / "dvc.lock"
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {}) if lock.exists() else {}
    return {name.split("@")[0]: entry for name, entry in stages.items()}


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    """Starts `twinflow run` on one project (module-wide: each case resumes what the one before left)."""

    tmp = tmp_path_factory.mktemp("signals")
    project = copy_project(tmp / "proj")
    from flows.params import apply_overrides, load_params, parse_overrides

    # a train far longer than a case lasts, a resume state every 2 steps; committed: a run without overrides works
    # in the checkout (as `make run` does), where a rerun resumes train from the states the stopped one left
    sets = [*TINY, "train.steps=100000", "train.ckpt_every=2"]
    apply_overrides(project / "params.yaml", parse_overrides(sets, load_params(project / "params.yaml")))
    subprocess.run(["git", "commit", "-qam", "tiny config"], cwd=project, check=True)
    home = tmp / "prefect"
    env = prefect_db.standalone_env(home)  # no Prefect API configured: `twinflow run` starts its temporary server

    def start(name: str):
        mark = uuid.uuid4().hex
        out, err = open(tmp / f"{name}.out", "wb"), open(tmp / f"{name}.err", "wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "run", "--workdir", str(project), "--no-push", "--no-register"],
            cwd=project,
            env={**env, MARK: mark},
            stdout=out,
            stderr=err,
            start_new_session=True,
            # as from a terminal: a suite started in the background (`cmd &`) passes SIGINT on ignored, and a run
            # keeps an ignored signal ignored (nohup's contract), so Ctrl-C would then rightly do nothing
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        return proc, mark, tmp / f"{name}.err"

    yield project, start


CASES = {  # name: (signal, to whom: the command's pid, its process group, or every process of the run)
    "sigterm-pid": (signal.SIGTERM, "pid"),
    "sigterm-group": (signal.SIGTERM, "group"),
    "sigint-group": (signal.SIGINT, "group"),
    "sigterm-all": (signal.SIGTERM, "all"),  # systemd's KillMode=control-group: server, dvc, stage at once too
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_stop_signal_ends_every_process_of_the_run_keeps_outputs_and_says_so(runner, case):
    project, start = runner
    sig, to = CASES[case]
    before = {p: p.stat().st_mtime for p in states(project)}
    proc, mark, err_path = start(case)
    try:
        deadline = time.monotonic() + 600
        # training has started: a resume state this run wrote (a later run first restores the newest one)
        while not [p for p in states(project) if before.get(p) != p.stat().st_mtime]:
            assert proc.poll() is None, err_path.read_text()[-4000:]
            assert time.monotonic() < deadline, "train wrote no resume state within 600 s"
            time.sleep(0.1)
        assert any("flows.stages.train" in p for p in run_processes(mark)), run_processes(mark)
        sent = time.monotonic()
        if to == "all":
            for pid_cmd in run_processes(mark):
                try:
                    os.kill(int(pid_cmd.split()[0]), sig)
                except ProcessLookupError:  # ended between the listing and the signal (a short-lived child)
                    pass
        else:
            (os.killpg if to == "group" else os.kill)(proc.pid, sig)
        code = proc.wait(timeout=60)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    left = run_processes(mark)
    gone_by = sent + 10  # every process of the run ended within 10 s of the signal
    while left and time.monotonic() < gone_by:
        time.sleep(0.2)
        left = run_processes(mark)
    gone = time.monotonic() - sent
    print(
        f"\n{case}: exit {code} {took:.1f} s after the signal; processes of the run left 10 s after the signal: "
        f"{len(left)} (none left {gone:.1f} s after it)"
    )
    for pid_cmd in left:  # a failed case must leave nothing running after it
        try:
            os.kill(int(pid_cmd.split()[0]), signal.SIGKILL)
        except ProcessLookupError:
            pass

    err = err_path.read_text()
    lines = err.rstrip("\n").split("\n")
    assert code == 128 + sig, err[-3000:]
    assert not left, f"still running: {left}"
    assert lines[-1].startswith(f"twinflow run: stopped by {signal.Signals(sig).name}: "), err[-3000:]
    assert sum(line.startswith("twinflow run:") for line in lines) == 1, err[-3000:]
    for noise in ("Traceback", "Crash detected", "Error logging to API", "Encountered exception", "Crashed("):
        assert noise not in err, err[-3000:]
    assert took < 10, f"exit took {took:.1f} s"  # 3 to 4 s here

    log = Path(lines[-1].rsplit("(log: ", 1)[1].rstrip(")"))
    assert log.is_file() and log.parent == project / ".dvc/tmp/twinflow-logs"
    done = stages_done(project)
    assert {"prepare", "validate", "pretrain"} <= set(done) and "train" not in done, sorted(done)
    for stage in ("prepare", "validate", "pretrain"):
        for out in done[stage].get("outs", []):
            assert (project / out["path"]).exists(), (stage, out["path"])
    assert states(project), "train's resume states are gone"
    text = log.read_text()
    if before:  # a run after a stopped one: earlier stages cached, train resumed from the newest state left
        assert "stage pretrain: unchanged, skipped" in text, text[-3000:]
        newest = max(before, key=before.get)
        assert (
            f"Restoring states from the checkpoint path at {newest}" in text
            or f"Restoring states from the checkpoint path at {newest.relative_to(project)}" in text
        ), text[-3000:]
