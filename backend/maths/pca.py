"""PCA of role vectors at one layer, centred on the role mean, the sign of PC1 fixed to agree with the axis."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from backend.errors import InterventionError


@dataclass(frozen=True)
class PCAResult:
    """PCA of role vectors at one layer, centred on the role mean, no per-dimension scaling.

    ``components`` is ``(k, d)`` with orthonormal rows; the sign of PC1 is fixed so that ``cos(PC1, axis) > 0``
    (PC1 points toward the Assistant like the axis). ``coords`` are the fitted vectors' coordinates ``(n, k)``.
    """

    mean: np.ndarray
    components: np.ndarray
    explained_variance_ratio: np.ndarray
    coords: np.ndarray

    def transform(self, vectors: np.ndarray) -> np.ndarray:
        """Coordinates ``(n, k)`` of ``(n, d)`` vectors (e.g. the default vector, a conversation's turns)."""
        return (np.asarray(vectors, dtype=np.float64) - self.mean) @ self.components.T

    def axis_cosine(self, axis: np.ndarray) -> float:
        """``cos(PC1, axis)`` (``>= 0`` by construction when fitted with that axis)."""
        a = np.asarray(axis, dtype=np.float64)
        return float(self.components[0] @ a / (np.linalg.norm(a) * np.linalg.norm(self.components[0])))


def fit_pca(
    vectors: np.ndarray | torch.Tensor, axis: np.ndarray | torch.Tensor | None = None, n_components: int | None = None
) -> PCAResult:
    """PCA of ``(n, d)`` vectors with scikit-learn (full SVD, deterministic).

    When ``axis`` ``(d,)`` is given, every component's sign is made deterministic and PC1's sign is flipped so
    that ``cos(PC1, axis) >= 0``. The other components get the sign that makes their largest-magnitude loading
    positive, so a rebuilt space draws the same picture.
    """
    from sklearn.decomposition import PCA

    x = np.asarray(vectors.double().cpu().numpy() if isinstance(vectors, torch.Tensor) else vectors, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise InterventionError(f"PCA needs an (n >= 2, d) matrix, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise InterventionError("PCA input contains NaN or inf")
    k = min(x.shape) if n_components is None else min(n_components, *x.shape)
    pca = PCA(n_components=k, svd_solver="full")
    pca.fit(x)
    components = pca.components_.copy()
    for i in range(components.shape[0]):
        pivot = np.argmax(np.abs(components[i]))
        if components[i, pivot] < 0:
            components[i] *= -1
    if axis is not None:
        a = np.asarray(axis.double().cpu().numpy() if isinstance(axis, torch.Tensor) else axis, dtype=np.float64)
        if a.shape != (x.shape[1],):
            raise InterventionError(f"axis has shape {a.shape}, expected ({x.shape[1]},)")
        if components[0] @ a < 0:
            components[0] *= -1
    mean = pca.mean_.copy()
    coords = (x - mean) @ components.T
    return PCAResult(
        mean=mean, components=components, explained_variance_ratio=pca.explained_variance_ratio_.copy(), coords=coords
    )


def components_for_variance(explained_variance_ratio: Sequence[float] | np.ndarray, fraction: float = 0.7) -> int:
    """How many leading components explain at least ``fraction`` of the variance."""
    cumulative = np.cumsum(np.asarray(explained_variance_ratio, dtype=np.float64))
    return int(np.searchsorted(cumulative, fraction - 1e-12) + 1)
