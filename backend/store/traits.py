"""Trait vectors in a space folder: the ``trait_vectors`` tensor of ``space.safetensors`` and the manifest's
``trait_set`` field. A space without them is a whole space (every reader treats traits as optional).

==================  ==========  =============================================================================
name                shape       meaning
==================  ==========  =============================================================================
trait_vectors       (T, L, d)   per kept trait: mean(expressing answers) - mean(non-expressing opposite answers)
trait_vectors_int8  (T, L, d)   the same, compact (``add_traits(compact=True)``): int8 steps of ...
trait_vectors_scale (T, L)      ... a float32 scale per vector; loading turns the pair into ``trait_vectors``
==================  ==========  =============================================================================

``trait_set`` = ``{"traits": [entry per trait asked for], "kept_order": [names of the T rows], "settings": {...},
"counts": {...}, "judge": ..., "created": ...}``; an entry holds ``name``, ``description``, ``opposite``, ``kept``,
``weak`` (and ``weak_reason``) or ``dropped``, the answer and judge counts. (The manifest's ``traits`` field is
something else: the projections an imported paper release lists.)

:func:`add_traits` writes a space's traits (atomically, through :func:`~backend.store.space.write_space`; traits
already there are replaced); :func:`backend.store.trait_check.check_trait_shapes` is part of loading a space; :func:`read_traits` gives them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from backend.errors import SpaceError
from backend.maths.quantize import quantize_int8
from backend.store.space import Space, load_space, write_space
from backend.store.trait_check import TRAIT_FIELD, TRAIT_INT8, TRAIT_SCALE, TRAIT_TENSOR


@dataclass(frozen=True)
class SpaceTraits:
    names: list[str]  # kept traits, the rows of ``vectors``
    vectors: torch.Tensor  # (T, L, d)
    weak: list[bool]
    entries: list[dict[str, Any]]  # every trait asked for, kept or not

    def vector(self, name: str) -> torch.Tensor:
        if name not in self.names:
            raise SpaceError(f"the space has no vector for trait {name!r}")
        return self.vectors[self.names.index(name)]


def read_traits(space: Space) -> SpaceTraits | None:
    """The space's trait vectors, or None for a space without traits."""
    field = space.manifest.get(TRAIT_FIELD)
    if field is None or TRAIT_TENSOR not in space.tensors:
        return None
    entries = {e["name"]: e for e in field["traits"]}
    names = list(field["kept_order"])
    return SpaceTraits(
        names=names,
        vectors=space.tensors[TRAIT_TENSOR],
        weak=[bool(entries[n].get("weak")) for n in names],
        entries=list(field["traits"]),
    )


def add_traits(path: Path, fingerprint: str, trait_set: dict[str, Any], vectors: torch.Tensor, *, compact: bool = False) -> Path:
    """Write ``vectors`` ``(T, L, d)`` and ``trait_set`` into the space at ``path`` (built for ``fingerprint``),
    replacing traits it already holds; the rest of the space is unchanged. ``compact`` stores them as int8 with a
    float32 scale per vector (a quarter of the size; read back within half a step, :mod:`backend.maths.quantize`),
    else float32; ``trait_set["storage"]`` says which."""
    space = load_space(path, fingerprint=fingerprint)
    expected = (len(trait_set["kept_order"]), space.manifest["n_layers"], space.manifest["hidden"])
    if tuple(vectors.shape) != expected:
        raise SpaceError(f"trait vectors of shape {tuple(vectors.shape)} do not fit the space ({expected})")
    manifest = {k: v for k, v in space.manifest.items() if k not in ("files", "format_version")}
    manifest[TRAIT_FIELD] = dict(trait_set, storage="int8" if compact else "float32")
    tensors = {k: v for k, v in space.tensors.items() if k != TRAIT_TENSOR}
    if compact:
        tensors[TRAIT_INT8], tensors[TRAIT_SCALE] = quantize_int8(vectors)
    else:
        tensors[TRAIT_TENSOR] = vectors.float()
    return write_space(Path(path), manifest, tensors)
