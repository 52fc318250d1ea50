"""DVC from the pipeline: reproduce one stage, push to the remote, read lineage hashes from dvc.lock.

Stages run as `dvc repro <stage>` subprocesses so the flow runs exactly what `dvc repro` runs: an unchanged
stage is skipped by DVC, and dvc.lock records what each output was made from. Output is streamed line by
line to a callback (the Prefect task logger) while it runs; a failure raises with the stage's own error
line first, classified as transient or not (flows.faults). DVC's Python API is imported where it is asked
(it takes seconds to import; the stages themselves run as subprocesses).
"""

# Lazy imports: dvc
# (slow to load or not in the base install: only the functions that use them load them)
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from flows import lifetime
from flows.faults import RETRY_MARK, StageFailed, TransientFault, is_transient_text
from flows.git import git_remote as pick_remote
from twinflow_core.bounds import load_yaml
from twinflow_core.errors import ConfigError, StorageError
from twinflow_core.redaction import redact

# "didn't change": dvc.lock matches; "is cached": restored from DVC's run-cache (made before, anywhere)
_SKIPPED = re.compile(r"Stage '([^']+)' (?:didn't change, skipping|is cached - skipping run)")
_RAN = re.compile(r"Running stage '([^']+)'")
# Lines that say *that* something failed but not *why*; the stage's own error line is preferred.
_DVC_NOISE = re.compile(r"^(ERROR: failed to reproduce|ERROR: failed to run|Traceback|\s)")
_ERROR_LINE = re.compile(r"(Error|error|ERROR|Exception|FAILED|failed)")


@dataclass
class CommandResult:
    args: list[str]
    seconds: float
    ran: list[str] = field(default_factory=list)  # stages DVC executed
    skipped: list[str] = field(default_factory=list)  # stages DVC found unchanged
    tail: list[str] = field(default_factory=list)


def tool_env() -> dict[str, str]:
    """The environment for DVC and the stage commands it spawns: dvc.yaml says `python -m ...`, which
    must be this interpreter even when the virtual environment is not activated."""
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("DVC_NO_ANALYTICS", "1")
    return env


def _first_error(lines: list[str]) -> str:
    """The most telling error line: the last one that is not DVC's generic wrapper, else DVC's."""
    candidates = [ln.strip() for ln in lines if _ERROR_LINE.search(ln)]
    specific = [ln for ln in candidates if not _DVC_NOISE.match(ln) and not ln.startswith("ERROR: failed to")]
    if specific:
        return specific[-1]
    if candidates:
        return candidates[-1]
    return lines[-1].strip() if lines else "no output"


