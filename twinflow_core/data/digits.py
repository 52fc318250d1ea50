"""scikit-learn's handwritten digits (1,797 real 8x8 scans, shipped inside sklearn) as text-to-image data.

Caption "a handwritten digit 7", label 7. Pixels 0..16 are scaled to 0..255 (bright strokes on black),
resized bicubically to the configured size and stored as RGB with the grey value in all three channels,
so every prepared dataset has one mode.
"""
# Lazy imports: sklearn
# (slow to load or not in the base install: only the functions that use them load them)
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from twinflow_core.data.sample import Sample
from PIL import Image

CLASSES = tuple(str(d) for d in range(10))
N_DIGITS = 1797


def caption(digit: int) -> str:
    return f"a handwritten digit {digit}"


def vocabulary() -> list[str]:
    return sorted({"a", "handwritten", "digit", *CLASSES})


def digits_samples(size: int, limit: int | None = None) -> Iterator[Sample]:
    """All digits in sklearn's order (or the first `limit`), resized to size x size RGB."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = np.rint(data.images * (255.0 / 16.0)).astype(np.uint8)
    n = len(images) if limit is None else min(limit, len(images))
    for i in range(n):
        grey = np.asarray(Image.fromarray(images[i], mode="L").resize((size, size), Image.BICUBIC))
        label = int(data.target[i])
        yield Sample(np.repeat(grey[:, :, None], 3, axis=2), caption(label), "digit", f"digits:{i}", label)
