"""What a generator is to those who use one: the protocol, the sampling loop every kind shares, pixel units.

Evaluation, the pyfunc model and `twinflow generate` hold a `Generator` and need not know which kind:
- the in-house nets' generator (twinflow_core/nets/generator.py: a pixel-space net + the project's tokenizer);
- the latent generator (twinflow_core/adapters/pipeline.py: a diffusers transformer + frozen text encoders + VAE).
twinflow_core/loader.py loads either from its folder.

`generate(captions, nfe=1, seed=0, style="few", cfg_scale=0.0)` -> uint8 (N, H, W, 3): styles "few"/"any"/"mul"
run the any-step sampler with `nfe` evaluations; "euler" runs plain Euler with `nfe` steps (2 evaluations a step
with guidance cfg_scale > 0): the flow-matching reference. The same (captions, seed) always give the same images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from twinflow_core.errors import DataError
from twinflow_core.sampler import euler, sample

# uint8 pixels <-> data units in [-1, 1]: x = (pixel - mean) / scale
PIXEL_MEAN, PIXEL_SCALE = 127.5, 127.5


@runtime_checkable
class Generator(Protocol):
    """A text-to-image generator as its users see it."""

    @property
    def image_size(self) -> int:
        """The side of the square images it draws, in pixels."""
        ...

    @property
    def vocabulary(self) -> Sequence[str]:
        """The whole words its text side knows (what tells the evaluator which benchmark domain it can score)."""
        ...

    def generate(
        self, captions: list[str], nfe: int = 1, seed: int = 0, style: str = "few", cfg_scale: float = 0.0
    ) -> np.ndarray:
        """uint8 (N, H, W, 3), one image per caption."""
        ...


def to_data(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in data units."""
    x = torch.as_tensor(np.asarray(images)).permute(0, 3, 1, 2).float()
    return (x - PIXEL_MEAN) / PIXEL_SCALE


def to_pixels(x: torch.Tensor) -> np.ndarray:
    """float (N, 3, H, W) in data units -> uint8 (N, H, W, 3), clipped."""
    pixels = (x.detach().float().cpu() * PIXEL_SCALE + PIXEL_MEAN + 0.5).clamp(0, 255)
    return pixels.to(torch.uint8).permute(0, 2, 3, 1).numpy()


@torch.no_grad()
def sample_images(
    net,
    captions,
    nfe: int,
    seed: int,
    style: str,
    cfg_scale: float,
    *,
    noise_shape: tuple,
    image_size: int,
    encode: Callable,
    null: Callable,
    decode: Callable,
    chunk: int,
    device,
) -> np.ndarray:
    """The generate() of every generator (pixel UNet, latent transformer): seeded noise for all captions at once,
    then per chunk: condition, sample (any-step, or Euler with optional guidance), decode to uint8.

    encode(captions) and null(n) give the condition and the unconditional one; decode(x) gives uint8 images."""
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
