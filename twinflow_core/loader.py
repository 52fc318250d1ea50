"""The one door to a generator folder: which format it is, loading it, fetching it.

Every generator folder holds a `model.json` whose "format" names its kind; FORMATS says, per kind, how to load
it, which files a fetch copies and how a fetched copy is checked. A folder of any other format (or none) is read
as the in-house format, whose reader names what is wrong with it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from twinflow_core.adapters import generator_files, pipeline
from twinflow_core.data.imagefolder import Folder
from twinflow_core.errors import CheckpointError
from twinflow_core.files import no_symlinks, safe_join
from twinflow_core.generator import Generator
from twinflow_core.nets import generator as nets

META, WEIGHTS = nets.META, nets.WEIGHTS  # the names every format shares (generator_files.py uses the same two)
NET_FORMAT, LATENT_FORMAT = nets.FORMAT, generator_files.FORMAT


@dataclass(frozen=True)
class Format:
    load: Callable[..., Generator]  # (folder, device) -> the generator
    needs: tuple[str, ...]  # files a folder of this format cannot be without
    fetch_all: bool  # a fetch copies every file of the folder (else only `needs`)
    check: Callable[[Path, str], None]  # (fetched folder, where it came from): complete and readable


FORMATS: dict[str, Format] = {
    NET_FORMAT: Format(nets.load_net_generator, (META, WEIGHTS), False, lambda folder, where: nets.read_meta(folder)),
    # a diffusers pipeline folder, or a registered version's transformer or adapter and its base's reference
    # (without model.safetensors): all of it, checked against model.json's hashes
    LATENT_FORMAT: Format(pipeline.load_latent_generator, (META,), True, generator_files.check_generator_files),
}


def generator_format(directory) -> str | None:
    """The "format" model.json in `directory` names, or None (no model.json, unreadable, no format)."""
    path = Path(directory) / META
    try:
        meta = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    name = meta.get("format") if isinstance(meta, dict) else None
    return name if isinstance(name, str) else None


def is_latent(directory) -> bool:
    """A latent generator (a diffusers pipeline folder, or a registered version of one)."""
    return generator_format(directory) == LATENT_FORMAT


def _format(directory) -> Format:
    return FORMATS.get(generator_format(directory), FORMATS[NET_FORMAT])


def load_generator(directory, device: str | torch.device = "cpu") -> Generator:
    return _format(directory).load(directory, device)


def fetch_generator(url: str, dest, endpoint_url: str | None = None, storage_options: dict | None = None) -> Path:
    """Copy the generator checkpoint at `url` (a local folder or s3://bucket/prefix) into the folder `dest`.

    The files land in a sibling `.partial` folder first and replace `dest` only once all are in and the copy
    reads as a generator: an interrupted or failed fetch leaves an earlier `dest` as it was.
    Every name under the source is checked before a byte is written (safe_join: no key that would land outside
    the folder; no symbolic link in a local source), so a hostile bucket is refused whole.
    S3 access (endpoint, credentials, one-line errors naming bucket or object) is the image-folder reader's."""
    dest = Path(dest)
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        if not url.startswith("s3://"):
            if not Path(url).is_dir():
                raise CheckpointError(f"generator checkpoint {url}: not a directory")
            no_symlinks(url, url.rstrip("/"))
        folder = Folder(url, endpoint_url, storage_options)
        # a key ending in "/" (the prefix itself too: "") is a folder marker some tools create: no file to copy
        files = {name for name in folder.files() if name and not name.endswith("/")}
        for name in sorted(files):
            safe_join(partial, name, f"generator checkpoint {url}")
        if META in files:
            (partial / META).write_bytes(next(folder.read_many([META]))[1])
        kind = _format(partial)
        missing = [name for name in kind.needs if name not in files]
        if missing:
            raise CheckpointError(
                f"generator checkpoint {url}: missing {', '.join(missing)} (expected {WEIGHTS} + {META})"
            )
        wanted = files if kind.fetch_all else set(kind.needs)
        for name, data in folder.read_many(sorted(wanted - {META})):
            target = safe_join(partial, name, f"generator checkpoint {url}")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        kind.check(partial, url)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(dest, ignore_errors=True)
    partial.rename(dest)
    return dest
