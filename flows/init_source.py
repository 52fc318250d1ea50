"""Where a training stage's `init` checkpoint comes from: a local folder, `s3://bucket/prefix`, or MLflow.

    pretrain.init / train.init = checkpoints/base                  a local generator folder (the default)
                               = s3://bucket/runs/base              model.json + model.safetensors under a prefix
                               = models:/twinflow-shapes@champion   a registered version (any models:/ or runs:/ URI)

dvc.yaml lists `${train.init}` as a dependency, and DVC can only hash what it can read, so a remote init is
fetched first into `checkpoints/<stage>-init/` (git-ignored) and the stage runs from there; `source.json`
beside the weights names the URI and the weights' sha256. The pipeline (`twinflow run train.init=URI`)
fetches before `dvc repro` and writes the local folder into params.yaml, so dvc.lock records what was trained
from; the stage entry points (`python -m flows.stages.train --set train.init=URI`) fetch the same way.
The run key of the stage hashes the weights, not the URI: the same weights from another place are the same run.
The pipeline then puts the fetched folder under DVC (`track`: checkpoints/<stage>-init.dvc, weights in the cache),
so the run's git ref names it and `dvc push` sends it with the run's outputs: `twinflow models reproduce` pulls the
very weights a version was trained from (clean `dvc status`), even after an alias has moved or the URI is gone.

Under a multi-process launch (fetch_for_launch) every rank starts at once, on one node or many: local rank 0 of
each node fetches, under a file lock, into a folder of that node (checkpoints/<stage>-init-node<N> when the
launch spans nodes, so a checkout on shared storage is not written by two nodes), then writes a marker naming
the launch; the other local ranks wait for that marker (or for rank 0's failure marker) before they read it.

MLflow, and torch and numpy with the generator loader, are imported where a checkpoint is fetched: they take seconds to
import, and the command line's up-front checks import this module for `is_remote` alone.
"""

# Lazy imports: mlflow, numpy, torch
# (slow to load or not in the base install: only the functions that use them load them)
from __future__ import annotations

import fcntl
import json
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from flows import dvc_ops, tracking
from flows.faults import TransientFault
from twinflow_core.errors import DataError, TrackingError
from twinflow_core.files import member_name, no_symlinks

MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")
INIT_KEYS = ("pretrain.init", "train.init")


def is_remote(ref) -> bool:
    return isinstance(ref, str) and ref.startswith(("s3://", *MLFLOW_SCHEMES))


def local_folder(stage_out: str | Path, stage: str) -> Path:
    """Where a remote init of `stage` is fetched: beside the stage's output (checkpoints/<stage>-init)."""
    return Path(stage_out).parent / f"{stage}-init"


