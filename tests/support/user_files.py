"""Inputs a user brings, built with plain libraries (PIL, json), never with the project's own helpers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def image_folder_with_a_bad_image(folder: Path) -> Path:
    """An image folder as a user makes one (metadata.jsonl beside the files) where `b.png` is not an image."""
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "c.png"):
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(folder / name)
    (folder / "b.png").write_bytes(b"this is not a png\n")
    rows = [{"file_name": n, "text": t} for n, t in (("a.png", "a cat"), ("b.png", "a dog"), ("c.png", "a fox"))]
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder
