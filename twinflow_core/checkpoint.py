"""The generator checkpoint: what a trained model is outside training (no pickles, no Lightning).

A directory with
- `model.safetensors`: the network's weights (the EMA copy when training kept one);
- `model.json`: {"format", "net" (registry name), "net_kwargs", "tokenizer" (vocabulary, max_len),
  "normalisation" (pixel = x * scale + mean, x the network's data units), "image" (size, channels), "extra"}.

`load_generator(dir).generate(captions, nfe=1, seed=0, style="few", cfg_scale=0.0)` -> uint8 (N, H, W, 3):
styles "few"/"any"/"mul" run the any-step sampler with `nfe` evaluations; "euler" runs plain Euler with `nfe`
steps (2 evaluations a step with guidance cfg_scale > 0): the flow-matching reference.
The same (captions, seed) always give the same images.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from twinflow_core.errors import CheckpointError, DataError
from twinflow_core.text import Tokenizer

FORMAT = "twinflow-generator/1"
WEIGHTS, META = "model.safetensors", "model.json"
# uint8 pixels <-> data units in [-1, 1]: x = (pixel - mean) / scale
PIXEL_MEAN, PIXEL_SCALE = 127.5, 127.5
CHUNK = 256  # images per sampler call; fixed so that results do not depend on the request size


def to_data(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in data units."""
    x = torch.as_tensor(np.asarray(images)).permute(0, 3, 1, 2).float()
    return (x - PIXEL_MEAN) / PIXEL_SCALE


def to_pixels(x: torch.Tensor) -> np.ndarray:
    """float (N, 3, H, W) in data units -> uint8 (N, H, W, 3), clipped."""
    pixels = (x.detach().float().cpu() * PIXEL_SCALE + PIXEL_MEAN + 0.5).clamp(0, 255)
    return pixels.to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _sort_metadata(path: Path) -> None:
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


def save_generator(directory, net: torch.nn.Module, net_name: str, net_kwargs: dict, tokenizer: Tokenizer,
                   extra: dict | None = None) -> Path:
    """Write model.safetensors + model.json into `directory` (created); returns the directory."""
    from safetensors.torch import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in net.state_dict().items()}
    save_file(state, str(out / WEIGHTS), metadata={"format": FORMAT, "net": net_name})
    _sort_metadata(out / WEIGHTS)
    meta = {
        "format": FORMAT,
        "net": net_name,
        "net_kwargs": net_kwargs,
        "tokenizer": tokenizer.to_dict(),
        "normalisation": {"mean": PIXEL_MEAN, "scale": PIXEL_SCALE},
        "image": {"size": int(net_kwargs.get("image_size", 0)), "channels": int(net_kwargs.get("in_channels", 3))},
        "extra": extra or {},
    }
    (out / META).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return out


def read_meta(directory) -> dict:
    path = Path(directory) / META
    if not path.is_file():
        raise CheckpointError(f"generator checkpoint {directory}: no {META} (expected {WEIGHTS} + {META})")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: format {meta.get('format')!r} is not {FORMAT!r}")
    return meta


@dataclass
class Generator:
    net: torch.nn.Module
    tokenizer: Tokenizer
    meta: dict

    @property
    def image_size(self) -> int:
        return int(self.meta["image"]["size"])

    def generate(self, captions: list[str], nfe: int = 1, seed: int = 0, style: str = "few",
                 cfg_scale: float = 0.0) -> np.ndarray:
        device = next(self.net.parameters()).device
        c = int(self.meta["image"]["channels"])
        return sample_images(self.net, captions, nfe, seed, style, cfg_scale,
                             noise_shape=(c, self.image_size, self.image_size), image_size=self.image_size,
                             encode=self.tokenizer.encode, null=self.tokenizer.null, decode=to_pixels,
                             chunk=CHUNK, device=device)


