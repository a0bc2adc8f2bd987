"""A torch-free view of a built persona space, for the UI (which never imports torch) and the worker's /space.

Reads ``manifest.json`` and ``space.safetensors`` with ``safetensors.numpy``, checks the file hash, and turns the
space into the plain lists a chart needs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from backend.view.manifest import check_manifest, check_shapes

MANIFEST = "manifest.json"
TENSOR_FILE = "space.safetensors"


class SpaceViewError(Exception):
    """A space that cannot be shown: the message says why."""


@dataclass
class SpaceView:
    path: Path
    manifest: dict[str, Any]
    arrays: dict[str, np.ndarray]

    @property
    def roles(self) -> list[dict[str, Any]]:
        return [r for r in self.manifest["roles"] if r.get("kept")]

    @property
    def target_layer(self) -> int:
        return int(self.manifest["target_layer"])

    @property
    def n_layers(self) -> int:
        return int(self.manifest["n_layers"])

    @property
    def percentiles(self) -> list[float]:
        return [float(p) for p in self.manifest["percentiles"]]


def read_space(path: str | Path) -> SpaceView:
    from safetensors.numpy import load_file

    root = Path(path)
    try:
        manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise SpaceViewError(f"{root} is not a persona space (no {MANIFEST})") from exc
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise SpaceViewError(f"{root / MANIFEST} is corrupt or truncated: {exc}") from exc
    problem = check_manifest(manifest)
    if problem is not None:
        raise SpaceViewError(f"{root / MANIFEST} is not a valid space manifest: {problem}")
    file = root / TENSOR_FILE
    digest = hashlib.sha256()
    try:
        with open(file, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    except FileNotFoundError as exc:
        raise SpaceViewError(f"{root} lacks {TENSOR_FILE}") from exc
    if manifest.get("files", {}).get(TENSOR_FILE) != digest.hexdigest():
        raise SpaceViewError(f"{file} is corrupt or was changed (its hash differs from the manifest's)")
    try:
        arrays = load_file(str(file))
    except Exception as exc:
        raise SpaceViewError(f"{file} cannot be read: {exc}") from exc
    problem = check_shapes(manifest, {name: tuple(x.shape) for name, x in arrays.items()})
    if problem is not None:
        raise SpaceViewError(f"{file} does not fit its manifest: {problem}")
    expand_compact_traits(arrays, file)
    return SpaceView(path=root, manifest=manifest, arrays=arrays)


def expand_compact_traits(arrays: dict[str, np.ndarray], file: Path) -> None:
    """Compact traits (``trait_vectors_int8`` with ``trait_vectors_scale``, :mod:`backend.maths.quantize`) become the
    float32 ``trait_vectors`` every reader uses, in place; the loader checked them when the worker started, so a
    pair that does not fit now was edited since."""
    if "trait_vectors_int8" not in arrays:
        return
    q, scale = arrays.pop("trait_vectors_int8"), arrays.pop("trait_vectors_scale", None)
    if scale is None or q.dtype != np.int8 or scale.shape != q.shape[:-1] or not np.isfinite(scale).all():
        raise SpaceViewError(f"{file} holds compact trait vectors that do not fit together (edited since it was built?)")
    arrays["trait_vectors"] = q.astype(np.float32) * scale.astype(np.float32)[..., None]


def axis_first(
    vectors: np.ndarray, default: np.ndarray, axis: np.ndarray, fit: np.ndarray, k: int = 2
) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Axis-first coordinates at one layer: the leading ``k`` principal components of what remains of the role
    vectors ``(R, d)`` once their component along ``axis`` ``(d,)`` is removed, fitted on the rows where ``fit``
    (the non-weak roles), every role and the default ``(d,)`` projected in. Paired with the projection on the
    axis as the first coordinate, this draws the Assistant Axis as the x axis and the spread around it honestly.

    Returns ``(role coords (R, k), default coords (k,), explained-variance ratio of the residual (k,))``; each
    component's sign makes its largest-magnitude loading positive (deterministic)."""
    u = axis.astype(np.float64) / np.linalg.norm(axis)
    x = vectors.astype(np.float64)
    residual = x - np.outer(x @ u, u)
    fitted = residual[fit]
    mean = fitted.mean(0)
    _, sing, vt = np.linalg.svd(fitted - mean, full_matrices=False)
    k = min(k, vt.shape[0])
    comps = vt[:k].copy()
    for i in range(k):
        if comps[i, np.argmax(np.abs(comps[i]))] < 0:
            comps[i] *= -1
    d = default.astype(np.float64)
    d_res = d - (d @ u) * u
    total = float((sing**2).sum()) or 1.0
    return (residual - mean) @ comps.T, (d_res - mean) @ comps.T, [float(v) / total for v in sing[:k] ** 2]


