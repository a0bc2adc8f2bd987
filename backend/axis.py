"""Pure math of the Assistant Axis: no hooks, no models, tensors in and tensors out.

Conventions used everywhere in this package:

* Activations are decoder-block outputs (the residual stream). A per-answer or per-role vector has shape
  ``(n_layers, hidden)``; a stack of them ``(n, n_layers, hidden)``.
* ``axis[L] = mean(default vectors)[L] - mean(role vectors)[L]``, shape ``(n_layers, hidden)``, not normalised.
  It points **from role-play toward the Assistant**: a higher projection is more Assistant-like.
* The projection of an activation ``h`` on a direction ``a`` is the scalar ``h . a / |a|`` (raw units, comparable
  only within one model and layer).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from backend.errors import InterventionError


def _check_finite(name: str, tensor: torch.Tensor) -> None:
    if not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise InterventionError(f"{name} has {bad} non-finite value(s) (NaN or inf) out of {tensor.numel()}")


def compute_axis(default_vectors: torch.Tensor, role_vectors: torch.Tensor) -> torch.Tensor:
    """The Assistant Axis: ``mean(default_vectors) - mean(role_vectors)`` per layer.

    Args:
        default_vectors: ``(n_default, n_layers, hidden)`` per-answer vectors of the default Assistant, or their
            mean ``(n_layers, hidden)``.
        role_vectors: ``(n_roles, n_layers, hidden)``, one vector per kept role.

    Returns:
        ``(n_layers, hidden)``, pointing toward the Assistant.
    """
    default_mean = default_vectors if default_vectors.dim() == 2 else default_vectors.mean(dim=0)
    if role_vectors.dim() != 3:
        raise InterventionError(f"role_vectors must be (n_roles, n_layers, hidden), got shape {tuple(role_vectors.shape)}")
    if role_vectors.shape[0] == 0:
        raise InterventionError("need at least one role vector to compute the axis, got 0")
    if default_mean.shape != role_vectors.shape[1:]:
        raise InterventionError(
            f"default vectors are {tuple(default_mean.shape)} per answer but role vectors are "
            f"{tuple(role_vectors.shape[1:])}: both must be (n_layers, hidden) of the same model"
        )
    return default_mean - role_vectors.mean(dim=0)


def unit(vector: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``vector / |vector|`` along the last dimension; a zero vector is an error, not a NaN."""
    norm = vector.norm(dim=-1, keepdim=True)
    if bool((norm <= eps).any()):
        raise InterventionError("cannot normalise a zero-length direction (the axis is zero at some layer)")
    return vector / norm


