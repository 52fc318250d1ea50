"""The watchdog behind `twinflow run`'s stop signals (flows/lifetime.py raise_on_stop_signals): when the unwinding
after the first signal hangs (the main thread waits on something that never comes), the command still ends within
seconds of the signal, exit 128 + the signal's number, with its one closing line naming the run's log; when the
unwinding finishes in time, the watchdog stays silent and the unwinding's own line is the only one.

The command's own code is used (flows.commands.run's closing line and watchdog end) in a child process that stands
in for a run whose unwinding hangs or does not; the real runs are tests/test_pipeline_signals.py."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import pytest

CHILD = textwrap.dedent(
    """
    import signal, sys, threading, time
    from pathlib import Path
    from flows import lifetime
    from flows.commands import run

    log = Path(sys.argv[2])
    lifetime.raise_on_stop_signals(on_stuck=lambda sig: run._stuck(sig, log), grace_s=1.0)
    print("ready", flush=True)
    try:
        time.sleep(60)
    except lifetime.Interrupted as exc:
        if sys.argv[1] == "hang":
            threading.Event().wait()  # the unwinding never finishes
        sys.exit(run._closing_line(f"twinflow run: stopped by {signal.Signals(exc.signal).name}: unwound", 130))
    """
)


@pytest.mark.parametrize("unwinding", ["hang", "finishes"])
def test_a_hung_unwinding_still_ends_the_run_within_seconds_with_one_line(tmp_path, unwinding):
    log = tmp_path / "run.log"
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, unwinding, str(log)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "ready"
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    took = time.monotonic() - sent
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 130, err
    assert len(lines) == 1 and lines[0].startswith("twinflow run: stopped by SIGINT: "), err
    if unwinding == "hang":
        assert "did not wind down" in lines[0] and str(log) in lines[0], lines[0]
        assert 1.0 <= took < 10, took
    else:
        assert lines[0].endswith("unwound"), lines[0]
        time.sleep(1.5)  # past the watchdog's grace: it stayed silent (the process is gone, nothing more printed)
