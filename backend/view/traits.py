"""A torch-free view of a space's traits at one layer, for the worker's ``/traits`` routes and the Traits page.

:func:`trait_summary` lists every trait with its description, its opposite, whether it is weak, its cosine with the
Assistant Axis and with PC1-PC3 of the persona space, and its place in the trait space's own PCA (2D and 3D, fitted
on the non-weak traits, the weak ones placed with the same fit). :func:`trait_archetypes` projects every archetype's
role vector, and the default Assistant's, on one unit trait vector. The maths is :mod:`backend.maths.trait_space`;
the traits are the space's ``trait_vectors`` tensor and ``trait_set`` field (see :mod:`backend.store.traits`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from backend.maths.trait_space import fitted_pca, projections, row_cosines
from backend.view.space import SpaceView, SpaceViewError

TRAIT_TENSOR = "trait_vectors"  # as backend.store.trait_check names them (the view may not import the store)
TRAIT_FIELD = "trait_set"
BUILD_HINT = "build them with `python -m backend build-traits` (see docs/traits.md)"


class NoTraits(SpaceViewError):
    """The space has no trait vectors."""


class UnknownTrait(SpaceViewError):
    """The space has no vector for the trait asked for."""


def _layer(view: SpaceView, layer: int | None) -> int:
    chosen = view.target_layer if layer is None else int(layer)
    if not 0 <= chosen < view.n_layers:
        raise SpaceViewError(f"layer {chosen} is out of range: the model has layers 0..{view.n_layers - 1}")
    return chosen


def _traits(view: SpaceView) -> tuple[list[str], np.ndarray, dict[str, dict[str, Any]]]:
    field = view.manifest.get(TRAIT_FIELD)
    if not isinstance(field, dict) or TRAIT_TENSOR not in view.arrays or not field.get("kept_order"):
        raise NoTraits(f"the space at {view.path} has no trait vectors: {BUILD_HINT}")
    entries = {e["name"]: e for e in field["traits"]}
    return list(field["kept_order"]), view.arrays[TRAIT_TENSOR], entries


def trait_summary(view: SpaceView, layer: int | None = None) -> dict[str, Any]:
    """``{"layer", "target_layer", "n_layers", "model", "traits": [...], "pca_variance", "pca_fit", "dropped"}``;
    each trait: ``name, description, opposite, weak, axis_cosine, pc_cosines, pca_2d, pca_3d`` (the PCA places are
    None when fewer than two traits can be fitted, and 0 on a component the fitted traits do not span). Raises :class:`NoTraits` for a space without traits."""
    names, tensor, entries = _traits(view)
    chosen = _layer(view, layer)
    vectors = tensor[:, chosen].astype(np.float64)
    axis_cos = row_cosines(vectors, view.arrays["axis"][chosen])
    pcs = view.arrays["pca_components"][chosen][:3]
    pc_cos = np.stack([row_cosines(vectors, pc) for pc in pcs], axis=1) if len(pcs) else np.zeros((len(names), 0))
    weak = np.array([bool(entries[n].get("weak")) for n in names])
    fit = ~weak if int((~weak).sum()) >= 3 else np.ones_like(weak)
    coords: np.ndarray | None = None
    variance: list[float] = []
    if int(fit.sum()) >= 2:
        pca = fitted_pca(vectors, fit, k=3)
        coords, variance = pca.coords, [float(v) for v in pca.variance_ratio]
    traits = []
    for i, name in enumerate(names):
        place = [*(float(x) for x in coords[i]), 0.0, 0.0][:3] if coords is not None else None
        traits.append(
            {
                "name": name,
                "description": entries[name].get("description", ""),
                "opposite": entries[name].get("opposite", ""),
                "weak": bool(weak[i]),
                "axis_cosine": float(axis_cos[i]),
                "pc_cosines": [float(c) for c in pc_cos[i]],
                "pca_2d": place[:2] if place is not None else None,
                "pca_3d": place[:3] if place is not None else None,
            }
        )
    return {
        "layer": chosen,
        "target_layer": view.target_layer,
        "n_layers": view.n_layers,
        "model": view.manifest.get("model"),
        "traits": traits,
        "pca_variance": variance,
        "pca_fit": "non-weak" if int(fit.sum()) < len(names) else "all",
        "dropped": {n: e.get("dropped", "dropped") for n, e in entries.items() if not e.get("kept")},
    }


@dataclass(frozen=True)
class ArchetypeTable:
    """Every kept archetype projected on every trait at one layer: ``values`` ``(T, R)``, ``assistant`` ``(T,)``."""

    layer: int
    traits: list[str]
    entries: dict[str, dict[str, Any]]
    roles: list[dict[str, Any]]  # name, category, weak, in the order of the columns of ``values``
    values: np.ndarray
    assistant: np.ndarray

    def for_trait(self, name: str) -> dict[str, Any]:
        """The archetypes on trait ``name``, highest first, and the default Assistant's projection."""
        if name not in self.traits:
            raise UnknownTrait(f"the space has no vector for trait {name!r} (it has {len(self.traits)} traits)")
        i = self.traits.index(name)
        rows = [{**role, "projection": float(v)} for role, v in zip(self.roles, self.values[i], strict=True)]
        rows.sort(key=lambda r: r["projection"], reverse=True)
        return {
            "trait": name,
            "description": self.entries[name].get("description", ""),
            "weak": bool(self.entries[name].get("weak")),
            "layer": self.layer,
            "archetypes": rows,
            "assistant": float(self.assistant[i]),
        }


def archetype_table(view: SpaceView, layer: int | None = None) -> ArchetypeTable:
    """Every kept archetype's role vector, and the default Assistant's vector, projected on each unit trait vector
    at ``layer`` (default the target layer). Raises :class:`NoTraits`."""
    names, tensor, entries = _traits(view)
    chosen = _layer(view, layer)
    roles = view.arrays["role_vectors"][:, chosen]
    default = view.arrays["default_vector"][chosen][None, :]
    values = np.stack([projections(roles, tensor[i, chosen]) for i in range(len(names))])
    assistant = np.array([projections(default, tensor[i, chosen])[0] for i in range(len(names))])
    kept = [{"name": r["name"], "category": r.get("category", ""), "weak": bool(r.get("weak"))} for r in view.roles]
    return ArchetypeTable(chosen, names, entries, kept, values, assistant)


def trait_archetypes(view: SpaceView, name: str, layer: int | None = None) -> dict[str, Any]:
    """Every kept archetype's role vector projected on the unit vector of trait ``name`` at ``layer`` (default the
    target layer), highest first, and the default Assistant's projection. Raises :class:`UnknownTrait`."""
    return archetype_table(view, layer).for_trait(name)