@torch.no_grad()
def sample_images(net, captions, nfe: int, seed: int, style: str, cfg_scale: float, *, noise_shape: tuple,
                  image_size: int, encode, null, decode, chunk: int, device) -> np.ndarray:
    """The generate() of every generator (pixel UNet, latent transformer): seeded noise for all captions at once,
    then per chunk: condition, sample (any-step, or Euler with optional guidance), decode to uint8.

    encode(captions) and null(n) give the condition and the unconditional one; decode(x) gives uint8 images."""
    from twinflow_core.sampler import euler, sample

    captions = list(captions)
    if not captions:
        return np.zeros((0, image_size, image_size, 3), dtype=np.uint8)
    if cfg_scale > 0 and style != "euler":
        raise DataError("cfg_scale applies to style 'euler' only; the any-step sampler bakes guidance in")
    gen = torch.Generator().manual_seed(int(seed))
    z_all = torch.randn(len(captions), *noise_shape, generator=gen)
    net.eval()
    out = []
    for start in range(0, len(captions), chunk):
        z = z_all[start : start + chunk].to(device)
        cond = _to(encode(captions[start : start + chunk]), device)
        if style == "euler":
            uncond = _to(null(len(z)), device) if cfg_scale > 0 else None
            x = euler(net, z, cond, steps=nfe, cfg_scale=cfg_scale, uncond=uncond)
        else:
            x = sample(net, z, cond, nfe=nfe, style=style, generator=gen)
        out.append(decode(x))
    return np.concatenate(out)


def _to(cond, device):
    return {k: v.to(device) for k, v in cond.items()} if isinstance(cond, dict) else cond.to(device)


def fetch_generator(url: str, dest, endpoint_url: str | None = None, storage_options: dict | None = None) -> Path:
    """Copy the generator checkpoint at `url` (a local folder or s3://bucket/prefix) into the folder `dest`.

    The two files land in a sibling `.partial` folder first and replace `dest` only once both are in and
    model.json reads as a generator: an interrupted or failed fetch leaves an earlier `dest` as it was.
    S3 access (endpoint, credentials, one-line errors naming bucket or object) is the image-folder reader's."""
    import shutil

    from twinflow_core.data.imagefolder import Folder

    dest = Path(dest)
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        if not url.startswith("s3://") and not Path(url).is_dir():
            raise CheckpointError(f"generator checkpoint {url}: not a directory")
        folder = Folder(url, endpoint_url, storage_options)
        files = folder.files()
        missing = [name for name in (META, WEIGHTS) if name not in files]
        if missing:
            raise CheckpointError(f"generator checkpoint {url}: missing {', '.join(missing)} (expected {WEIGHTS} + {META})")
        (partial / META).write_bytes(next(folder.read_many([META]))[1])
        # a latent generator is a whole diffusers pipeline folder (VAE, text encoders, transformer): all of it
        latent = _is_latent(partial)
        for name, data in folder.read_many(sorted(files - {META}) if latent else [WEIGHTS]):
            (partial / name).parent.mkdir(parents=True, exist_ok=True)
            (partial / name).write_bytes(data)
        if latent:
            from twinflow_core.adapters.pipeline import check_generator_files

            check_generator_files(partial, where=url)
        else:
            read_meta(partial)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(dest, ignore_errors=True)
    partial.rename(dest)
    return dest


def _is_latent(directory) -> bool:
    path = Path(directory) / META
    try:
        return path.is_file() and json.loads(path.read_text()).get("format") == "twinflow-latent-generator/1"
    except (OSError, json.JSONDecodeError):
        return False


def load_generator(directory, device: str | torch.device = "cpu") -> Generator:
    from safetensors.torch import load_file

    from twinflow_core.nets import build_net

    if _is_latent(directory):  # a latent model: a diffusers pipeline folder (twinflow_core/adapters/pipeline.py)
        from twinflow_core.adapters.pipeline import load_latent_generator

        return load_latent_generator(directory, device)
    meta = read_meta(directory)
    weights = Path(directory) / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"generator checkpoint {directory}: missing {WEIGHTS}")
    net = build_net(meta["net"], **meta["net_kwargs"])
    try:
        state = load_file(str(weights))  # safetensors: a plain tensor format, nothing in it is executed
    except Exception as err:  # noqa: BLE001 - SafetensorsError, OSError: truncated, not safetensors (a pickle)
        first = (str(err).splitlines() or [type(err).__name__])[0]
        raise CheckpointError(f"{weights}: not a readable safetensors file ({first}); truncated, or another "
                              f"format (pickled .pt/.ckpt files are refused: they can run code)") from None
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise CheckpointError(f"{weights}: weights do not fit net {meta['net']!r} with the stored kwargs ({first})") from None
    return Generator(net.to(device).eval(), Tokenizer.from_dict(meta["tokenizer"]), meta)
