"""Where a flow run works, so that two runs cannot clash and no run poisons the checkout.

- A run without overrides works in the checkout itself (its outputs, dvc.lock and metrics land there, as
  `make run` and `dvc repro` expect) under an exclusive lock: a second such run is refused at once with
  "another run is using this checkout (pid, started at, run id)". The lock is an flock(2) on
  .dvc/tmp/twinflow-run.lock, so the kernel drops it when its holders die (no stale lock after SIGKILL);
  the `dvc repro` children inherit it, so an orphaned stage still holds it until it ends.
- A run with overrides works in a workspace of its own: a detached `git worktree` of HEAD under
  .dvc/tmp/twinflow-runs/<run> (next to DVC's own `exp run --temp` folders), carrying the checkout's
  uncommitted changes, sharing the checkout's DVC cache and remotes. Its overrides are written into that
  workspace's params.yaml only; the checkout's params.yaml is never written, by any run.

Either way the run ends by saving its workspace as a DVC experiment ref (refs/exps/<baseline>/<name>:
params.yaml, dvc.lock, the uncached outputs, the code that ran), which `dvc exp list/show/apply/push`
understand and `twinflow models reproduce` checks out again. The commit is built with a private index
file, so neither the checkout's index nor its files change.
DVC is imported where a workspace's DVC config is written: it takes seconds to import.
"""

# Lazy imports: configobj, dvc
# (slow to load or not in the base install: only the functions that use them load them)
from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from flows import init_source
from flows.git import WorkspaceError, git
from flows.params import Params
from twinflow_core.errors import USAGE_EXIT, ConfigError, TwinflowError

LOCK_FILE = Path(".dvc/tmp/twinflow-run.lock")
RUNS_DIR = Path(".dvc/tmp/twinflow-runs")
EXP_REF_PREFIX = "refs/exps"


class CheckoutBusy(TwinflowError):
    """Another flow run holds the checkout: refused before anything ran, like a usage error (exit 2)."""

    exit_code = USAGE_EXIT
    kind = "usage"


@dataclass
class Workspace:
    checkout: Path  # the project the run was started from (holds the git repo, cache, MLflow store)
    path: Path  # where the stages run: the checkout, or its own worktree
    isolated: bool
    lock_fd: int | None = None  # the checkout lock, passed to `dvc repro` children (see module doc)


# ---- the checkout lock ----


