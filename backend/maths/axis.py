"""Pure math of the Assistant Axis: no hooks, no models, tensors in and tensors out.

Conventions used everywhere in this package:

* Activations are decoder-block outputs (the residual stream). A per-answer or per-role vector has shape
  ``(n_layers, hidden)``; a stack of them ``(n, n_layers, hidden)``.
* ``axis[L] = mean(default vectors)[L] - mean(role vectors)[L]``, shape ``(n_layers, hidden)``, not normalised.
  It points **from role-play toward the Assistant**: a higher projection is more Assistant-like.
* The projection of an activation ``h`` on a direction ``a`` is the scalar ``h . a / |a|`` (raw units, comparable
  only within one model and layer)."""

from __future__ import annotations

import math
from collections.abc import Sequence

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


def cosine_per_layer(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of two ``(n_layers, d)`` stacks, layer by layer -> ``(n_layers,)``."""
    if a.shape != b.shape:
        raise InterventionError(f"cannot compare shapes {tuple(a.shape)} and {tuple(b.shape)}")
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1).to(a.dtype)


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
