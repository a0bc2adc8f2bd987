"""The two edits of the residual stream, as pure functions: the cap (a floor on a projection) and steering.

Shapes: ``hidden`` is ``(batch, positions, d)`` (or any ``(..., d)``); directions are ``(d,)``. The axis points toward
the Assistant (see :mod:`backend.maths.axis`), so a floor on its projection keeps activations Assistant-like and a
positive steering coefficient pushes toward the Assistant.
"""

from __future__ import annotations

import math

import torch

from backend.errors import InterventionError
from backend.maths.axis import unit


def cap_floor(
    hidden: torch.Tensor, unit_direction: torch.Tensor, tau: float | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Activation capping as the paper uses it: a floor on the projection on a unit direction.

    ``h <- h + u * max(tau - h.u, 0)``. Components orthogonal to ``u`` and any ``h`` already at or above ``tau``
    are untouched: they move by an exact zero, so they come back bit-identical, without a branch that depends on
    the values (which would force a GPU sync at every capped layer of every token).

    Args:
        hidden: ``(rows, positions, d)`` activations (any ``(..., d)`` with one floor).
        unit_direction: ``(d,)`` unit-norm direction (the unit Assistant Axis at that layer), or one per row,
            ``(rows, d)``, for ``hidden`` ``(rows, positions, d)`` (the cap evaluation's placebo rows cap along
            other directions in the same batch).
        tau: the floor, in the same raw units as :func:`backend.maths.axis.project`: one number, or one per row,
            ``(rows,)`` (``-inf`` = that row is not capped).

    Returns:
        ``(capped, delta, before)``: the capped activations ``(..., d)``, how far each was moved along ``u``
        (``(...)``, ``>= 0``) and the projection before the cap (``(...)``; one product gives both).
    """
    u = unit_direction.to(hidden.dtype)
    if u.dim() == 2:  # one direction per row: (rows, d) against (rows, positions, d)
        before = torch.matmul(hidden, u.unsqueeze(-1)).squeeze(-1)
        u = u.unsqueeze(-2)
    else:
        before = hidden @ u
    if isinstance(tau, torch.Tensor):
        floor = tau.to(hidden.dtype).reshape(tuple(tau.shape) + (1,) * (before.dim() - tau.dim()))
        delta = (floor - before).clamp_min_(0)
    else:
        delta = (tau - before).clamp_min_(0)
        if tau == -math.inf:
            return hidden, delta, before
    return torch.addcmul(hidden, delta.unsqueeze(-1), u), delta, before


def steering_vector(direction: torch.Tensor, scale: float) -> torch.Tensor:
    """The additive steering vector for coefficient 1 on the normalised scale: ``unit(direction) * scale``.

    ``scale`` is the typical activation norm at that layer (e.g. the mean norm of the role vectors), so a
    coefficient ``c`` moves activations by ``c`` times a typical norm: comparable across models whose axis norms
    differ by orders of magnitude. ``c > 0`` steers toward the Assistant, ``c < 0`` toward role-play.
    """
    if not math.isfinite(scale) or scale <= 0:
        raise InterventionError(f"steering scale must be a positive finite number, got {scale}")
    return unit(direction) * scale


def steer(hidden: torch.Tensor, vector: torch.Tensor, coefficient: float | torch.Tensor) -> torch.Tensor:
    """Additive steering ``h + coefficient * vector``: ``vector`` ``(d,)`` (or one per row, ``(rows, 1, d)``), ``hidden``
    ``(rows, positions, d)``.

    ``coefficient`` is one number, or one per row, ``(rows,)``; a row whose coefficient is 0 gets an exact zero
    added (bit-identical).
    """
    if isinstance(coefficient, torch.Tensor):
        c = coefficient.to(hidden.dtype).reshape(tuple(coefficient.shape) + (1,) * (hidden.dim() - coefficient.dim()))
        return hidden + c * vector.to(hidden.dtype)
    return hidden + coefficient * vector.to(hidden.dtype)
