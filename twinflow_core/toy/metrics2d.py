"""Sample-based distances between 2-D point sets (computed in the data's own units).

sliced Wasserstein-2 (random projections, sorted quantiles), MMD^2 with a mixture of RBF bandwidths scaled to
the reference's spread, energy distance, and mode coverage for 8 gaussians.
"""

from __future__ import annotations

import numpy as np


def sliced_wasserstein(x: np.ndarray, y: np.ndarray, n_proj: int = 512, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    dirs = rng.standard_normal((n_proj, x.shape[1]))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    qs = np.linspace(0.0005, 0.9995, 2000)
    px = quantiles(x @ dirs.T, qs)
    py = quantiles(y @ dirs.T, qs)
    return float(np.sqrt(np.mean((px - py) ** 2)))


def quantiles(v: np.ndarray, qs: np.ndarray) -> np.ndarray:
    """np.quantile(v, qs, axis=0) with its default linear rule, bitwise, from one sort of each column: numpy
    partitions once per quantile, 35x slower for 2000 quantiles of 4000 x 512 projections."""
    s = np.sort(v, axis=0)
    n = s.shape[0]
    virtual = qs * (n - 1)
    below = np.floor(virtual)
    gamma = (virtual - below)[:, None]
    lo = np.clip(below.astype(np.intp), 0, n - 1)
    a, b = s[lo], s[np.clip(lo + 1, 0, n - 1)]
    step = b - a
    out = np.add(a, step * gamma)
    np.subtract(b, step * (1 - gamma), out=out, where=gamma >= 0.5)  # numpy's lerp, from the nearer end
    return out


def _subsample(a: np.ndarray, n: int, seed: int) -> np.ndarray:
    if len(a) <= n:
        return a
    return a[np.random.default_rng(seed).choice(len(a), n, replace=False)]


def _sqdist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2 * a @ b.T, 0.0)


def mmd_rbf(
    x: np.ndarray, y: np.ndarray, scales=(0.05, 0.1, 0.2, 0.5, 1.0, 2.0), n: int = 2000, seed: int = 0
) -> float:
    """Biased MMD^2 with sum of RBF kernels; bandwidths are `scales` x the mean per-axis std of y."""
    x, y = _subsample(x, n, seed), _subsample(y, n, seed + 1)
    spread = float(y.std(axis=0).mean())
    dxx, dyy, dxy = _sqdist(x, x), _sqdist(y, y), _sqdist(x, y)
    total = 0.0
    for s in scales:
        h2 = 2 * (s * spread) ** 2
        total += np.exp(-dxx / h2).mean() + np.exp(-dyy / h2).mean() - 2 * np.exp(-dxy / h2).mean()
    return float(total)


def energy_distance(x: np.ndarray, y: np.ndarray, n: int = 2000, seed: int = 0) -> float:
    x, y = _subsample(x, n, seed), _subsample(y, n, seed + 1)
    d = lambda a, b: np.sqrt(_sqdist(a, b)).mean()  # noqa: E731
    return float(2 * d(x, y) - d(x, x) - d(y, y))


def mode_coverage(x: np.ndarray, centers: np.ndarray, std: float, min_share: float = 0.02) -> dict:
    """Share of samples within 3 std of a mode, modes holding >= min_share of those, KL(per-mode counts || uniform)."""
    dist = np.sqrt(_sqdist(x, centers))
    nearest = dist.argmin(1)
    close = dist.min(1) <= 3 * std
    counts = np.bincount(nearest[close], minlength=len(centers)).astype(float)
    share = counts / max(counts.sum(), 1.0)
    kl = float(np.sum(np.where(share > 0, share * np.log(np.maximum(share, 1e-12) * len(centers)), 0.0)))
    return {
        "in_mode_fraction": float(close.mean()),
        "modes_covered": int((share >= min_share).sum()),
        "mode_kl": kl,
    }


def all_metrics(samples: np.ndarray, held_out: np.ndarray, seed: int = 0) -> dict:
    return {
        "sliced_w2": sliced_wasserstein(samples, held_out, seed=seed),
        "mmd": mmd_rbf(samples, held_out, seed=seed),
        "energy": energy_distance(samples, held_out, seed=seed),
    }
