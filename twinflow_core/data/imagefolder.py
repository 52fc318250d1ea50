"""Your own images: a folder of images + `metadata.jsonl` (Hugging Face imagefolder convention), local or S3.

Each metadata line is `{"file_name": "<path relative to the folder>", "text": "<caption>"}`; samples come in
metadata order. The folder is a local path or `s3://bucket/prefix` (read through s3fs; the endpoint comes from
`endpoint_url`, else AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL; credentials from the usual AWS_* variables or
`storage_options`, which are never logged or put in error messages).

Images are decoded with Pillow (EXIF orientation applied), converted to RGB (alpha composited on white),
scaled so the shorter side is the target size and center-cropped. Every problem is a one-line DataError
naming the file or metadata line; everything is checked before a single image is decoded where possible.
"""
# Lazy imports: botocore, s3fs
# (slow to load or not in the base install: only the functions that use them load them)
from __future__ import annotations

import io
import json
import os
import posixpath
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from twinflow_core.bounds import check_text, excerpt
from twinflow_core.data.sample import Sample
from twinflow_core.errors import DataError, StorageError
from PIL import Image, ImageOps, UnidentifiedImageError
import warnings

METADATA = "metadata.jsonl"
CONVERTIBLE_MODES = ("RGB", "RGBA", "L", "LA", "P", "1")
BATCH = 64  # S3 objects fetched concurrently per request batch


class Folder:
    """Read access to a local folder or an S3 prefix, with S3 failures turned into DataErrors."""

    def __init__(self, path: str, endpoint_url: str | None = None, storage_options: dict | None = None):
        self.url = path.rstrip("/")
        self.is_s3 = path.startswith("s3://")
        if not self.is_s3:
            self.root = Path(path)
            if not self.root.is_dir():
                raise DataError(f"image folder {path}: not a directory")
            return
        import s3fs

        self.bucket = self.url[len("s3://"):].split("/", 1)[0]
        if not self.bucket:
            raise DataError(f"image folder {path}: no bucket in the URL (expected s3://bucket/prefix)")
        self.endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        options = dict(storage_options or {})
        client_kwargs = dict(options.pop("client_kwargs", {}) or {})
        if self.endpoint:
            client_kwargs.setdefault("endpoint_url", self.endpoint)
        # Few, short retries: a wrong endpoint should fail in seconds, not minutes.
        config_kwargs = {"connect_timeout": 5, "read_timeout": 30, "retries": {"max_attempts": 2}}
        config_kwargs.update(options.pop("config_kwargs", {}) or {})
        self.fs = s3fs.S3FileSystem(client_kwargs=client_kwargs, config_kwargs=config_kwargs,
                                    skip_instance_cache=True, **options)
        self.fs.retries = 2  # s3fs's own retry loop (5 by default, with back-off)
        self.prefix = self.url[len("s3://"):]
        self._s3(lambda: self.fs.call_s3("head_bucket", Bucket=self.bucket))

    def _s3(self, fn, what: str | None = None):
        """Run an S3 call; name the bucket, the endpoint or the object on failure, never the credentials."""
        import botocore.exceptions as bex

        where = what or self.url
        try:
            return fn()
        except (bex.NoCredentialsError, bex.PartialCredentialsError):
            raise StorageError(f"{where}: no AWS credentials found (set AWS_ACCESS_KEY_ID and "
                            "AWS_SECRET_ACCESS_KEY, or data.imagefolder.storage_options)") from None
        except PermissionError:
            raise self._refused(where) from None
        except FileNotFoundError:
            if what is None:
                raise StorageError(f"{where}: bucket {self.bucket!r} does not exist"
                                f"{' at ' + self.endpoint if self.endpoint else ''}") from None
            raise StorageError(f"{where}: not found") from None
        except (bex.EndpointConnectionError, bex.ConnectTimeoutError, bex.ReadTimeoutError,
                ConnectionError, TimeoutError) as err:
            raise StorageError(f"{where}: cannot reach the S3 endpoint {self.endpoint or '(AWS default)'} "
                            f"({type(err).__name__})") from None
        except OSError as err:
            text = str(err)
            if "NoSuchBucket" in text:
                raise StorageError(f"{where}: bucket {self.bucket!r} does not exist") from None
            if any(s in text for s in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "Forbidden")):
                raise self._refused(where) from None
            if any(s in text for s in ("connect", "Connect", "timed out")):
                raise StorageError(f"{where}: cannot reach the S3 endpoint {self.endpoint or '(AWS default)'}") from None
            raise StorageError(f"{where}: S3 error {type(err).__name__}") from None

    def _refused(self, where: str) -> StorageError:
        # a HEAD answers a bare 403, so an unknown key, a wrong secret and a missing permission read the same
        return StorageError(f"{where}: S3{' at ' + self.endpoint if self.endpoint else ''} refused the AWS "
                            f"credentials for bucket {self.bucket!r} (403: unknown access key, wrong secret, or no "
                            "permission to read it)")

    def where(self, rel: str) -> str:
        return f"{self.url}/{rel}"

    def read_metadata(self) -> str:
        if not self.is_s3:
            path = self.root / METADATA
            if not path.is_file():
                raise DataError(f"{path}: not found (an image folder needs {METADATA} with file_name and text)")
            return _utf8(path.read_bytes(), str(path))
        files = self.files()
        if METADATA not in files:
            raise DataError(f"{self.where(METADATA)}: not found (an image folder needs {METADATA} "
                            "with file_name and text)")
        return _utf8(self._s3(lambda: self.fs.cat_file(f"{self.prefix}/{METADATA}"), self.where(METADATA)),
                     self.where(METADATA))

    def files(self) -> set[str]:
        """Relative names of every file under the folder."""
        if not self.is_s3:
            return {p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file()}
        if not hasattr(self, "_files"):
            found = self._s3(lambda: self.fs.find(self.prefix))
            base = self.prefix + "/"
            self._files = {f[len(base):] for f in found if f.startswith(base)}
        return self._files

    def read_many(self, rels: list[str]) -> Iterator[tuple[str, bytes]]:
        """(rel, bytes) in the order given; S3 objects are fetched BATCH at a time, concurrently."""
        if not self.is_s3:
            for rel in rels:
                yield rel, (self.root / rel).read_bytes()
            return
        for start in range(0, len(rels), BATCH):
            chunk = rels[start:start + BATCH]
            paths = [f"{self.prefix}/{r}" for r in chunk]
            got = self._s3(lambda: self.fs.cat(paths, on_error="return"))
            for rel, path in zip(chunk, paths):
                data = got.get(path)
                if isinstance(data, BaseException) or data is None:
                    # Fetch it alone: either it arrives now, or the error gets its name.
                    data = self._s3(lambda: self.fs.cat_file(path), self.where(rel))
                yield rel, data


