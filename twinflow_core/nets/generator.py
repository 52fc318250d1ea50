"""An in-house net as a generator, and its folder on disk (no pickles, no Lightning).

A directory with
- `model.safetensors`: the network's weights (the EMA copy when training kept one);
- `model.json`: {"format", "net" (registry name), "net_kwargs", "tokenizer" (vocabulary, max_len),
  "normalisation" (pixel = x * scale + mean, x the network's data units), "image" (size, channels), "extra"}.
`NetGenerator` implements twinflow_core.generator.Generator; twinflow_core/loader.py loads and fetches it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from twinflow_core.errors import CheckpointError
from twinflow_core.files import check_finite_weights, sort_safetensors_metadata
from twinflow_core.generator import PIXEL_MEAN, PIXEL_SCALE, sample_images, to_pixels
from twinflow_core.nets import build_net
from twinflow_core.text import Tokenizer

FORMAT = "twinflow-generator/1"
WEIGHTS, META = "model.safetensors", "model.json"
META_KEYS = {
    "net": str,
    "net_kwargs": dict,
    "tokenizer": dict,
    "image": dict,
}  # what load_net_generator reads from model.json
CHUNK = 256  # images per sampler call; fixed so that results do not depend on the request size


def save_generator(
    directory, net: torch.nn.Module, net_name: str, net_kwargs: dict, tokenizer: Tokenizer, extra: dict | None = None
) -> Path:
    """Write model.safetensors + model.json into `directory` (created); returns the directory."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in net.state_dict().items()}
    save_file(state, str(out / WEIGHTS), metadata={"format": FORMAT, "net": net_name})
    sort_safetensors_metadata(out / WEIGHTS)
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
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: format {meta.get('format')!r} is not {FORMAT!r}")
    for key, kind in META_KEYS.items():
        if not isinstance(meta.get(key), kind):
            raise CheckpointError(
                f"{path}: key {key!r} must be a JSON {kind.__name__ if kind is not dict else 'object'}"
                f", got {type(meta.get(key)).__name__ if key in meta else 'nothing'}"
            )
    for key in ("vocabulary", "max_len"):
        if key not in meta["tokenizer"]:
            raise CheckpointError(f"{path}: tokenizer has no {key!r}")
    return meta


@dataclass
class NetGenerator:
    net: torch.nn.Module
    tokenizer: Tokenizer
    meta: dict

    @property
    def image_size(self) -> int:
        return int(self.meta["image"]["size"])

    @property
    def vocabulary(self) -> list[str]:
        return list(self.tokenizer.vocabulary)

    def generate(
        self, captions: list[str], nfe: int = 1, seed: int = 0, style: str = "few", cfg_scale: float = 0.0
    ) -> np.ndarray:
        device = next(self.net.parameters()).device
        c = int(self.meta["image"]["channels"])
        return sample_images(
            self.net,
            captions,
            nfe,
            seed,
            style,
            cfg_scale,
            noise_shape=(c, self.image_size, self.image_size),
            image_size=self.image_size,
            encode=self.tokenizer.encode,
            null=self.tokenizer.null,
            decode=to_pixels,
            chunk=CHUNK,
            device=device,
        )


def load_net_generator(directory, device: str | torch.device = "cpu") -> NetGenerator:
    meta = read_meta(directory)
    weights = Path(directory) / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"generator checkpoint {directory}: missing {WEIGHTS}")
    net = build_net(meta["net"], **meta["net_kwargs"])
    try:
        state = load_file(str(weights))  # safetensors: a plain tensor format, nothing in it is executed
    except Exception as err:  # noqa: BLE001 - SafetensorsError, OSError: truncated, not safetensors (a pickle)
        first = (str(err).splitlines() or [type(err).__name__])[0]
        raise CheckpointError(
            f"{weights}: not a readable safetensors file ({first}); truncated, or another "
            f"format (pickled .pt/.ckpt files are refused: they can run code)"
        ) from None
    check_finite_weights(weights, state)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise CheckpointError(
            f"{weights}: weights do not fit net {meta['net']!r} with the stored kwargs ({first})"
        ) from None
    return NetGenerator(net.to(device).eval(), Tokenizer.from_dict(meta["tokenizer"]), meta)