def _holder(lock_path: Path) -> str:
    try:
        info = json.loads(lock_path.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    alive = ""
    pid = info.get("pid")
    if isinstance(pid, int):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            alive = "; that process is gone but a stage it started still runs"
        except PermissionError:
            pass
    return f"pid {pid or '?'}, started at {info.get('started_at', '?')}, run id {info.get('run_id', '?')}{alive}"


@contextmanager
def checkout_lock(root: Path, run_id: str) -> Iterator[int]:
    """Hold the checkout for one run, or raise CheckoutBusy naming the run that holds it."""
    lock_path = root / LOCK_FILE
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    # a moment's patience: an isolated run copying the checkout's dvc.lock holds it shared for milliseconds
    deadline = time.monotonic() + 3.0
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() < deadline:
                time.sleep(0.1)
                continue
        os.close(fd)
        raise CheckoutBusy(
            f"{root}: another run is using this checkout ({_holder(lock_path)}); wait for it, "
            "or run with overrides (each such run gets a workspace of its own)"
        ) from None
    try:
        info = {"pid": os.getpid(), "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "run_id": run_id}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        yield fd
    finally:
        os.close(fd)  # releases the flock (children that inherited it keep it until they exit)


def wants_isolation(root: Path, parsed: dict, isolate: bool | None = None) -> bool:
    """Whether a run gets a workspace of its own: as asked, else exactly when its params.yaml must differ
    from the checkout's: overrides, or a remote pretrain.init / train.init (params.yaml is pointed at the
    folder it is fetched into, flows.init_source)."""
    if parsed:
        if isolate is False:
            raise ConfigError(
                f"overrides {sorted(parsed)} with isolate=False: overrides are written only into a "
                "workspace of the run's own, never into the checkout's params.yaml"
            )
        return True
    if isolate is not None:
        return bool(isolate)
    current = Params.read(root / "params.yaml").flat()
    return any(init_source.is_remote(current.get(key)) for key in init_source.INIT_KEYS)


def ensure_free(root: Path) -> None:
    """Raise CheckoutBusy now if an in-place run holds the checkout (a cheap check before the flow starts;
    the flow itself takes the lock)."""
    with checkout_lock(root, "(checking)"):
        pass


# ---- a workspace of its own ----


def _uncommitted(root: Path) -> tuple[list[str], list[str]]:
    """(changed or new files to carry, tracked files deleted) in the checkout, .gitignore respected."""
    changed = git(root, "diff", "--name-only", "-z", "HEAD").split("\0")
    untracked = git(root, "ls-files", "-z", "--others", "--exclude-standard").split("\0")
    carry, deleted = [], []
    for rel in filter(None, changed + untracked):
        # lexists: a symlink (an untracked .venv link, a dangling one) is carried as the link it is
        (carry if os.path.lexists(root / rel) else deleted).append(rel)
    return carry, deleted


def _dvc_local_config(checkout: Path, workspace: Path, share_cache: bool = True) -> None:
    """The workspace's .dvc/config.local: the checkout's (credentials stay out of git), plus the checkout's
    cache (one cache: a stage made by either is reused by both; not for a reproduction, which has its own)
    and its local remotes made absolute (a relative remote url would otherwise resolve inside the
    workspace)."""
    from configobj import ConfigObj
    from dvc.config import Config

    resolved = Config(dvc_dir=str(checkout / ".dvc"))
    local = (
        ConfigObj(str(checkout / ".dvc" / "config.local"))
        if (checkout / ".dvc/config.local").is_file()
        else ConfigObj()
    )
    local.filename = str(workspace / ".dvc" / "config.local")
    if share_cache:
        cache_dir = (resolved.get("cache") or {}).get("dir") or str(checkout / ".dvc" / "cache")
        local.setdefault("cache", {})["dir"] = str(Path(cache_dir).resolve())
    for name, remote in (resolved.get("remote") or {}).items():
        url = str(remote.get("url", ""))
        if url and "://" not in url and Path(url).is_absolute():
            local.setdefault(f'remote "{name}"', {})["url"] = url
    local.write()


@contextmanager
def _checkout_quiet(root: Path) -> Iterator[bool]:
    """True while no in-place run holds the checkout (held shared, so none can start meanwhile)."""
    lock_path = root / LOCK_FILE
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            quiet = True
        except BlockingIOError:
            quiet = False
        yield quiet
    finally:
        os.close(fd)


def create_isolated(checkout: Path, name: str, log: Callable[[str], None] = print) -> Workspace:
    """A detached worktree of HEAD with the checkout's uncommitted changes (as `dvc exp run --temp` takes
    them). The checkout's dvc.lock (and so its record of what is made) is carried only while no in-place run
    is writing it; otherwise the committed one is used and DVC's shared cache and run-cache restore what
    was made before."""
    path = checkout / RUNS_DIR / name
    if path.exists():
        raise WorkspaceError(f"{path}: a run workspace of that name exists already")
    path.parent.mkdir(parents=True, exist_ok=True)
    git(checkout, "worktree", "add", "--detach", "--quiet", str(path), "HEAD")
    with _checkout_quiet(checkout) as quiet:
        carry, deleted = _uncommitted(checkout)
        for rel in carry:
            if rel == "dvc.lock" and not quiet:
                log("an in-place run is writing the checkout's dvc.lock: starting from the committed one")
                continue
            (path / rel).parent.mkdir(parents=True, exist_ok=True)
            if (checkout / rel).is_symlink():  # copied as a link, never followed (a link to a folder is no file)
                if os.path.lexists(path / rel):
                    (path / rel).unlink()
                os.symlink(os.readlink(checkout / rel), path / rel)
                continue
            shutil.copy2(checkout / rel, path / rel)
        for rel in deleted:
            if rel != "dvc.lock" or quiet:
                (path / rel).unlink(missing_ok=True)
    _dvc_local_config(checkout, path)
    _checkout_tracked(path, log)
    log(
        f"run workspace: {path} (HEAD {git(checkout, 'rev-parse', '--short', 'HEAD')}"
        f"{f', {len(carry)} uncommitted file(s) carried' if carry else ''})"
    )
    return Workspace(checkout=checkout, path=path, isolated=True)


def _checkout_tracked(path: Path, log: Callable[[str], None]) -> None:
    """The data of the workspace's `dvc add`ed folders (a pipeline folder models/X.dvc, a fetched init), from
    the shared cache: a worktree holds the .dvc files but not what they track, which the stages read."""
    tracked = sorted(
        rel
        for rel in git(path, "ls-files", "-co", "--exclude-standard", "*.dvc").splitlines()
        if not rel.startswith(".dvc/") and (path / rel).is_file()
    )
    if not tracked:
        return
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", "checkout", "--quiet", *tracked], cwd=path, capture_output=True, text=True
    )
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        raise WorkspaceError(
            f"{path}: dvc checkout {' '.join(tracked)}: {(lines or ['no output'])[-1].strip()} "
            f"(is the data in the DVC cache? `dvc add` it in the checkout, or `dvc pull`)"
        )
    log(f"run workspace: checked out {', '.join(t.removesuffix('.dvc') for t in tracked)} from the DVC cache")


def remove_isolated(ws: Workspace) -> None:
    if ws.isolated and ws.path.exists():
        git(ws.checkout, "worktree", "remove", "--force", str(ws.path), check=False)
        shutil.rmtree(ws.path, ignore_errors=True)
    git(ws.checkout, "worktree", "prune", check=False)


# ---- the run's git ref ----


def ref_name(name: str) -> str:
    """A DVC experiment name from a run name: git-ref safe."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "run"


def save_run_ref(path: Path, name: str, message: str) -> tuple[str, str]:
    """Commit the workspace (tracked and new files, .gitignore respected) on top of HEAD as the DVC
    experiment ref refs/exps/<baseline[:2]>/<baseline[2:]>/<name>; returns (ref, commit). A private index
    file is used, so the workspace's own index, HEAD and files are left as they are."""
    baseline = git(path, "rev-parse", "HEAD")
    ref = f"{EXP_REF_PREFIX}/{baseline[:2]}/{baseline[2:]}/{ref_name(name)}"
    git_dir = Path(git(path, "rev-parse", "--absolute-git-dir"))
    index = git_dir / f"twinflow-index-{os.getpid()}-{ref_name(name)}"
    env = {"GIT_INDEX_FILE": str(index)}
    try:
        git(path, "read-tree", "HEAD", env=env)
        git(path, "add", "-A", ".", env=env)
        tree = git(path, "write-tree", env=env)
        commit = git(path, "commit-tree", tree, "-p", baseline, "-m", message, env={**env, **_identity(path)})
    finally:
        index.unlink(missing_ok=True)
    git(path, "update-ref", ref, commit)
    return ref, commit


def _identity(path: Path) -> dict[str, str]:
    """An author for the run commit when git has none configured (a CI or worker account)."""
    if git(path, "config", "user.email", check=False):
        return {}
    return {
        "GIT_AUTHOR_NAME": "twinflow",
        "GIT_AUTHOR_EMAIL": "twinflow@localhost",
        "GIT_COMMITTER_NAME": "twinflow",
        "GIT_COMMITTER_EMAIL": "twinflow@localhost",
    }


# ---- a registered run, checked out again ----


def find_ref(sources: list[str], ref: str) -> str | None:
    """The first repository (path or URL) of `sources` that has `ref` (`git ls-remote`), else None."""
    for source in sources:
        proc = subprocess.run(
            ["git", "ls-remote", source, ref],
            capture_output=True,
            text=True,
            env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
        )
        if proc.returncode == 0 and proc.stdout.strip():
            return source
    return None


def restore_run(
    source: str,
    ref: str,
    commit: str,
    dest: Path,
    log: Callable[[str], None] = print,
    dvc_config_from: Path | None = None,
) -> Path:
    """`dest` holding the run's commit: cloned from `source` (a path or URL of a repository that has the
    ref) when it is not a repository yet, the ref fetched, the commit checked out (detached). With
    `dvc_config_from` (a local checkout), its DVC remotes (local paths made absolute) and config.local
    are used, so `dvc pull` there reads the remote the run was pushed to."""
    dest = Path(dest).resolve()
    if dest.exists() and any(dest.iterdir()):
        if not (dest / ".git").exists():
            raise WorkspaceError(f"{dest}: exists, is not empty and is not a git repository")
        if git(dest, "status", "--porcelain", "--untracked-files=no"):
            raise WorkspaceError(f"{dest}: has uncommitted changes; commit or discard them first")
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)
        git(dest.parent, "clone", "--quiet", "--no-checkout", source, str(dest))
    git(dest, "fetch", "--quiet", source, f"+{ref}:{ref}")
    got = git(dest, "rev-parse", ref)
    if got != commit:
        raise WorkspaceError(f"{source}: {ref} is at {got[:10]}, the version names {commit[:10]}")
    git(dest, "checkout", "--quiet", "--detach", commit)
    if dvc_config_from is not None:
        _dvc_local_config(dvc_config_from, dest, share_cache=False)
    log(f"{dest}: {ref} checked out ({commit[:10]})")
    return dest
