"""The traits of a live turn: a space's trait statistics, computed once when the worker loads it, and each finished
turn's top traits (the math is :mod:`backend.maths.trait_scores`).

Also the trait steering vectors: per kept trait and layer ``steering_vector(trait_vector[L], activation_norm[L])``,
the axis's normalised scale, so a coefficient means the same along a trait as along the axis; a positive coefficient
steers toward expressing the trait (trait vectors point from the opposite toward the trait).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from backend.errors import PersonaSpaceError
from backend.maths.edits import steering_vector
from backend.maths.trait_scores import TraitStatistics, top_traits, trait_statistics
from backend.store.space import Space
from backend.store.traits import SpaceTraits, read_traits

log = logging.getLogger("persona_space.worker")

TOP_K = 3  # traits shown at each end for a turn


class TurnTraits:
    """The kept traits of a space with the archetypes' spread along each at the target layer."""

    def __init__(self, space: Space, traits: SpaceTraits) -> None:
        self.layer = space.target_layer
        self.names = list(traits.names)
        self.traits = traits
        self.space = space
        roles = space.tensors["role_vectors"][:, self.layer]
        self.stats: TraitStatistics = trait_statistics(self.names, traits.vectors[:, self.layer], roles, traits.weak)

    @classmethod
    def of(cls, space: Space) -> TurnTraits | None:
        """The space's turn traits, or None for a space without (kept) traits."""
        traits = read_traits(space)
        if traits is None or not traits.names:
            return None
        return cls(space, traits)

    def read(self, mean: torch.Tensor, k: int = TOP_K) -> dict[str, Any]:
        """``{"layer", "top", "bottom", "weak_left_out"}`` of a turn's mean activation ``(d,)`` at the target layer."""
        out = top_traits(self.stats, mean, k=k)
        return {"layer": self.layer, **out, "weak_left_out": sum(self.stats.weak)}

    def steering_vectors(self) -> torch.Tensor:
        """``(T, L, d)`` steering vectors for coefficient 1 along each kept trait (zero where a layer has no usable
        norm or the trait vector is zero there)."""
        norms = self.space.tensors["activation_norm"]
        vectors = self.traits.vectors
        out = torch.zeros(vectors.shape, dtype=torch.float32)
        for t in range(vectors.shape[0]):
            for layer in range(vectors.shape[1]):
                try:
                    out[t, layer] = steering_vector(vectors[t, layer].float(), float(norms[layer]))
                except PersonaSpaceError:
                    log.debug("trait %s cannot be steered at layer %d", self.names[t], layer)
        return out
