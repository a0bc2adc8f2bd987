"""A turn's top traits: where its mean activation falls on each trait vector, against the archetypes' spread.

Pure math at one layer; no model, no files. For each trait vector ``t`` (from the opposite toward the trait) with unit
``u = t / |t|``, the turn's mean activation ``x`` ``(d,)`` has the projection ``p = x . u``; the archetypes' role vectors
``R`` ``(n_roles, d)`` give ``R u``, with mean ``mu`` and standard deviation ``sd``. The trait's score is
``z = (p - mu) / sd``: how many archetype spreads the turn sits toward the trait (``z > 0``) or its opposite
(``z < 0``), so traits whose vectors differ in length or offset compare on one scale.

:func:`trait_statistics` computes ``u``, ``mu`` and ``sd`` once per space; :func:`top_traits` scores one turn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

_EPS = 1e-12


@dataclass(frozen=True)
class TraitStatistics:
    """Per trait at one layer: its unit vector and the archetypes' projections' mean and standard deviation.

    A trait is *unusable* (never ranked) when its vector is zero or the archetypes do not spread along it."""

    names: list[str]
    units: torch.Tensor  # (T, d) float64
    mean: torch.Tensor  # (T,) float64
    std: torch.Tensor  # (T,) float64 (population standard deviation over the archetypes)
    weak: list[bool]
    usable: list[bool]


def trait_statistics(
    names: Sequence[str], vectors: torch.Tensor, role_vectors: torch.Tensor, weak: Sequence[bool] | None = None
) -> TraitStatistics:
    """Statistics of ``vectors`` ``(T, d)`` (one per name) over the archetypes' ``role_vectors`` ``(R, d)``."""
    if vectors.dim() != 2 or role_vectors.dim() != 2 or vectors.shape[1] != role_vectors.shape[1]:
        raise ValueError(
            f"trait vectors {tuple(vectors.shape)} and role vectors {tuple(role_vectors.shape)} must be (T, d) and (R, d)"
        )
    if len(names) != vectors.shape[0]:
        raise ValueError(f"{len(names)} trait names for {vectors.shape[0]} trait vectors")
    if role_vectors.shape[0] < 2:
        raise ValueError(f"the archetypes' spread needs at least 2 role vectors, got {role_vectors.shape[0]}")
    v = vectors.double()
    norms = v.norm(dim=-1)
    units = torch.where(norms[:, None] > _EPS, v / norms.clamp_min(_EPS)[:, None], torch.zeros_like(v))
    projections = role_vectors.double() @ units.T  # (R, T)
    mean, std = projections.mean(0), projections.std(0, correction=0)
    usable = [bool(n > _EPS and s > _EPS) for n, s in zip(norms.tolist(), std.tolist(), strict=True)]
    flags = [False] * len(names) if weak is None else [bool(w) for w in weak]
    if len(flags) != len(names):
        raise ValueError(f"{len(flags)} weak flags for {len(names)} traits")
    return TraitStatistics(list(names), units, mean, std, flags, usable)


def trait_scores(stats: TraitStatistics, activation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(projections (T,), z (T,))`` of one activation ``(d,)``; z is NaN for an unusable trait."""
    p = stats.units @ activation.double()
    z = (p - stats.mean) / stats.std.clamp_min(_EPS)
    return p, torch.where(torch.tensor(stats.usable, dtype=torch.bool), z, torch.full_like(z, float("nan")))


def top_traits(stats: TraitStatistics, activation: torch.Tensor, k: int = 3, include_weak: bool = False) -> dict[str, Any]:
    """The ``k`` traits the activation ``(d,)`` leans toward most (``top``, largest z first) and the ``k`` it leans
    away from most (``bottom``, most negative first), each ``{"name", "z", "projection"}``; weak traits are left out
    unless ``include_weak`` (then each entry says ``weak``). ``top`` holds only positive z, ``bottom`` only negative."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    p, z = trait_scores(stats, activation)
    ranked = [
        i for i in range(len(stats.names)) if stats.usable[i] and (include_weak or not stats.weak[i])
    ]  # fmt: skip
    ranked.sort(key=lambda i: float(z[i]), reverse=True)

    def entry(i: int) -> dict[str, Any]:
        out: dict[str, Any] = {"name": stats.names[i], "z": round(float(z[i]), 3), "projection": round(float(p[i]), 5)}
        if include_weak:
            out["weak"] = stats.weak[i]
        return out

    top = [entry(i) for i in ranked[:k] if float(z[i]) > 0]
    bottom = [entry(i) for i in ranked[::-1][:k] if float(z[i]) < 0]
    return {"top": top, "bottom": bottom}
