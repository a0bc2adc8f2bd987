"""Whether a space's optional traits fit its manifest: the tensor ``trait_vectors`` ``(T, L, d)`` and the manifest
field ``trait_set`` together or not at all. Part of loading a space (``backend.store.space``); the traits themselves
are written and read by ``backend.store.traits``. Plain data only, so the loader imports it without a cycle."""

from __future__ import annotations

from typing import Any

TRAIT_TENSOR = "trait_vectors"
TRAIT_FIELD = "trait_set"


def check_trait_shapes(manifest: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> str | None:
    """None when the space's traits (if any) are consistent with its manifest, else one line naming the problem."""
    field, has_tensor = manifest.get(TRAIT_FIELD), TRAIT_TENSOR in shapes
    if field is None and not has_tensor:
        return None
    if field is None or not has_tensor:
        return f"it has {'the tensor ' + TRAIT_TENSOR if has_tensor else 'the field ' + TRAIT_FIELD} without the other"
    if not isinstance(field, dict) or not isinstance(field.get("kept_order"), list) or not isinstance(field.get("traits"), list):
        return f"field {TRAIT_FIELD} must be an object with the lists 'traits' and 'kept_order'"
    names = field["kept_order"]
    if not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
        return f"field {TRAIT_FIELD}.kept_order must list distinct trait names"
    entries = {e.get("name"): e for e in field["traits"] if isinstance(e, dict)}
    if any(n not in entries or not entries[n].get("kept") for n in names):
        return f"field {TRAIT_FIELD}.kept_order names a trait that {TRAIT_FIELD}.traits does not list as kept"
    expected = (len(names), manifest["n_layers"], manifest["hidden"])
    if tuple(shapes[TRAIT_TENSOR]) != expected:
        return f"tensor {TRAIT_TENSOR} has shape {tuple(shapes[TRAIT_TENSOR])}, but the manifest implies {expected}"
    return None
