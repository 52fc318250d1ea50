"""2-D toy distributions (in their own units) and user-supplied (n, 2) .npy samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from twinflow_core.errors import DataError

EIGHT_GAUSSIANS_RADIUS = 2.0
EIGHT_GAUSSIANS_STD = 0.1


def eight_gaussian_centers() -> np.ndarray:
    angles = np.arange(8) * (2 * np.pi / 8)
    return EIGHT_GAUSSIANS_RADIUS * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def eight_gaussians(n: int, rng: np.random.Generator) -> np.ndarray:
    centers = eight_gaussian_centers()
    return centers[rng.integers(0, 8, n)] + EIGHT_GAUSSIANS_STD * rng.standard_normal((n, 2))


def checkerboard(n: int, rng: np.random.Generator) -> np.ndarray:
    """4x4 board on [-2, 2]^2, mass on the 8 squares whose row + column is even."""
    x1 = rng.uniform(-2, 2, n)
    x2 = rng.uniform(0, 1, n) + np.floor(rng.uniform(-2, 2, n))
    x2 = x2 + (np.floor(x1) % 2)  # shift to the matching colour of the board
    x2 = (x2 + 2) % 4 - 2
    return np.stack([x1, x2], axis=1)


def moons(n: int, rng: np.random.Generator, noise: float = 0.05) -> np.ndarray:
    half = n // 2
    a = rng.uniform(0, np.pi, half)
    b = rng.uniform(0, np.pi, n - half)
    upper = np.stack([np.cos(a), np.sin(a)], axis=1)
    lower = np.stack([1 - np.cos(b), 0.5 - np.sin(b)], axis=1)
    pts = np.concatenate([upper, lower])[rng.permutation(n)]
    return pts + noise * rng.standard_normal((n, 2))


def swissroll(n: int, rng: np.random.Generator, noise: float = 0.25) -> np.ndarray:
    s = 1.5 * np.pi * (1 + 2 * rng.uniform(0, 1, n))
    pts = np.stack([s * np.cos(s), s * np.sin(s)], axis=1) / 3.0
    return pts + noise * rng.standard_normal((n, 2))


DISTRIBUTIONS = {"8gaussians": eight_gaussians, "checkerboard": checkerboard, "moons": moons, "swissroll": swissroll}


def load_points(path: str | Path) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file (expected an (n, 2) float array saved with numpy.save)")
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as err:  # numpy raises several types for a corrupt file
        raise DataError(f"{path}: not a readable .npy array ({err.__class__.__name__}: {err})") from None
    if arr.ndim != 2 or arr.shape[1] != 2 or not np.issubdtype(arr.dtype, np.number):
        raise DataError(f"{path}: expected a numeric array of shape (n, 2), got {arr.dtype} {arr.shape}")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise DataError(f"{path}: contains NaN or infinite values")
    if len(arr) < 200:
        raise DataError(f"{path}: only {len(arr)} points; need at least 200 (train + held-out split)")
    return arr


def make_split(data: str, seed: int, n_train: int = 50_000, n_test: int = 10_000):
    """(train, held_out) arrays in data units. A .npy path is shuffled and split (held-out: 20%, at most n_test)."""
    rng = np.random.default_rng(seed)
    if data in DISTRIBUTIONS:
        fn = DISTRIBUTIONS[data]
        return fn(n_train, rng), fn(n_test, np.random.default_rng(seed + 10_007))
    if data.endswith(".npy"):
        arr = load_points(data)
        arr = arr[rng.permutation(len(arr))]
        n_hold = min(n_test, len(arr) // 5)
        return arr[n_hold:], arr[:n_hold]
    raise DataError(f"unknown --data {data!r}: use one of {', '.join(DISTRIBUTIONS)} or a path ending in .npy")
