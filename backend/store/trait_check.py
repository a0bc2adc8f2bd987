"""Whether a space's optional traits fit its manifest: the tensor ``trait_vectors`` ``(T, L, d)`` (or its compact
form, ``trait_vectors_int8`` ``(T, L, d)`` int8 with ``trait_vectors_scale`` ``(T, L)``) and the manifest field
``trait_set`` together or not at all. Part of loading a space (``backend.store.space``), which also turns the compact
form back into ``trait_vectors`` (:func:`expand_compact`); the traits themselves are written and read by
``backend.store.traits``. Nothing here imports the store, so the loader imports it without a cycle."""

from __future__ import annotations

from typing import Any

import torch

from backend.maths.quantize import dequantize_int8

TRAIT_TENSOR = "trait_vectors"
TRAIT_INT8 = "trait_vectors_int8"
TRAIT_SCALE = "trait_vectors_scale"
TRAIT_FIELD = "trait_set"


def check_trait_shapes(manifest: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> str | None:
    """None when the space's traits (if any) are consistent with its manifest, else one line naming the problem."""
    compact = TRAIT_INT8 in shapes or TRAIT_SCALE in shapes
    if compact and TRAIT_TENSOR in shapes:
        return f"it has both {TRAIT_TENSOR} and its compact form {TRAIT_INT8}/{TRAIT_SCALE}: keep one"
    if compact and not (TRAIT_INT8 in shapes and TRAIT_SCALE in shapes):
        return f"it has {TRAIT_INT8 if TRAIT_INT8 in shapes else TRAIT_SCALE} without {TRAIT_SCALE if TRAIT_INT8 in shapes else TRAIT_INT8}"
    tensor = TRAIT_INT8 if compact else TRAIT_TENSOR
    field, has_tensor = manifest.get(TRAIT_FIELD), tensor in shapes
    if field is None and not has_tensor:
        return None
    if field is None or not has_tensor:
        return f"it has {'the tensor ' + tensor if has_tensor else 'the field ' + TRAIT_FIELD} without the other"
    if not isinstance(field, dict) or not isinstance(field.get("kept_order"), list) or not isinstance(field.get("traits"), list):
        return f"field {TRAIT_FIELD} must be an object with the lists 'traits' and 'kept_order'"
    names = field["kept_order"]
    if not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
        return f"field {TRAIT_FIELD}.kept_order must list distinct trait names"
    entries = {e.get("name"): e for e in field["traits"] if isinstance(e, dict)}
    if any(n not in entries or not entries[n].get("kept") for n in names):
        return f"field {TRAIT_FIELD}.kept_order names a trait that {TRAIT_FIELD}.traits does not list as kept"
    expected = (len(names), manifest["n_layers"], manifest["hidden"])
    if tuple(shapes[tensor]) != expected:
        return f"tensor {tensor} has shape {tuple(shapes[tensor])}, but the manifest implies {expected}"
    if compact and tuple(shapes[TRAIT_SCALE]) != expected[:2]:
        return f"tensor {TRAIT_SCALE} has shape {tuple(shapes[TRAIT_SCALE])}, but the manifest implies {expected[:2]}"
    return None


def expand_compact(tensors: dict[str, torch.Tensor]) -> str | None:
    """Replace the compact traits (if any) by ``trait_vectors`` float32, in place; None, or one line naming a
    compact tensor that is not what it must be (int8 values, finite non-negative scales). Shapes are checked first
    (:func:`check_trait_shapes`)."""
    if TRAIT_INT8 not in tensors:
        return None
    q, scale = tensors[TRAIT_INT8], tensors[TRAIT_SCALE]
    if q.dtype != torch.int8:
        return f"tensor {TRAIT_INT8} must hold int8 values, not {q.dtype}"
    if not scale.is_floating_point() or not bool(torch.isfinite(scale).all()) or bool((scale < 0).any()):
        return f"tensor {TRAIT_SCALE} must hold finite non-negative numbers"
    tensors[TRAIT_TENSOR] = dequantize_int8(q, scale)
    del tensors[TRAIT_INT8], tensors[TRAIT_SCALE]
    return None