def _utf8(data: bytes, where: str) -> str:
    """metadata.jsonl is UTF-8 (as Hugging Face's imagefolder reads it); anything else names its line."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise DataError(f"{where} line {line}: not UTF-8 (byte {data[err.start]:#04x}); save the file as UTF-8") \
            from None


def parse_metadata(text: str, where: str) -> list[tuple[int, str, str]]:
    """(line number, file_name, caption) for every non-blank line; each problem names its line."""
    rows, seen = [], {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{where} line {n}: not valid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{where} line {n}: expected a JSON object with file_name and text")
        for key in ("file_name", "text"):
            if key not in row:
                raise DataError(f"{where} line {n}: missing {key!r}")
            if not isinstance(row[key], str):
                raise DataError(f"{where} line {n}: {key!r} must be a string, got {row[key]!r}")
        name, caption = row["file_name"], row["text"]
        norm = posixpath.normpath(name)
        if not name or name.startswith("/") or norm.startswith(".."):
            raise DataError(f"{where} line {n}: file_name {name!r} must be a path inside the folder")
        if not caption.strip():
            raise DataError(f"{where} line {n} ({name}): empty caption")
        check_text(caption, f"{where} line {n} ({excerpt(name, 40)}): the caption")
        if norm in seen:
            raise DataError(f"{where} line {n}: {name!r} is already listed on line {seen[norm]}")
        seen[norm] = n
        rows.append((n, norm, " ".join(caption.split())))
    if not rows:
        raise DataError(f"{where}: no rows (expected one JSON object per image)")
    return rows


def to_rgb(data: bytes, where: str, size: int, strict: bool = False, min_size: int = 1) -> np.ndarray:
    """Decode image bytes to a uint8 (size, size, 3) array: shorter side scaled to size, center-cropped."""


    try:
        with warnings.catch_warnings():  # PIL only warns below twice its pixel limit: refuse those too
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        first_line = (str(err).splitlines() or [""])[0][:120]
        raise DataError(f"{where}: refused, too many pixels for an image (a decompression bomb? {first_line})") \
            from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        first_line = (str(err).splitlines() or [""])[0][:80]
        raise DataError(f"{where}: not a readable image ({type(err).__name__}: {first_line})") from None
    w, h = img.size
    if strict and (img.mode != "RGB" or (w, h) != (size, size)):
        raise DataError(f"{where}: {w}x{h} {img.mode}, expected {size}x{size} RGB (data.imagefolder.strict)")
    if img.mode not in CONVERTIBLE_MODES:
        raise DataError(f"{where}: image mode {img.mode!r} is not supported (expected one of {CONVERTIBLE_MODES})")
    if min(w, h) < min_size:
        raise DataError(f"{where}: {w}x{h} is smaller than data.imagefolder.min_size={min_size} pixels")
    img = ImageOps.exif_transpose(img)
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    img = img.convert("RGB")
    out = ImageOps.fit(img, (size, size), Image.BICUBIC, centering=(0.5, 0.5))
    return np.asarray(out, dtype=np.uint8)


def imagefolder_samples(path: str, size: int, strict: bool = False, min_size: int = 16,
                        endpoint_url: str | None = None,
                        storage_options: dict | None = None) -> tuple[int, list[str], Iterator[Sample]]:
    """(count, captions, samples) of an image folder. Metadata and file presence are checked up front."""
    folder = Folder(path, endpoint_url, storage_options)
    rows = parse_metadata(folder.read_metadata(), folder.where(METADATA))
    present = folder.files()
    for n, name, _ in rows:
        if name not in present:
            raise DataError(f"{folder.where(METADATA)} line {n}: file {name!r} not found in {folder.url}")
    captions = [c for _, _, c in rows]

    def samples() -> Iterator[Sample]:
        by_name = {name: caption for _, name, caption in rows}
        for name, data in folder.read_many([name for _, name, _ in rows]):
            image = to_rgb(data, folder.where(name), size, strict, min_size)
            yield Sample(image, by_name[name], "imagefolder", f"imagefolder:{name}")

    return len(rows), captions, samples()
