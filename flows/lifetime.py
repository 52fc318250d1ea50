"""A pipeline's processes die together: a `dvc repro` child, and the stage DVC starts, end when the flow does.

The flow runs each `dvc repro` in a session of its own (dvc_ops.run_streaming: an interrupt is passed to the
whole group and awaited). The flip side: a SIGKILL of `twinflow run` (kill -9 of its process group, the OOM
killer) cannot pass anything on, and without this the orphaned dvc and its stage went on training, holding the
checkout lock, so the rerun was refused as busy instead of resuming.

- dvc: Linux's parent-death signal, set in the forked child (die_with_parent_hook), kills it when the thread of the
  flow that started it goes.
- the stage: DVC starts it through `$SHELL -c`, and whether the stage is then dvc's child depends on the shell:
  bash execs a lone command, dash (Debian's /bin/sh, what DVC uses when SHELL is unset, as under many CI runners)
  forks it, and a parent-death signal of the stage then watches the shell, which outlives dvc. So the stage
  (flows/stages/__init__.py, when DIE_WITH_PARENT_ENV holds the flow's pid) watches every process between itself
  and the flow, and kills itself when any of them ends: whichever shell, launcher or wrapper stands in between.

The other way round, a stop signal to `twinflow run` (Ctrl-C, SIGTERM to its pid or to its process group, as `timeout`
and systemd send it): `raise_on_stop_signals` turns the first one into `Interrupted`, which unwinds the flow (each
`dvc repro`'s group is sent SIGTERM and awaited, dvc_ops.run_streaming) so that the command can stop what it started and
exit 128 + the signal's number with one line. Later signals are ignored while it does: a second Ctrl-C must not cut
that cleanup short and leave a stage or a server behind.

Elsewhere than Linux: the parent-death parts are a no-op. Imports only the standard library (the stage guard
imports it before anything heavy).
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import sys
import threading
import time

# set by run_streaming, to the flow's pid, for the commands it starts; a stage run by hand (no such variable) is
# left as it is
DIE_WITH_PARENT_ENV = "TWINFLOW_DIE_WITH_PARENT"
_PR_SET_PDEATHSIG = 1


def _prctl():
    if not sys.platform.startswith("linux"):
        return None

    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def die_with_parent_hook():
    """A preexec_fn for subprocess.Popen (None off Linux): the child gets SIGKILL when this thread ends.

    libc's prctl is looked up here, in the parent, so the forked child only makes the call (no import, no lock)."""
    prctl = _prctl()
    if prctl is None:
        return None
    parent = os.getpid()

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the call: nobody is left to deliver the signal
            os._exit(137)

    return hook


def _parent_of(pid: int) -> int | None:
    try:
        stat = open(f"/proc/{pid}/stat", "rb").read()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ')'
    return int(stat.rsplit(b")", 1)[1].split()[1])


def _ancestors_up_to(flow: int) -> list[int]:
    """The pids from this process's parent up to `flow`; just the parent when `flow` is not an ancestor (a stage
    started on another node of a multi-node launch, say, where the flow's pid means nothing)."""
    chain, pid = [], os.getppid()
    while pid > 1 and len(chain) < 64:
        chain.append(pid)
        if pid == flow:
            return chain
        pid = _parent_of(pid)
        if pid is None:
            break
    return [os.getppid()]


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)  # what the parent-death signal does: no cleanup, as under kill -9


def _watch(pids: list[int]) -> None:
    """A daemon thread that kills this process when any of `pids` ends (a pidfd per process: no polling, no
    mistaking a recycled pid; where pidfds are missing, a check every half second)."""

    try:
        fds = [os.pidfd_open(pid) for pid in pids]
    except ProcessLookupError:  # one of them has ended already
        _die()
    except (AttributeError, OSError):  # no pidfd (Python < 3.9, Linux < 5.3): poll

        def poll() -> None:
            while all(_parent_of(pid) is not None for pid in pids):
                time.sleep(0.5)
            _die()

        threading.Thread(target=poll, name="die-with-flow", daemon=True).start()
        return

    def wait() -> None:
        select.select(fds, [], [])  # a pidfd turns readable when its process ends
        _die()

    threading.Thread(target=wait, name="die-with-flow", daemon=True).start()


def die_with_parent_if_asked() -> None:
    """In a stage: when started under the flow's dvc (DIE_WITH_PARENT_ENV holds the flow's pid), end with the flow
    and with every process between (dvc, a shell)."""
    flow = os.environ.get(DIE_WITH_PARENT_ENV, "")
    prctl = _prctl() if flow.isdigit() else None
    if prctl is None:
        return
    prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)  # the direct parent: at once, from the kernel
    if os.getppid() == 1:  # the parent is already gone (re-parented to init)
        _die()
    _watch(_ancestors_up_to(int(flow)))


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_received: list[int] = []  # the stop signal this process got first (raise_on_stop_signals)


class Interrupted(KeyboardInterrupt):
    """A stop signal received by `twinflow run`. A KeyboardInterrupt, so every library that lets a Ctrl-C through
    (Prefect records the run as crashed, the stage's `dvc repro` group is sent SIGTERM) does the same for SIGTERM;
    `.signal` is its number, as Prefect's own TerminationSignal names it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signal = signum


def raise_on_stop_signals(on_first=None) -> None:
    """From now on the first SIGINT, SIGTERM or SIGHUP raises `Interrupted` in the main thread (after
    `on_first(signum)`, e.g. muting the console); the ones after it are ignored. Prefect's flow engine puts its own
    SIGTERM handler in front during a flow run and, once it has recorded the crash, sends the signal again to the
    handler it replaced: this one."""

    def handler(signum, frame) -> None:
        if _received:
            return
        _received.append(signum)
        if on_first is not None:
            on_first(signum)
        raise Interrupted(signum)

    for sig in STOP_SIGNALS:
        if signal.getsignal(sig) is not signal.SIG_IGN:  # ignored by whoever started us (nohup, `cmd &`): stays so
            signal.signal(sig, handler)


def stop_signal(exc: BaseException | None = None) -> int | None:
    """The stop signal that is ending this process: the first one `raise_on_stop_signals` saw, else the one `exc`
    carries (Interrupted, Prefect's TerminationSignal, a plain KeyboardInterrupt: SIGINT); None when there was none."""
    if _received:
        return _received[0]
    sig = getattr(exc, "signal", None)
    if isinstance(sig, int):
        return sig
    return int(signal.SIGINT) if isinstance(exc, KeyboardInterrupt) else None


def ignore_stop_signals() -> None:
    """Stop signals ignored from now on (a process that is only cleaning up before it exits)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