def check_artifact_names(ref: str) -> int:
    """Every artifact under the MLflow URI `ref` named inside it, checked before a byte is downloaded: a name that
    would land outside the download folder (a '..' or absolute path, as a crafted S3 key lists) and, for a store
    on this machine's disk, a symbolic link anywhere in it (a download would copy what it points at) are refused
    with a CheckpointError (twinflow_core.files.member_name / no_symlinks). Returns the number of files."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    repo = get_artifact_repository(ref)
    store = getattr(repo, "repo", repo)  # models:/ and runs:/ resolve to the store that holds the files
    local = getattr(store, "artifact_dir", None)
    if local and Path(local).is_dir():
        no_symlinks(local, ref)
    count, pending = 0, [None]
    while pending:
        path = pending.pop()
        for info in repo.list_artifacts(path):
            member_name(info.path, f"{ref}: the MLflow artifact")
            if info.is_dir:
                pending.append(info.path)
            else:
                count += 1
    return count


def _from_mlflow(ref: str, dest: Path, tracking_uri: str) -> None:
    """Download the MLflow artifact `ref` and copy the generator folder inside it (the registered pyfunc model
    keeps it as the artifact `checkpoint`) into `dest`."""
    from twinflow_core.loader import fetch_generator

    try:
        tracking.check_reachable(tracking_uri)
    except TransientFault:
        raise TransientFault(
            f"init {ref}: the MLflow tracking server {tracking_uri} is unreachable; nothing was "
            "fetched or trained: run again once it is back"
        ) from None
    tracking.configure(tracking_uri)
    import mlflow
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory(prefix="twinflow-init-") as tmp:
        try:
            check_artifact_names(ref)
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=ref, dst_path=tmp))
        except MlflowException as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise TrackingError(f"init {ref}: not found in the MLflow store {tracking_uri} ({first})") from None
        metas = sorted(local.rglob("model.json")) if local.is_dir() else []
        if not metas:
            raise DataError(f"init {ref}: the MLflow artifact holds no generator checkpoint (model.json)")
        fetch_generator(str(metas[0].parent), dest)


def fetch(ref: str, dest: Path, tracking_uri: str | None = None) -> Path:
    """Fetch the generator checkpoint `ref` into `dest` and write dest/source.json; returns `dest`."""
    from twinflow_core.data.prepared import file_sha256
    from twinflow_core.loader import WEIGHTS, fetch_generator

    dest = Path(dest)
    if ref.startswith("s3://"):
        fetch_generator(ref, dest)
    elif ref.startswith(MLFLOW_SCHEMES):
        if not tracking_uri:
            raise DataError(f"init {ref}: an MLflow URI needs a tracking URI (set MLFLOW_TRACKING_URI)")
        _from_mlflow(ref, dest, tracking_uri)
    else:
        raise DataError(f"init {ref}: not a remote checkpoint (expected s3://, models:/ or runs:/)")
    # a registered latent version has no model.safetensors: its model.json lists every file's sha256
    pinned = dest / WEIGHTS if (dest / WEIGHTS).is_file() else dest / "model.json"
    source = {"uri": ref, "sha256": file_sha256(pinned)}
    (dest / "source.json").write_text(json.dumps(source, indent=1) + "\n")
    return dest


def localise(values: dict, root: Path, tracking_uri: str | None, log=print) -> dict:
    """`values` (flat params: `<stage>.init` and `<stage>.out` keys) with every remote init fetched and replaced
    by its local folder, a path relative to `root` as params.yaml paths are."""
    out = dict(values)
    for key in INIT_KEYS:
        ref = out.get(key)
        if is_remote(ref):
            stage = key.split(".")[0]
            rel = local_folder(out.get(f"{stage}.out") or f"checkpoints/{stage}", stage)
            log(f"{key}: fetching {ref} into {rel}")
            fetch(ref, Path(root) / rel, tracking_uri)
            out[key] = str(rel)
    return out


def track(root: Path, rel: str | Path, log=print) -> Path:
    """`dvc add` the fetched init folder `rel` in the project `root`: <rel>.dvc beside it (kept in git by the
    run's ref; the folder itself stays git-ignored) and its files in the DVC cache, pushed with the run."""
    dvc_ops.run_streaming([sys.executable, "-m", "dvc", "add", "--quiet", str(rel)], root, log, f"dvc add {rel}")
    return Path(root) / f"{rel}.dvc"


@contextmanager
def _locked(path: Path):
    """An exclusive advisory lock on `path` (two launches on one checkout fetch one after the other)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _markers(dest: Path) -> tuple[Path, Path]:
    return dest.parent / f".{dest.name}.done", dest.parent / f".{dest.name}.failed"


def fetch_for_launch(
    ref: str, dest: Path, tracking_uri: str | None, launch, timeout_s: float = 3600.0, poll_s: float = 0.2
) -> Path:
    """`ref` fetched once per node of `launch` (twinflow_core.training.launch.Launch); returns the local folder
    every rank of this node reads. Local rank 0 fetches; the others wait for its marker of this launch."""
    dest = Path(dest)
    if launch.num_nodes > 1:
        dest = dest.with_name(f"{dest.name}-node{launch.node_rank}")
    done, failed = _markers(dest)
    if launch.local_rank == 0:
        with _locked(dest.parent / f".{dest.name}.lock"):
            done.unlink(missing_ok=True)
            failed.unlink(missing_ok=True)
            try:
                fetch(ref, dest, tracking_uri)
            except Exception as err:
                failed.write_text(json.dumps({"launch": launch.launch_id, "error": str(err)}))
                raise
            done.write_text(json.dumps({"launch": launch.launch_id, "uri": ref}))
        return dest
    deadline = time.monotonic() + timeout_s
    while True:
        for marker in (done, failed):
            try:
                seen = json.loads(marker.read_text())
            except (OSError, ValueError):  # absent, or being written
                continue
            if seen.get("launch") != launch.launch_id:
                continue  # left by an earlier launch
            if marker is failed:
                raise DataError(f"init {ref}: local rank 0 could not fetch it: {seen.get('error')}")
            return dest
        if time.monotonic() > deadline:
            raise DataError(
                f"init {ref}: local rank {launch.local_rank} waited {timeout_s:.0f} s for local rank 0 "
                f"to fetch it into {dest}; nothing arrived (is rank 0 of this node running?)"
            )
        time.sleep(poll_s)
