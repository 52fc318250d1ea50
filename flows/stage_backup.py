"""A stage that fails leaves its outputs as they were before it ran.

`dvc repro <stage>` deletes a stage's outputs before it runs the command (that is how DVC knows what the command
made), and writes dvc.lock only once the command succeeds. So a stage that fails, from a user's input it trips
over or part-way through, leaves a checkout without outputs that git tracks (reports/data/<name>/samples.png,
validation.md, metrics/eval.json) or that dvc.lock still names (data/prepared/<name>, checkpoints/...): `git status`
shows them deleted and `dvc status` shows them missing.

Before each `dvc repro <stage>` the flow takes a snapshot of every declared output (hard links under .dvc/tmp, so it
costs no copy of the data; a file system without hard links gets copies). DVC unlinks an output before the command
runs and the command writes new files, so a snapshot's links keep the old contents whatever the command does. After
a failure, each stage whose dvc.lock entry did not change (it did not complete) gets its outputs back: the new,
partial ones are removed and the snapshot is moved into place; an output that did not exist before is removed. A
stage that completed in the same `dvc repro` (an upstream one) keeps what it made, as dvc.lock records it. Checking
everything up front cannot see a corrupt image or a stage that dies mid-way, and a stage that writes into a
temporary folder would need every stage command (and `dvc repro` typed by hand) to change; a snapshot covers any
failure of any stage, through the flow.

A SIGKILL of the flow between the snapshot and the restore leaves the snapshot in .dvc/tmp/twinflow-stage-backup/.
"""

# Lazy imports: dvc
# (slow to load or not in the base install: only the functions that use them load them)
from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from flows.dvc_ops import read_lock

BACKUP_DIR = Path(".dvc/tmp/twinflow-stage-backup")


def declared_outputs(root: Path) -> dict[str, list[str]]:
    """{stage name as dvc.lock names it: [output paths relative to root]} for every stage dvc.yaml declares,
    parameters and matrices resolved (DVC's own reading of dvc.yaml)."""
    from dvc.repo import Repo

    outs: dict[str, list[str]] = {}
    with Repo(str(root)) as repo:
        for stage in repo.index.stages:
            paths = []
            for out in stage.outs:
                try:
                    paths.append(str(Path(str(out.fs_path)).resolve().relative_to(root.resolve())))
                except ValueError:  # an output outside the project: not this checkout's to restore
                    continue
            outs[getattr(stage, "name", None) or stage.addressing] = paths  # dvc.lock's key, wherever cwd is
    return outs


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _snapshot(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_symlink():
        os.symlink(os.readlink(src), dst)
    elif src.is_dir():
        shutil.copytree(src, dst, symlinks=True, copy_function=_link_or_copy)
    else:
        _link_or_copy(str(src), str(dst))


def _lock_entries(root: Path) -> dict:
    try:
        return dict(read_lock(root).get("stages") or {})
    except Exception:  # noqa: BLE001 - an unreadable lock: DVC says so; every stage counts as not completed
        return {}


@contextmanager
def outputs_kept_on_failure(root: str | Path, log: Callable[[str], None]) -> Iterator[None]:
    """Run the body (a `dvc repro`); if it raises, every stage that did not complete gets back the outputs it had."""
    root = Path(root)
    try:
        outputs = declared_outputs(root)
    except Exception as err:  # noqa: BLE001 - a dvc.yaml DVC cannot read: `dvc repro` reports it itself
        log(f"outputs not snapshotted ({type(err).__name__}): dvc repro reports the problem")
        yield
        return
    backup = root / BACKUP_DIR / uuid.uuid4().hex[:12]
    existed: dict[str, bool] = {}
    try:
        for paths in outputs.values():
            for rel in paths:
                src = root / rel
                existed[rel] = src.exists() or src.is_symlink()
                if existed[rel] and not (backup / rel).exists():
                    _snapshot(src, backup / rel)
        lock_before = _lock_entries(root)
        try:
            yield
        except BaseException:
            lock_after = _lock_entries(root)
            restored = []
            for stage, paths in outputs.items():
                if stage in lock_after and lock_after.get(stage) != lock_before.get(stage):
                    continue  # completed in this call: dvc.lock records what it made
                for rel in paths:
                    if _restore(root / rel, backup / rel, existed[rel]):
                        restored.append(rel)
            if restored:
                log(f"outputs restored as they were before the stage ran: {', '.join(restored)}")
            raise
    finally:
        shutil.rmtree(backup, ignore_errors=True)
        try:
            backup.parent.rmdir()  # the last snapshot gone: no empty folder left behind
        except OSError:
            pass


def _untouched(path: Path, saved: Path) -> bool:
    """Whether the output is still what the snapshot holds: the same files, each the very file the snapshot links
    (a skipped stage, or one that failed before DVC removed its outputs). A copied snapshot never counts."""

    def same(a: Path, b: Path) -> bool:
        try:
            return a.is_file() and not a.is_symlink() and os.path.samefile(a, b)
        except OSError:
            return False

    if path.is_dir() and saved.is_dir() and not path.is_symlink():
        now = sorted(p.relative_to(path) for p in path.rglob("*"))
        if now != sorted(p.relative_to(saved) for p in saved.rglob("*")):
            return False
        return all(same(path / rel, saved / rel) for rel in now if not (path / rel).is_dir())
    return same(path, saved)


def _restore(path: Path, saved: Path, existed: bool) -> bool:
    """The output as it was: True when something had to change."""
    if existed:
        if _untouched(path, saved):
            return False
        _remove(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(saved, path)
        return True
    if path.exists() or path.is_symlink():
        _remove(path)
        return True
    return False
