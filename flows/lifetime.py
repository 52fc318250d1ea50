"""A pipeline's processes die together: a `dvc repro` child, and the stage DVC starts, end when their parent does.

The flow runs each `dvc repro` in a session of its own (dvc_ops.run_streaming: an interrupt is passed to the
whole group and awaited). The flip side: a SIGKILL of `twinflow run` (kill -9 of its process group, the OOM
killer) cannot pass anything on, and without this the orphaned dvc and its stage went on training, holding the
checkout lock, so the rerun was refused as busy instead of resuming. With Linux's parent-death signal the kernel
kills dvc when the thread that started it goes, and the stage (which DVC starts; it asks for the same itself,
flows/stages/__init__.py, when DIE_WITH_PARENT_ENV is set) when dvc goes. Elsewhere than Linux: a no-op.

Imports only the standard library (the stage guard imports it before anything heavy).
"""
from __future__ import annotations

import os
import signal
import sys

# set by run_streaming for the commands it starts; a stage run by hand (no such variable) is left as it is
DIE_WITH_PARENT_ENV = "TWINFLOW_DIE_WITH_PARENT"
_PR_SET_PDEATHSIG = 1


def _prctl():
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

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


def die_with_parent_if_asked() -> None:
    """In a stage: when started by the flow's dvc (DIE_WITH_PARENT_ENV), end with that dvc."""
    if os.environ.get(DIE_WITH_PARENT_ENV) != "1":
        return
    prctl = _prctl()
    if prctl is None:
        return
    prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() == 1:  # dvc is already gone (re-parented to init)
        os._exit(137)
