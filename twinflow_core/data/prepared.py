"""The one prepared-dataset format: what `prepare` writes and training / evaluation read.

    data/prepared/<name>/
      shards/images-00000.npz   array "images": uint8 (n, H, W, 3), RGB; `shard_size` images per shard
      manifest.parquet          one row per image, in order (columns below)
      meta.json                 written last: name, source, n, image_size, mode, seed, shards [{file, n, sha256}],
                                vocabulary (sorted caption words, see vocab.split_words), max_words, classes,
                                kinds, source params, format_version

Manifest columns: id (<name>-000000), shard, row, caption, kind (caption family: a GenEval tag or dense for
shapes, digit, imagefolder), source, label (-1 = none), scene (JSON of the shapes scene dict, "" = none),
width, height, mode, pixel_min, pixel_max, pixel_mean, pixel_std, content_hash (sha256 of "HxWxC:" + pixels).

Same input and seed give byte-identical files (npz entries carry a fixed timestamp, JSON keys are sorted,
nothing records time or location). A dataset is built in a hidden sibling directory and renamed into place
only when complete, so a failed or killed run never leaves a directory that looks like a dataset.
"""
# Lazy imports: omegaconf, pandas, pyarrow
# (slow to load or not in the base install: only the functions that use them load them)
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import socket
import time
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from twinflow_core.data.sample import Sample
from twinflow_core.data.vocab import split_words
from twinflow_core.errors import DataError
from tqdm import tqdm
import fcntl
from twinflow_core.viz import save_image_grid

FORMAT_VERSION = 1
MANIFEST = "manifest.parquet"
META = "meta.json"
SHARD_DIR = "shards"
MODE = "RGB"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


@dataclass
class PreparedDataset:
    images: np.ndarray            # uint8 (N, H, W, 3)
    captions: list[str]
    scenes: list[dict] | None     # shapes scene dicts, None for sources without scenes
    labels: np.ndarray | None     # int64 (N,), None for sources without labels
    manifest: object              # pandas.DataFrame
    meta: dict
    path: Path

    def __len__(self) -> int:
        return len(self.captions)


def content_hash(image: np.ndarray) -> str:
    """sha256 of the pixels, with the shape in front so a reshaped array never collides."""
    h = hashlib.sha256("x".join(str(d) for d in image.shape).encode() + b":")
    h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like np.savez_compressed, but byte-reproducible: every entry carries the same fixed timestamp."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for key, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue(), compresslevel=6)


def read_shard(path: Path) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as z:
            return z["images"]
    except Exception as err:  # a damaged zip raises several kinds of error; all mean the same here
        raise DataError(f"{path}: unreadable shard ({type(err).__name__}: {str(err)[:80]})") from None


def _writer_tag() -> str:
    """The host and pid of this writer, in its scratch folders' names (.<name>.tmp-<host>-<pid>)."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _stale_siblings(out: Path) -> list[Path]:
    """Scratch folders of writers that died on this host. Another writer's live folder is not stale: two
    prepares of one dataset at once (two bench runs, two users) each wrote a tmp folder, and the second to start
    deleted the first's under it (FileNotFoundError in its shard write). Folders of other hosts (a shared file
    system) are left to their own host's writer."""
    host = socket.gethostname()
    stale = []
    for kind in ("tmp", "old"):
        prefix = f".{out.name}.{kind}-"
        for path in out.parent.glob(prefix + "*"):
            writer_host, _, pid = path.name[len(prefix):].rpartition("-")  # "<host>-<pid>" ("<pid>" before hosts)
            if writer_host not in ("", host) or not pid.isdigit():
                continue
            if int(pid) == os.getpid():  # an earlier process that had our pid (we have made nothing yet)
                stale.append(path)
                continue
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                stale.append(path)
            except PermissionError:  # alive, another user's
                pass
    return stale


@contextlib.contextmanager
def _swap_lock(out: Path):
    """One writer at a time moves its finished folder into place (the old one aside, the new one in). The lock
    is an flock on the parent folder itself, so that it leaves no file beside the dataset."""

    fd = os.open(out.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


class _ShardWriter:
    """One shard written image by image: the .npz entry "images.npy" is deflated as the images arrive, so
    memory holds one image, not the shard (a 4,096-image shard at 512 px is 3.2 GB of uint8). The bytes are the
    same as write_npz of the stacked shard: the npy header is known up front (the shard's image count is), and
    deflate's output does not depend on how its input is split."""

    def __init__(self, path: Path, count: int, shape: tuple[int, ...]):
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
                     "shape": (count, *shape)})
        self.path, self.count, self.written = path, count, 0
        self.zf = zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6)
        info = zipfile.ZipInfo("images.npy", date_time=_ZIP_TIME)
        info.compress_type = zipfile.ZIP_DEFLATED
        info.external_attr = 0o644 << 16
        info._compresslevel = 6  # what ZipFile.writestr(..., compresslevel=6) sets
        info.file_size = len(header.getvalue()) + count * int(np.prod(shape))  # as writestr: decides ZIP64
        self.dest = self.zf.open(info, "w")
        self.dest.write(header.getvalue())

    def add(self, image: np.ndarray) -> None:
        self.dest.write(np.ascontiguousarray(image).tobytes())
        self.written += 1

    def close(self) -> None:
        self.dest.close()
        self.zf.close()


