"""The files a generator folder is made of: names confined to their folder, plain files only, safetensors headers
that give the same bytes for the same weights, weights that are all finite. Every generator format and every
fetch (local folder, S3, MLflow artifacts) goes through these checks. Light to import (no torch): the command
line's up-front checks use the name checks."""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors import safe_open

from twinflow_core.errors import CheckpointError


def sort_safetensors_metadata(path: Path) -> None:
    """The header of a safetensors file with its __metadata__ keys sorted, so that the same weights give the same
    bytes. safetensors writes the metadata from a Rust HashMap whose order changes from one save to the next
    (two keys: half the time), and model.safetensors is a DVC output that reruns must leave bitwise equal.
    The header keeps its length: the same JSON in another order, padded with spaces as safetensors pads it."""
    with open(path, "r+b") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        meta = header.get("__metadata__")
        if not meta:
            return
        header["__metadata__"] = dict(sorted(meta.items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) <= size:
            f.seek(8)
            f.write(text.ljust(size, b" "))


def non_finite_tensor(state: dict) -> str | None:
    """The name of the first floating-point tensor of `state` holding a NaN or an infinity, else None."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(tensor.isfinite().all()):
            return name
    return None


def check_finite_weights(weights, state: dict | None = None) -> None:
    """CheckpointError when a generator's weights are not all finite: a NaN model draws NaN images (black or
    noise), scores as garbage, and must not be trained on, evaluated, registered or sampled."""
    if state is None:  # one tensor at a time: a 20B transformer is not loaded whole to be checked
        try:
            with safe_open(str(weights), framework="pt") as f:
                name = next((k for k in f.keys() if non_finite_tensor({k: f.get_tensor(k)})), None)
        except Exception as err:  # noqa: BLE001 - SafetensorsError, OSError: as load_generator says it
            first = (str(err).splitlines() or [type(err).__name__])[0]
            raise CheckpointError(f"{weights}: not a readable safetensors file ({first})") from None
    else:
        name = non_finite_tensor(state)
    if name is not None:
        raise CheckpointError(
            f"{weights}: tensor {name!r} holds NaN or infinite values; this generator is "
            f"unusable (retrain it, or pick another)"
        )


def member_name(rel, where: str) -> str:
    """`rel` (an S3 key below a prefix, an MLflow artifact path, a file name a manifest lists) if it names a file
    inside its folder: relative, "/"-separated, no empty, "." or ".." part, no backslash or NUL. Anything else is
    refused (CheckpointError naming `where`), whatever the folder holds: a remote source writes only below it."""
    shown = repr(rel)[:120]
    if not isinstance(rel, str) or not rel:
        raise CheckpointError(f"{where}: an empty file name {shown}; refused (nothing was written)")
    if rel.startswith("/") or "\\" in rel or "\x00" in rel or any(p in ("", ".", "..") for p in rel.split("/")):
        raise CheckpointError(
            f"{where}: file name {shown} would land outside its folder (an absolute path, a "
            "'..', '.' or empty part, or a backslash); refused, nothing was written"
        )
    return rel


def safe_join(root, rel, where: str) -> Path:
    """`root / rel` for a remote file name `rel`, refused (CheckpointError) unless it stays inside `root`: the name
    passes member_name and no folder on the way (`root` itself included) is a symbolic link."""
    root = Path(root)
    target = root / member_name(rel, where)
    parts = rel.split("/")
    for node in [root, *(root.joinpath(*parts[:n]) for n in range(1, len(parts)))]:
        if node.is_symlink():
            raise CheckpointError(f"{where}: {node} is a symbolic link; refused, nothing was written through it")
    if not target.resolve().is_relative_to(root.resolve()):  # a belt to the braces above
        raise CheckpointError(f"{where}: file name {rel!r} would land outside {root}; refused")
    return target


def no_symlinks(folder, where: str) -> None:
    """A CheckpointError naming the first symbolic link under the local folder `folder` (a fetched or downloaded
    generator holds plain files: a link would copy whatever it points at, ~/.aws or a key, into the checkpoint)."""
    for top, dirs, files in os.walk(folder):
        for name in sorted(dirs + files):
            path = Path(top) / name
            if path.is_symlink():
                rel = path.relative_to(folder).as_posix()
                raise CheckpointError(
                    f"{where}/{rel}: a symbolic link (to {os.readlink(path)}); a generator "
                    "folder must hold plain files; refused, nothing was fetched"
                )
