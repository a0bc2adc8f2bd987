"""Numpy-only maths of the trait space at one layer: cosines of trait vectors with a direction, the trait space's
own PCA (fitted on chosen rows, every row placed with the same fit), and projections on a unit direction. No torch,
so the torch-free view of a space (:mod:`backend.view.traits`) can use it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def unit(vector: np.ndarray) -> np.ndarray:
    """``vector`` ``(d,)`` scaled to length 1 (float64); a zero vector is refused."""
    v = np.asarray(vector, dtype=np.float64)
    norm = float(np.linalg.norm(v))
    if not np.isfinite(norm) or norm == 0.0:
        raise ValueError("a zero or non-finite vector has no direction")
    return v / norm


def row_cosines(vectors: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Cosine of each row of ``(n, d)`` ``vectors`` with ``direction`` ``(d,)``; a zero row gets 0."""
    x = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1)
    dots = x @ unit(direction)
    return np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)


def projections(vectors: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Scalar projection of each row of ``(n, d)`` ``vectors`` on the unit ``direction`` ``(d,)``."""
    return np.asarray(vectors, dtype=np.float64) @ unit(direction)


@dataclass(frozen=True)
class TraitPCA:
    coords: np.ndarray  # (n, k): every row, placed with the fit
    variance_ratio: np.ndarray  # (k,): share of the fitted rows' variance per component
    components: np.ndarray  # (k, d), orthonormal rows


def fitted_pca(vectors: np.ndarray, fit: np.ndarray, k: int = 3) -> TraitPCA:
    """PCA of the rows of ``(n, d)`` ``vectors`` where the boolean ``fit`` ``(n,)`` holds, centred on their mean,
    ``k`` components at most (fewer when the fitted rows span fewer); every row is placed with that fit. Each
    component's sign makes its largest-magnitude loading positive, so a rebuilt space draws the same map."""
    x = np.asarray(vectors, dtype=np.float64)
    chosen = x[np.asarray(fit, dtype=bool)]
    if chosen.shape[0] < 2:
        raise ValueError(f"a PCA needs at least 2 fitted rows, got {chosen.shape[0]}")
    mean = chosen.mean(0)
    _, sing, vt = np.linalg.svd(chosen - mean, full_matrices=False)
    k = min(k, chosen.shape[0] - 1, vt.shape[0])
    comps = vt[:k].copy()
    for i in range(k):
        if comps[i, np.argmax(np.abs(comps[i]))] < 0:
            comps[i] *= -1
    total = float((sing**2).sum()) or 1.0
    return TraitPCA(coords=(x - mean) @ comps.T, variance_ratio=sing[:k] ** 2 / total, components=comps)
