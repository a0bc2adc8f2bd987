"""The worker's steering: along the Assistant Axis or, when its space has traits, along one of them.

Vectors for coefficient 1 on the normalised scale, ``steering_vector(direction[L], activation_norm[L])`` at every
layer (zero where a layer has no usable norm or direction), held as sets for the row controls: set 0 the axis, set
``1 + i`` the space's kept trait ``i`` (:class:`backend.reading.turn_traits.TurnTraits`). A positive coefficient steers
toward the Assistant, or toward expressing the trait. ``steer_trait`` names a set; a name the space has no vector for
is a :class:`~backend.worker.jobs.ControlError` (422).
"""

from __future__ import annotations

import logging

import torch

from backend.errors import PersonaSpaceError
from backend.hooks.interventions import Steer
from backend.maths.edits import steering_vector
from backend.reading.turn_traits import TurnTraits
from backend.store.space import Space
from backend.worker.jobs import ControlError
from backend.worker.schemas import Controls

log = logging.getLogger("persona_space.worker")


class Steering:
    def __init__(self, space: Space, traits: TurnTraits | None) -> None:
        self.space, self.traits = space, traits
        self.axis = space.tensors["axis"]
        self.target = space.target_layer
        self.names = traits.names if traits is not None else []
        axis = self._axis_vectors()
        # (L, d) along the axis alone, or (1 + T, L, d): the axis, then each trait
        self.vectors = axis if traits is None else torch.cat([axis[None], traits.steering_vectors()])

    def _axis_vectors(self) -> torch.Tensor:
        norms = self.space.tensors["activation_norm"]
        out = torch.zeros(self.axis.shape, dtype=torch.float32)
        for layer in range(self.axis.shape[0]):
            try:
                out[layer] = steering_vector(self.axis[layer].float(), float(norms[layer]))
            except PersonaSpaceError:
                log.warning("layer %d cannot be steered: no usable activation norm or axis there", layer)
        return out

    def check(self, controls: Controls) -> None:
        """Refuse a ``steer_trait`` the space has no vector for, saying how many it has and where they are listed."""
        trait = controls.steer_trait
        if trait is None or trait in self.names:
            return
        if not self.names:
            raise ControlError(
                f"steer_trait {trait!r}: this space has no trait vectors (build them with `build-traits`); "
                "leave steer_trait null to steer along the Assistant Axis"
            )
        raise ControlError(
            f"steer_trait {trait!r} is not one of the space's {len(self.names)} traits with a vector; "
            "GET /space lists them under trait_axes (null steers along the Assistant Axis)"
        )

    def set_of(self, controls: Controls) -> int:
        """The steering set of ``controls`` (checked): 0 for the axis, ``1 + i`` for the kept trait ``i``."""
        self.check(controls)
        return 0 if controls.steer_trait is None else 1 + self.names.index(controls.steer_trait)

    def record(self, controls: Controls) -> Steer | None:
        """The steering of ``controls`` as a :class:`Steer` record (``None`` when off)."""
        if controls.steer_coefficient == 0:
            return None
        start, stop = controls.steer_layers or (self.target, self.target + 1)
        norms = self.space.tensors["activation_norm"]
        along = (
            self.axis if self.traits is None or controls.steer_trait is None else self.traits.traits.vector(controls.steer_trait)
        )
        vectors = {layer: steering_vector(along[layer], float(norms[layer])) for layer in range(start, stop)}
        return Steer(vectors, controls.steer_coefficient)