def trait_axes(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The traits the space has a vector for (``trait_set``, written by ``build-traits``), in their stored order:
    ``{"name", "description", "weak"}`` each; empty for a space without traits."""
    field = manifest.get("trait_set")
    if not isinstance(field, dict):
        return []
    entries = {e.get("name"): e for e in field.get("traits", []) if isinstance(e, dict)}
    return [
        {"name": n, "description": str(entries.get(n, {}).get("description", "")), "weak": bool(entries.get(n, {}).get("weak"))}
        for n in field.get("kept_order", [])
    ]


def summary(view: SpaceView, layer: int | None = None) -> dict[str, Any]:
    """Roles with coordinates (PCA at ``layer``, default the target layer; the stored UMAP layouts), the
    Assistant, the axis drawn in PCA space, per-layer figures, cap thresholds and the traits one can steer along
    (``trait_axes``; ``traits`` is something else: the projections an imported paper release lists)."""
    m, a = view.manifest, view.arrays
    target = view.target_layer
    layer = target if layer is None else int(layer)
    if not 0 <= layer < view.n_layers:
        raise SpaceViewError(f"layer {layer} is out of range: the model has layers 0..{view.n_layers - 1}")
    kept = view.roles
    coords = a["pca_role_coords"][layer][:, :3]
    axis = a["axis"][layer].astype(np.float64)
    arrow = (a["pca_components"][layer][:3].astype(np.float64) @ (axis / np.linalg.norm(axis))).tolist()
    projections = a["role_projections"][:, layer].tolist()
    umap2, umap3 = a.get("umap_2d"), a.get("umap_3d")
    weak = np.array([bool(r.get("weak")) for r in kept])
    fit = ~weak if int((~weak).sum()) >= 3 else np.ones_like(weak)
    af_roles, af_default, af_var = axis_first(a["role_vectors"][:, layer], a["default_vector"][layer], axis, fit)
    roles = []
    for i, entry in enumerate(kept):
        roles.append(
            {
                "name": entry["name"],
                "category": entry.get("category", ""),
                "description": entry.get("description", ""),
                "example": entry.get("example"),
                "in_role": entry.get("in_role"),
                "answers": entry.get("answers"),
                "weak": bool(weak[i]),
                "projection": float(projections[i]),
                "axis_first": [float(projections[i]), *(float(x) for x in af_roles[i])],
                "pca": [float(x) for x in coords[i]],
                "umap_2d": [float(x) for x in umap2[i]] if umap2 is not None else None,
                "umap_3d": [float(x) for x in umap3[i]] if umap3 is not None else None,
            }
        )
    d2, d3 = a.get("umap_default_2d"), a.get("umap_default_3d")
    return {
        "path": str(view.path),
        "model": m["model"],
        "n_layers": view.n_layers,
        "hidden": m["hidden"],
        "target_layer": target,
        "layer": layer,
        "cap_window": m.get("cap_window"),
        "cap_preset": m.get("cap_preset"),
        "roles": roles,
        "dropped": {r["name"]: r.get("dropped", "") for r in m["roles"] if not r.get("kept")},
        "assistant": {
            "projection": float(a["default_projection"][layer]),
            "axis_first": [float(a["default_projection"][layer]), *(float(x) for x in af_default)],
            "pca": [float(x) for x in a["pca_default_coords"][layer][:3]],
            "umap_2d": [float(x) for x in d2] if d2 is not None else None,
            "umap_3d": [float(x) for x in d3] if d3 is not None else None,
        },
        "axis_arrow_pca": arrow,
        "axis_first_variance": af_var,
        "recipe": m.get("recipe", "paper"),
        "weak": {r["name"]: r.get("in_role") for r in kept if r.get("weak")},
        "explained_variance": [float(x) for x in a["pca_explained_variance"][layer][:10]],
        "axis_pc1_cosine": [float(x) for x in a["axis_pc1_cosine"]],
        "pc1_variance_ratio": [float(x) for x in a["pca_explained_variance"][:, 0]],
        "percentiles": view.percentiles,
        "thresholds": {f"p{p:g}": [float(x) for x in a["thresholds"][i]] for i, p in enumerate(view.percentiles)},
        "pool_projections_target": [float(x) for x in a["pool_projections"][:, target]],
        "ranking": m.get("ranking", []),
        "traits": m.get("traits"),
        "trait_axes": trait_axes(m),
        "cap_presets": m.get("cap_presets"),
        "counts": m.get("counts", {}),
        "settings": m.get("settings", {}),
    }