def project(hidden: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """Scalar projection ``hidden . direction / |direction|``.

    ``hidden`` is ``(..., d)`` and ``direction`` is ``(d,)``; returns ``(...)``. With per-layer inputs ``hidden``
    ``(..., n_layers, d)`` and ``direction`` ``(n_layers, d)``, returns ``(..., n_layers)``.
    """
    if hidden.shape[-1] != direction.shape[-1]:
        raise InterventionError(
            f"vector length {direction.shape[-1]} does not match the activations' hidden size {hidden.shape[-1]}"
        )
    u = unit(direction.to(hidden.dtype))
    return (hidden * u).sum(dim=-1)


def cap_floor(hidden: torch.Tensor, unit_direction: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Activation capping as the paper uses it: a floor on the projection on a unit direction.

    ``h <- h + u * max(tau - h.u, 0)``. Components orthogonal to ``u`` and any ``h`` already at or above ``tau``
    are untouched (rows that need no change are returned bit-identical).

    Args:
        hidden: ``(..., d)`` activations.
        unit_direction: ``(d,)`` unit-norm direction (the unit Assistant Axis at that layer).
        tau: the floor, in the same raw units as :func:`project`.

    Returns:
        ``(capped, delta)``: the capped activations ``(..., d)`` and how far each was moved along ``u``
        (``(...)``, ``>= 0``).
    """
    capped, delta, _ = cap_floor_with_projection(hidden, unit_direction, tau)
    return capped, delta


def cap_floor_with_projection(
    hidden: torch.Tensor, unit_direction: torch.Tensor, tau: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`cap_floor` that also returns the projection before the cap, ``(...)`` (one matmul for both)."""
    u = unit_direction.to(hidden.dtype)
    proj = hidden @ u
    delta = (tau - proj).clamp_min_(0)
    if tau == -math.inf:
        return hidden, delta, proj
    # Adding an exact zero leaves a finite value bit-identical, so rows already at or above tau are untouched
    # without a data-dependent branch (which would force a GPU sync at every capped layer of every token).
    return torch.addcmul(hidden, delta.unsqueeze(-1), u), delta, proj


def steering_vector(direction: torch.Tensor, scale: float) -> torch.Tensor:
    """The additive steering vector for coefficient 1 on the normalised scale: ``unit(direction) * scale``.

    ``scale`` is the typical activation norm at that layer (e.g. the mean norm of the role vectors), so a
    coefficient ``c`` moves activations by ``c`` times a typical norm: comparable across models whose axis norms
    differ by orders of magnitude. ``c > 0`` steers toward the Assistant, ``c < 0`` toward role-play.
    """
    if not math.isfinite(scale) or scale <= 0:
        raise InterventionError(f"steering scale must be a positive finite number, got {scale}")
    return unit(direction) * scale


def steer(hidden: torch.Tensor, vector: torch.Tensor, coefficient: float) -> torch.Tensor:
    """Additive steering ``h + coefficient * vector`` (``vector`` is ``(d,)``, ``hidden`` ``(..., d)``)."""
    return hidden + coefficient * vector.to(hidden.dtype)


def cosine_per_layer(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of two ``(n_layers, d)`` stacks, layer by layer -> ``(n_layers,)``."""
    if a.shape != b.shape:
        raise InterventionError(f"cannot compare shapes {tuple(a.shape)} and {tuple(b.shape)}")
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1).to(a.dtype)


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


def percentile_thresholds(projections: torch.Tensor, percentiles: Sequence[float]) -> dict[float, torch.Tensor]:
    """Cap thresholds per layer from a pool of per-answer projections.

    ``projections`` is ``(n_answers, n_layers)`` (each answer's mean activation projected on the axis at each
    layer). Returns ``{percentile: (n_layers,)}``. The paper's recommended floor is the 75th percentile of the
    Assistant-axis projections of the pool (its "p0.25" on the negated axis).
    """
    if projections.dim() != 2 or projections.shape[0] == 0:
        raise InterventionError(f"projections must be (n_answers >= 1, n_layers), got {tuple(projections.shape)}")
    _check_finite("projection pool", projections)
    out: dict[float, torch.Tensor] = {}
    for p in percentiles:
        if not (isinstance(p, (int, float)) and math.isfinite(p) and 0 <= p <= 100):
            raise InterventionError(f"percentile must be a number in [0, 100], got {p!r}")
        out[float(p)] = torch.quantile(projections.double(), float(p) / 100.0, dim=0).to(projections.dtype)
    return out


def cap_floor_rows(
    hidden: torch.Tensor, unit_direction: torch.Tensor, tau: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`cap_floor_with_projection` with one floor per row: ``hidden`` ``(rows, n, d)``, ``tau`` ``(rows,)``.

    A row whose ``tau`` is ``-inf`` moves by an exact zero, so it comes back bit-identical; no branch depends on the
    values (nothing has to be read back from the device). Returns ``(capped, delta, projection_before)``.
    """
    u = unit_direction.to(hidden.dtype)
    proj = hidden @ u
    delta = (tau.to(hidden.dtype).unsqueeze(-1) - proj).clamp_min_(0)
    return torch.addcmul(hidden, delta.unsqueeze(-1), u), delta, proj


def steer_rows(hidden: torch.Tensor, vector: torch.Tensor, coefficient: torch.Tensor) -> torch.Tensor:
    """:func:`steer` with one coefficient per row: ``hidden`` ``(rows, n, d)``, ``coefficient`` ``(rows,)``.

    A row whose coefficient is 0 gets an exact zero added (bit-identical).
    """
    return hidden + coefficient.to(hidden.dtype)[:, None, None] * vector.to(hidden.dtype)