def run_streaming(
    args: list[str],
    cwd: str | Path,
    log: Callable[[str], None],
    what: str,
    env: dict[str, str] | None = None,
    progress_every_s: float = 10.0,
    pass_fds: tuple[int, ...] = (),
) -> CommandResult:
    """Run a command, sending each output line to `log` as it comes; raise on a non-zero exit.

    Progress bars redraw with carriage returns; only one such redraw every `progress_every_s` seconds
    is logged, so a task log stays readable while still showing that work moves.
    The command runs in a process group of its own: when this process is interrupted (Ctrl-C, or the
    SIGTERM that Prefect turns into an exception), SIGTERM is sent to the whole group (dvc and the
    stage it spawned) and awaited, so no stage goes on writing after its run has stopped. A SIGKILL of this
    process, which cannot be passed on, takes the command and its stage with it (flows.lifetime).
    `pass_fds`: descriptors the command inherits (the checkout lock, workspace.checkout_lock)."""
    start = time.monotonic()
    tail: deque[str] = deque(maxlen=60)
    result = CommandResult(args=args, seconds=0.0)
    env = {**(env or tool_env()), lifetime.DIE_WITH_PARENT_ENV: str(os.getpid())}
    proc = subprocess.Popen(
        args,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        bufsize=0,
        start_new_session=True,
        pass_fds=pass_fds,
        preexec_fn=lifetime.die_with_parent_hook(),
    )
    assert proc.stdout is not None
    buf = b""
    last_progress = 0.0

    def emit(raw: bytes, is_progress: bool) -> None:
        nonlocal last_progress
        line = raw.decode("utf-8", "replace").rstrip()
        if not line:
            return
        if is_progress:
            now = time.monotonic()
            if now - last_progress < progress_every_s:
                return
            last_progress = now
        tail.append(line)
        if m := _SKIPPED.search(line):
            result.skipped.append(m.group(1))
        elif m := _RAN.search(line):
            result.ran.append(m.group(1))
        log(line)

    try:
        # bufsize=0 gives a raw pipe: read() returns whatever has arrived, so lines are logged live.
        while chunk := proc.stdout.read(65536):
            buf += chunk
            while True:
                idx = min((i for i in (buf.find(b"\n"), buf.find(b"\r")) if i >= 0), default=-1)
                if idx < 0:
                    break
                seg, sep, buf = buf[:idx], buf[idx : idx + 1], buf[idx + 1 :]
                emit(seg, is_progress=(sep == b"\r"))
        emit(buf, is_progress=False)
        rc = proc.wait()
    except BaseException:
        # SIGTERM whatever stopped this process, a Ctrl-C included: dvc ignores SIGINT while its stage runs and
        # Lightning winds a fit down gracefully on one (tens of seconds on a busy machine, and nothing it saves is
        # used: resume states are written on their own schedule); on SIGTERM dvc ends at once and the stage with it
        stop_group(proc, signal.SIGTERM)
        raise
    result.seconds = time.monotonic() - start
    result.tail = list(tail)
    if rc != 0:
        lines = result.tail
        reason = _first_error(lines)
        text = "\n".join(lines)
        exited = re.findall(r"exited with (-?\d+)", text)  # the stage's own status, not dvc's 255
        message = f"{what} failed (exit {exited[-1] if exited else rc}): {reason}"
        if is_transient_text(text):
            raise TransientFault(message + RETRY_MARK)
        raise StageFailed(message, int(exited[-1]) if exited else None)
    return result


def stop_group(proc: subprocess.Popen, sig: int, grace_s: float = 30.0) -> None:
    """Signal a command's process group, wait for it, kill it if it will not stop."""
    for how in (sig, signal.SIGKILL):
        try:
            os.killpg(proc.pid, how)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue


class DvcAdviceFilter:
    """Passes `dvc repro` output lines to `log` except DVC's closing advice, which does not apply under the flow:
    "To track the changes with git, run:" with its `git add ...` line, "To enable auto staging, run:" with
    `dvc config core.autostage true`, and "Use `dvc push` to send your updates to remote storage." (the flow
    records the run as a git ref of its own and pushes the outputs itself). Seven lines per stage in every run
    log; each is matched by its exact text, every other line passes."""

    HEADERS = {
        "To track the changes with git, run:": "git add ",  # header -> the start of the line it announces
        "To enable auto staging, run:": "dvc config core.autostage true",
    }
    ALONE = ("Use `dvc push` to send your updates to remote storage.",)

    def __init__(self, log: Callable[[str], None]):
        self.log, self.expect = log, None  # expect: the start of the line an advice header announces

    def __call__(self, line: str) -> None:
        text = line.strip()
        if self.expect is not None:
            expected, self.expect = self.expect, None
            if text.startswith(expected):
                return
        if text in self.HEADERS:
            self.expect = self.HEADERS[text]
            return
        if text not in self.ALONE:
            self.log(line)


def repro_stage(
    stage: str, cwd: str | Path, log: Callable[[str], None], pass_fds: tuple[int, ...] = ()
) -> CommandResult:
    """`dvc repro <stage>`: runs it (and any changed upstream stage) or reports it unchanged."""
    return run_streaming(
        [sys.executable, "-m", "dvc", "repro", stage], cwd, DvcAdviceFilter(log), f"stage '{stage}'", pass_fds=pass_fds
    )


