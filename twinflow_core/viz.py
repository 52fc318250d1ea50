"""Pictures people look at: captioned image grids and 2-D scatter plots (PNG).

Pillow for grids (no torchvision here); matplotlib (imported lazily, Agg backend) for scatter plots.
"""

# Lazy imports: matplotlib
# (slow to load or not in the base install: only the functions that use them load them)
from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def to_uint8_images(images) -> np.ndarray:
    """uint8 (N,H,W,3) from uint8 (N,H,W,3)/(N,H,W) arrays or float tensors/arrays in [-1,1] shaped (N,C,H,W)."""
    if hasattr(images, "detach"):
        images = images.detach().cpu().float().numpy()
    arr = np.asarray(images)
    if arr.dtype != np.uint8:
        if arr.ndim == 4 and arr.shape[1] in (1, 3) and arr.shape[-1] not in (1, 3):
            arr = arr.transpose(0, 2, 3, 1)
        arr = np.clip((arr + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return arr


def save_image_grid(
    images,
    path,
    captions=None,
    ncol: int | None = None,
    title: str | None = None,
    cell: int = 96,
    caption_lines: int = 3,
) -> Path:
    """Write a grid of images, each upscaled (nearest) to `cell` px, with its caption wrapped underneath."""

    arr = to_uint8_images(images)
    n = len(arr)
    if n == 0:
        raise ValueError("save_image_grid: no images")
    ncol = ncol or min(n, 8)
    nrow = math.ceil(n / ncol)
    font = ImageFont.load_default()
    line_h = 11
    cap_h = (caption_lines * line_h + 4) if captions is not None else 0
    title_h = 18 if title else 0
    pad = 4
    width = ncol * (cell + pad) + pad
    height = title_h + nrow * (cell + cap_h + pad) + pad
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, 3), title, fill=(0, 0, 0), font=font)
    chars = max(8, cell // 6)
    for i, img in enumerate(arr):
        row, col = divmod(i, ncol)
        x0 = pad + col * (cell + pad)
        y0 = title_h + pad + row * (cell + cap_h + pad)
        canvas.paste(Image.fromarray(img).resize((cell, cell), Image.NEAREST), (x0, y0))
        if captions is not None:
            lines = textwrap.wrap(str(captions[i]), chars)[:caption_lines]
            for k, line in enumerate(lines):
                draw.text((x0, y0 + cell + 2 + k * line_h), line, fill=(20, 20, 20), font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def save_scatter(panels: dict, path, title: str | None = None, limits=None, max_points: int = 5000) -> Path:
    """One scatter panel per entry of `panels` (name -> (n,2) array), side by side, shared limits."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(panels)
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.4), squeeze=False)
    if limits is None:
        allpts = np.concatenate([np.asarray(p)[:max_points] for p in panels.values()])
        lo, hi = np.percentile(allpts, [0.5, 99.5], axis=0)
        span = (hi - lo).max() * 0.6
        mid = (hi + lo) / 2
        limits = ((mid[0] - span, mid[0] + span), (mid[1] - span, mid[1] + span))
    for ax, name in zip(axes[0], names):
        pts = np.asarray(panels[name])[:max_points]
        ax.scatter(pts[:, 0], pts[:, 1], s=1.5, alpha=0.5, linewidths=0)
        ax.set_title(name, fontsize=9)
        ax.set_xlim(*limits[0])
        ax.set_ylim(*limits[1])
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
