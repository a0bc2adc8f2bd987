"""Numpy-only geometry of trait vectors at one layer, for the torch-free view of a space (``backend.view.traits``):
cosines with a direction, scalar projections on a unit direction, and a small PCA whose fit can place other rows.

(``backend.maths.pca`` does the persona space's own PCA with torch inputs; the view must not import torch.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _unit(direction: np.ndarray) -> np.ndarray:
    d = np.asarray(direction, dtype=np.float64)
    norm = float(np.linalg.norm(d))
    if not np.isfinite(norm) or norm <= 1e-12:
        raise ValueError("cannot use a zero-length direction")
    return d / norm


def cosines_with(vectors: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """``cos(v_i, direction)`` for each row of ``vectors`` ``(n, d)``; a zero row has cosine 0."""
    x = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1)
    dots = x @ _unit(direction)
    return np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 1e-12)


def project_on(vectors: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Scalar projection ``v_i . direction / |direction|`` of each row of ``vectors`` ``(n, d)`` (or of one ``(d,)``)."""
    return np.asarray(vectors, dtype=np.float64) @ _unit(direction)


@dataclass(frozen=True)
class SmallPCA:
    """Principal components of some rows, centred on their mean; ``transform`` places any row with the same fit."""

    mean: np.ndarray  # (d,)
    components: np.ndarray  # (k, d), orthonormal rows, each with its largest-magnitude loading positive
    variance_ratio: np.ndarray  # (k,), share of the fitted rows' total variance

    def transform(self, vectors: np.ndarray, k: int) -> np.ndarray:
        """Coordinates ``(n, k)``; columns past the components the fit has are zeros (e.g. 3D from 3 rows)."""
        x = np.asarray(vectors, dtype=np.float64)
        coords = (x - self.mean) @ self.components[:k].T
        if coords.shape[1] < k:
            coords = np.hstack([coords, np.zeros((x.shape[0], k - coords.shape[1]))])
        return coords


def fit_small_pca(vectors: np.ndarray, k: int) -> SmallPCA:
    """The leading ``k`` principal components of ``vectors`` ``(n >= 2, d)`` (SVD of the centred rows; at most
    ``n - 1`` components carry variance, so at most that many are kept)."""
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"PCA needs an (n >= 2, d) matrix, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("PCA input contains NaN or inf")
    mean = x.mean(axis=0)
    _, sing, vt = np.linalg.svd(x - mean, full_matrices=False)
    keep = min(k, x.shape[0] - 1, vt.shape[0])
    comps = vt[:keep].copy()
    for i in range(keep):
        if comps[i, np.argmax(np.abs(comps[i]))] < 0:
            comps[i] *= -1
    total = float((sing**2).sum())
    ratio = sing[:keep] ** 2 / total if total > 0 else np.zeros(keep)
    return SmallPCA(mean=mean, components=comps, variance_ratio=ratio)
