"""Distribution figures in evaluator features: Frechet distance and within-prompt diversity.

The features come from a small evaluator network (`evaluator_net.EvaluatorNet.features`, trained on real data
only); these functions only see arrays, so they serve the shapes and the digits evaluators alike.
The mean collapse of a 1-step flow-matching model shows here even where a classifier still reads the
blurry mean correctly: its samples sit close together (low diversity) and away from the data (high FD).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from twinflow_core.errors import DataError


def gaussian_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    feats = np.asarray(feats, dtype=np.float64)
    if feats.ndim != 2 or len(feats) < 2:
        raise DataError(f"Frechet distance needs at least 2 feature vectors, got shape {feats.shape}")
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)), the FID formula, on any features.

    The matrix square root is taken through the symmetric form S_a^(1/2) S_b S_a^(1/2), whose
    eigenvalues are real and non-negative, so no complex parts or singular-matrix retries are needed.
    """
    mu_a, s_a = gaussian_stats(feats_a)
    mu_b, s_b = gaussian_stats(feats_b)
    w, v = np.linalg.eigh(s_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root_a @ s_b @ root_a)
    tr_covmean = np.sqrt(np.clip(inner, 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2.0 * tr_covmean)


def diversity(feats: np.ndarray, groups: Sequence[Hashable]) -> float:
    """Mean, over groups (prompts or classes) with at least 2 members, of the mean pairwise L2 distance
    between the group's feature vectors."""
    feats = np.asarray(feats, dtype=np.float64)
    if len(feats) != len(groups):
        raise DataError(f"diversity: {len(feats)} feature vectors but {len(groups)} group labels")
    index: dict[Hashable, list[int]] = {}
    for i, g in enumerate(groups):
        index.setdefault(g, []).append(i)
    per_group = []
    for members in index.values():
        if len(members) < 2:
            continue
        f = feats[members]
        d = np.sqrt(np.clip(((f[:, None, :] - f[None, :, :]) ** 2).sum(-1), 0, None))
        n = len(members)
        per_group.append(d.sum() / (n * (n - 1)))
    if not per_group:
        raise DataError("diversity needs at least one prompt with 2 or more images")
    return float(np.mean(per_group))