def push(cwd: str | Path, log: Callable[[str], None], remote: str | None = None) -> CommandResult:
    """`dvc push` of every output in dvc.lock to the default (or named) remote. Credentials the remote refuses
    are a StorageError naming it (exit 12, not retried): no retry makes a wrong key right."""
    args = [sys.executable, "-m", "dvc", "push"] + (["-r", remote] if remote else [])
    try:
        result = run_streaming(args, cwd, log, f"dvc push{' -r ' + remote if remote else ''}")
    except StageFailed as err:
        if not _REFUSED.search(str(err)):
            raise
        raise StorageError(
            f"dvc push: the remote {describe_remote(cwd, remote)} refused the credentials "
            f"({_REFUSED.search(str(err)).group(0)}: unknown access key, wrong secret, or no permission "
            "on the bucket); the outputs stay in the local DVC cache, and a rerun with the right "
            "credentials pushes them"
        ) from None
    local_remote = Path(cwd) / ".dvc-remote"  # the default remote (.dvc/config): keep it out of git
    if local_remote.is_dir() and not (local_remote / ".gitignore").exists():
        (local_remote / ".gitignore").write_text("*\n")
    return result


# what S3 (and DVC quoting it) answers to credentials it does not accept
_REFUSED = re.compile(r"InvalidAccessKeyId|SignatureDoesNotMatch|AccessDenied|Forbidden|\b403\b")


def describe_remote(cwd: str | Path, remote: str | None) -> str:
    """ "'team' (s3://bucket/store at http://host:port)": the remote a push goes to (the default when None), for an
    error line; its URL as configured, credentials masked."""
    from dvc.repo import Repo

    try:
        with Repo(str(cwd)) as repo:
            name = remote or repo.config["core"].get("remote") or "(default)"
            conf = repo.config["remote"].get(name, {})
    except Exception:  # noqa: BLE001 - the error line must come out even when the config cannot be read
        return repr(remote or "(default)")
    where = conf.get("url", "?") + (f" at {conf['endpointurl']}" if conf.get("endpointurl") else "")
    return f"{name!r} ({redact(where)})"


def push_ref(cwd: str | Path, ref: str, log: Callable[[str], None], git_remote: str = "") -> str | None:
    """The run's ref to the git remote (flows.git.git_remote), so a clone can fetch it; None when the
    repository has no remote (the ref stays in the local repository, where `twinflow models reproduce`
    finds it). Its DVC outputs went to the DVC remote by `push` just before."""
    remote = pick_remote(Path(cwd), git_remote)
    if remote is None:
        log(f"no git remote: {ref} stays in the local repository")
        return None
    run_streaming(["git", "push", remote, f"{ref}:{ref}"], cwd, log, f"git push {remote} {ref}")
    return remote


def read_lock(cwd: str | Path) -> dict:
    """dvc.lock as a mapping ({} when there is none); a hand-edited one that DVC would not read is a ConfigError
    naming it (DVC itself says so only in its INFO log, and a stage then fails for no visible reason)."""
    lock = Path(cwd) / "dvc.lock"
    if not lock.is_file():
        return {}
    fix = f"restore it (git checkout -- {lock.name}) or delete it to rerun every stage"
    try:
        data = load_yaml(lock.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{lock}: not valid YAML ({str(err).splitlines()[0]}); {fix}") from None
    stages = data.get("stages") if isinstance(data, dict) else None
    if not isinstance(stages, dict) or not all(
        isinstance(e, dict)
        and isinstance(e.get("outs", []) or [], list)
        and all(isinstance(o, dict) and "path" in o for o in e.get("outs", []) or [])
        for e in stages.values()
    ):
        raise ConfigError(f"{lock}: not a DVC lock file (a 'stages' mapping of stages with outs); {fix}")
    return data


def lock_hashes(cwd: str | Path) -> dict[str, dict[str, str]]:
    """{stage: {out path: md5}} from dvc.lock: the lineage of what was evaluated and registered."""
    data = read_lock(cwd)
    hashes: dict[str, dict[str, str]] = {}
    for stage, entry in (data.get("stages") or {}).items():
        outs = {}
        for out in entry.get("outs", []) or []:
            digest = out.get("md5") or out.get("etag") or out.get("hash") or ""
            outs[out["path"]] = str(digest)
        hashes[stage] = outs
    return hashes


def declared_stages(cwd: str | Path) -> dict:
    """dvc.yaml's `stages` mapping, in file order ({} without a dvc.yaml)."""
    path = Path(cwd) / "dvc.yaml"
    if not path.is_file():
        return {}
    return (load_yaml(path.read_text()) or {}).get("stages") or {}


def stage_names(cwd: str | Path) -> list[str]:
    """Stages declared in dvc.yaml, in file order."""
    return list(declared_stages(cwd))
