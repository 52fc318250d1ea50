"""Latent shards: a prepared image-caption dataset encoded once by a pipeline's frozen VAE and text encoders.

    data/prepared/<name>-<family>-latents/
      shards/latents-00000.npz   arrays latents (n, C, h, w) float32, prompt_embeds (n, L, D) float32,
                                 pooled (n, P) float32 (SD3) and/or mask (n, L) int64 (SANA, Qwen-Image)
      null.npz                   the same entries for the null prompt "" (the unconditional branch), n = 1
      meta.json                  written last: family, model (source, sha256 of its model_index.json), source
                                 dataset (path, sha256 of its meta.json), n, latent shape, keys, shards
                                 [{file, n, sha256}], format_version

Input is any prepared dataset of twinflow_core/data/prepared.py (the shapes world, digits, an image folder
local or s3://), so the pixel sources stay one code path. The directory is built beside its target and renamed
into place when complete; `load_latents` checks every shard's hash, shape and finiteness. `LatentEncoder` is
also the on-the-fly path (`LatentMicroBatches(encoder=...)` encodes each micro-batch instead of reading shards)
for data that do not fit on disk.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from twinflow_core.adapters.codec import encode_images, encode_prompts
from twinflow_core.data.batches import MicroBatches, step_rows
from twinflow_core.data.prepared import file_sha256, load_prepared, write_npz
from twinflow_core.errors import DataError
from twinflow_core.generator import to_data

FORMAT_VERSION = 1
META = "meta.json"


@dataclass
class LatentEncoder:
    """Pixels + captions -> latents + condition dict, by a diffusers pipeline's frozen parts."""
    pipe: object
    family: str
    max_len: int

    @torch.no_grad()
    def __call__(self, images_uint8: np.ndarray, captions: list[str]) -> dict[str, torch.Tensor]:
        out = encode_prompts(self.pipe, self.family, captions, self.max_len)
        out["latents"] = encode_images(self.pipe.vae, to_data(images_uint8))
        return out


def _npz(path: Path, entries: dict[str, torch.Tensor]) -> None:
    write_npz(path, {k: v.detach().cpu().numpy() for k, v in entries.items()})


def write_latents(dataset_dir, out, encoder: LatentEncoder, *, source: str, batch: int = 32,
                  shard_size: int = 1024) -> dict:
    """Encode the prepared dataset at `dataset_dir` into latent shards at `out`; returns the meta."""

    data = load_prepared(dataset_dir)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "shards").mkdir(parents=True)
    try:
        shards, buffer = [], []

        def flush():
            entries = {k: torch.cat([b[k] for b in buffer]) for k in buffer[0]}
            file = f"shards/latents-{len(shards):05d}.npz"
            _npz(tmp / file, entries)
            shards.append({"file": file, "n": len(entries["latents"]), "sha256": file_sha256(tmp / file)})
            buffer.clear()

        pending = 0
        for start in range(0, len(data), batch):
            enc = encoder(data.images[start : start + batch], data.captions[start : start + batch])
            if not all(torch.isfinite(v).all() for v in enc.values() if torch.is_floating_point(v)):
                raise DataError(f"{dataset_dir}: non-finite latents or embeddings at rows {start}..")
            buffer.append(enc)
            pending += len(enc["latents"])
            if pending >= shard_size:
                flush()
                pending = 0
        if buffer:
            flush()
        null = encoder.__class__(encoder.pipe, encoder.family, encoder.max_len)
        null_enc = {k: v for k, v in null(data.images[:1], [""]).items() if k != "latents"}
        _npz(tmp / "null.npz", null_enc)
        first = np.load(tmp / shards[0]["file"])
        meta = {"format_version": FORMAT_VERSION, "family": encoder.family, "n": len(data),
                "latent_shape": list(first["latents"].shape[1:]), "keys": sorted(first.files),
                "max_sequence_length": encoder.max_len, "image_size": int(data.images.shape[1]),
                "captions": data.captions, "model": source,
                "source": {"path": str(dataset_dir), "meta_sha256": file_sha256(Path(dataset_dir) / "meta.json")},
                "null_sha256": file_sha256(tmp / "null.npz"), "shards": shards}
        (tmp / META).write_text(json.dumps(meta, sort_keys=True, indent=1) + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    os.rename(tmp, out)
    return meta


@dataclass
class Latents:
    latents: torch.Tensor
    cond: dict[str, torch.Tensor]
    null: dict[str, torch.Tensor]
    captions: list[str]
    meta: dict


def _read(path: Path, sha: str | None) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise DataError(f"{path}: listed in {META} but missing")
    if sha and file_sha256(path) != sha:
        raise DataError(f"{path}: sha256 differs from {META} (a changed or damaged shard)")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as err:  # a damaged zip raises several kinds of error
        raise DataError(f"{path}: unreadable shard ({type(err).__name__})") from None


def load_latents(path) -> Latents:
    """Read and validate latent shards (hashes, shapes, finiteness, counts)."""
    path = Path(path)
    if not (path / META).is_file():
        raise DataError(f"{path}: not a complete latent dataset (no {META}; run the latent prepare)")
    meta = json.loads((path / META).read_text())
    parts = [_read(path / s["file"], s["sha256"]) for s in meta["shards"]]
    merged = {k: np.concatenate([p[k] for p in parts]) for k in meta["keys"]}
    for k, v in merged.items():
        if len(v) != meta["n"]:
            raise DataError(f"{path}: {k} has {len(v)} rows, meta says {meta['n']}")
        if v.dtype.kind == "f" and not np.isfinite(v).all():
            raise DataError(f"{path}: {k} holds non-finite values")
    if list(merged["latents"].shape[1:]) != meta["latent_shape"]:
        raise DataError(f"{path}: latents {merged['latents'].shape[1:]} but meta says {meta['latent_shape']}")
    null = {k: torch.from_numpy(v) for k, v in _read(path / "null.npz", meta["null_sha256"]).items()}
    latents = torch.from_numpy(merged.pop("latents"))
    return Latents(latents, {k: torch.from_numpy(v) for k, v in merged.items()}, null, meta["captions"], meta)


class LatentMicroBatches(MicroBatches):
    """MicroBatches over latents: the same (step, micro) -> rows rule and caption-dropout seeding, so device
    count never changes what is trained; dropped captions get the null prompt's embeddings."""

    def __init__(self, data: Latents, micro: int, micro_per_step: int, seed: int, cond_drop: float):
        self.x, self.cond, self.null = data.latents, data.cond, data.null
        self.micro, self.per_step = micro, micro_per_step
        self.seed, self.cond_drop = int(seed), float(cond_drop)
        self._perms = {}

    def __getitem__(self, key):
        step, micro = key
        idx = self.rows(step, micro)
        cond = {k: v[idx].clone() for k, v in self.cond.items()}
        uncond = {k: v.expand(len(idx), *v.shape[1:]).clone() for k, v in self.null.items()}
        if self.cond_drop > 0:
            drop = step_rows(self.seed, step, self.micro, self.per_step, micro) < self.cond_drop  # as MicroBatches
            for k in cond:
                cond[k][drop] = uncond[k][drop]
        return {"x": self.x[idx], "cond": cond, "uncond": uncond, "step": step, "micro": micro}