def image_stats(image: np.ndarray) -> dict:
    """Pixel statistics of one image (over H, W and channels), as the manifest stores them."""
    flat = image.reshape(-1)
    return {"pixel_min": int(flat.min()), "pixel_max": int(flat.max()),
            "pixel_mean": round(float(flat.mean()), 4), "pixel_std": round(float(flat.std()), 4)}


def disk_preflight(out: Path, n: int, image_size: int) -> None:
    """Refuse, before anything is written, a dataset that cannot fit on the output's file system: its shards
    take at most the raw pixel bytes (deflate never grows them by more than a fraction of a percent), and the
    new dataset is built beside the old one before it replaces it."""
    need = n * image_size * image_size * 3
    probe = out.parent
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if need > free:
        raise DataError(f"{out}: {n} images at {image_size} px need up to {need / 1e9:.1f} GB of shards, "
                        f"{free / 1e9:.1f} GB free on {probe}; free space or prepare fewer images")


def write_prepared(samples: Iterable[Sample], n: int, out: str | Path, *, name: str, source: str,
                   image_size: int, seed: int, shard_size: int, source_meta: dict,
                   progress: bool = True) -> dict:
    """Write `n` samples as a prepared dataset at `out` (replacing one already there); returns its meta.

    Streams: each image goes into its shard's compressed entry as it arrives (peak memory: one image and the
    manifest rows, whatever the shard size); its statistics are computed on its own."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    disk_preflight(out, n, image_size)
    for stale in _stale_siblings(out):  # left by a killed run; never a dataset
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out.parent / f".{out.name}.tmp-{_writer_tag()}"
    (tmp / SHARD_DIR).mkdir(parents=True)
    writer: _ShardWriter | None = None
    try:
        rows, shards = [], []

        def finish(w: _ShardWriter) -> None:
            w.close()
            file = f"{SHARD_DIR}/{w.path.name}"
            shards.append({"file": file, "n": w.written, "sha256": file_sha256(w.path)})

        expected = (image_size, image_size, 3)
        it = tqdm(samples, total=n, desc=f"prepare {name}", unit="img", disable=not progress, mininterval=1.0)
        for i, s in enumerate(it):
            if i >= n:
                raise DataError(f"{name}: the source gave more than the {n} samples it announced")
            img = s.image
            if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.shape != expected:
                shape = getattr(img, "shape", None)
                raise DataError(f"{s.source}: image {shape} {getattr(img, 'dtype', '')}, expected uint8 {expected}")
            if not s.caption or not s.caption.strip():
                raise DataError(f"{s.source}: empty caption")
            if writer is None:
                count = min(shard_size, n - i)
                writer = _ShardWriter(tmp / SHARD_DIR / f"images-{len(shards):05d}.npz", count, expected)
            rows.append({
                "id": f"{name}-{i:06d}", "shard": len(shards), "row": writer.written,
                "caption": s.caption, "kind": s.kind, "source": s.source, "label": int(s.label),
                "scene": json.dumps(s.scene, sort_keys=True, separators=(",", ":")) if s.scene is not None else "",
                "width": int(img.shape[1]), "height": int(img.shape[0]), "mode": MODE,
                **image_stats(img),
                "content_hash": content_hash(img),
            })
            writer.add(img)
            if writer.written == writer.count:
                finish(writer)
                writer = None
        if len(rows) != n:
            raise DataError(f"{name}: the source gave {len(rows)} samples, expected {n}")
        frame = pd.DataFrame(rows, columns=list(rows[0]) if rows else None)
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp / MANIFEST, compression="zstd")
        meta = {
            "format_version": FORMAT_VERSION, "name": name, "source": source, "n": len(rows),
            "image_size": image_size, "mode": MODE, "seed": seed, "shard_size": shard_size, "shards": shards,
            "max_words": max((len(split_words(r["caption"])) for r in rows), default=0),
            "caption_words": "lower-case [a-z0-9]+ runs, punctuation dropped (twinflow_core.data.vocab.split_words)",
            **source_meta,
        }
        (tmp / META).write_text(json.dumps(meta, sort_keys=True, indent=1) + "\n")
    except BaseException:
        if writer is not None:  # closed before its folder goes, so nothing writes into a removed file later
            with contextlib.suppress(Exception):
                writer.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out.parent / f".{out.name}.old-{_writer_tag()}"
    with _swap_lock(out):
        if out.exists():
            os.rename(out, old)
        os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    return meta


def read_meta(path: str | Path) -> dict:
    path = Path(path)
    meta_path = path / META
    if not meta_path.is_file():
        raise DataError(f"{path}: not a complete prepared dataset (no {META}; run the prepare stage)")
    try:
        return json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{meta_path}: not valid JSON ({err.msg})") from None


def read_manifest(path: str | Path):
    import pandas as pd

    manifest_path = Path(path) / MANIFEST
    if not manifest_path.is_file():
        raise DataError(f"{manifest_path}: missing")
    try:
        return pd.read_parquet(manifest_path)
    except Exception as err:  # pyarrow raises several error types for a damaged file
        raise DataError(f"{manifest_path}: unreadable manifest ({type(err).__name__})") from None


def load_prepared(path: str | Path) -> PreparedDataset:
    """Read a prepared dataset (see the module docstring for the layout)."""
    path = Path(path)
    meta = read_meta(path)
    manifest = read_manifest(path)
    parts = []
    for shard in meta["shards"]:
        file = path / shard["file"]
        if not file.is_file():
            raise DataError(f"{file}: shard listed in {META} is missing")
        parts.append(read_shard(file))
    images = np.concatenate(parts) if parts else np.zeros((0, meta["image_size"], meta["image_size"], 3), np.uint8)
    if len(images) != len(manifest) or len(images) != meta["n"]:
        raise DataError(f"{path}: {len(images)} images in shards, {len(manifest)} manifest rows, "
                        f"meta says {meta['n']}")
    captions = manifest["caption"].tolist()
    scenes = [json.loads(s) if s else None for s in manifest["scene"]]
    labels = manifest["label"].to_numpy(dtype=np.int64)
    return PreparedDataset(
        images=images, captions=captions,
        scenes=scenes if any(s is not None for s in scenes) else None,
        labels=labels if (labels >= 0).any() else None,
        manifest=manifest, meta=meta, path=path)


def read_rows(path: Path, rows: list[int]) -> np.ndarray:
    """Images `rows` of one shard, read by walking its compressed entry forward (memory: the images asked for,
    not the shard)."""
    try:
        with zipfile.ZipFile(path) as zf, zf.open("images.npy") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) \
                else np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(f)
            start, size = f.tell(), int(np.prod(shape[1:])) * np.dtype(dtype).itemsize
            out = np.empty((len(rows), *shape[1:]), dtype)
            for k, row in sorted(enumerate(rows), key=lambda kr: kr[1]):
                f.seek(start + row * size)
                out[k] = np.frombuffer(f.read(size), dtype).reshape(shape[1:])
            return out
    except Exception as err:  # a damaged zip raises several kinds of error; all mean the same here
        raise DataError(f"{path}: unreadable shard ({type(err).__name__}: {str(err)[:80]})") from None


def _grid_picks(kinds: list[str], n: int) -> list[int]:
    """n rows, taken round-robin over caption kinds so every kind shows."""
    by_kind: dict[str, list[int]] = {}
    for i, k in enumerate(kinds):
        by_kind.setdefault(k, []).append(i)
    picked, depth = [], 0
    while len(picked) < min(n, len(kinds)):
        for idx in by_kind.values():
            if depth < len(idx) and len(picked) < n:
                picked.append(idx[depth])
        depth += 1
    return picked


def save_sample_grid(dataset: PreparedDataset | str | Path, path: str | Path, n: int = 32, ncol: int = 8) -> Path:
    """A captioned grid of n samples, taken round-robin over caption kinds so every kind shows. Given a folder,
    reads only those n images (the prepare stage: a dataset need not fit in memory)."""

    if isinstance(dataset, PreparedDataset):
        meta, manifest = dataset.meta, dataset.manifest
        picked = _grid_picks(manifest["kind"].tolist(), n)
        images = dataset.images[picked]
    else:
        folder = Path(dataset)
        meta, manifest = read_meta(folder), read_manifest(folder)
        picked = _grid_picks(manifest["kind"].tolist(), n)
        shard_of, row_of = manifest["shard"].to_numpy(), manifest["row"].to_numpy()
        images = np.zeros((len(picked), meta["image_size"], meta["image_size"], 3), np.uint8)
        for shard in sorted({int(shard_of[i]) for i in picked}):
            ks = [k for k, i in enumerate(picked) if shard_of[i] == shard]
            images[ks] = read_rows(folder / meta["shards"][shard]["file"], [int(row_of[picked[k]]) for k in ks])
    captions = manifest["caption"].tolist()
    title = f"{meta['name']}: {meta['n']} images, {meta['image_size']}px ({meta['source']})"
    return save_image_grid(images, path, captions=[captions[i] for i in picked],
                           ncol=ncol, title=title, cell=128, caption_lines=5)


def prepare(cfg, root: str | Path = ".", out: str | Path | None = None,
            progress: bool = True) -> tuple[Path, dict, float]:
    """Build dataset `cfg.name` (a DataConfig) at `out` (default <root>/data/prepared/<name>); relative
    inputs (the shapes holdout prompts) are read from `root`. Returns (path, meta, seconds)."""
    from twinflow_core.data.sources import open_source

    root = Path(root)
    start = time.perf_counter()
    src = open_source(cfg, root)
    out = Path(out) if out is not None else root / "data" / "prepared" / cfg.name
    meta = write_prepared(src.samples, src.n, out, name=cfg.name, source=cfg.source, image_size=cfg.image_size,
                          seed=cfg.seed, shard_size=cfg.shard_size, source_meta=src.meta, progress=progress)
    return out, meta, time.perf_counter() - start
