"""The JSON the UI draws a persona space from (no tensors, plain lists)."""

from __future__ import annotations

from typing import Any

import torch

from backend.store import Space


def space_summary(space: Space, layer: int | None = None) -> dict[str, Any]:
    """Roles with coordinates (PCA at ``layer``, default the target layer; stored UMAP layouts), the Assistant,
    the axis drawn in PCA space, per-layer figures and cap thresholds."""
    m, t = space.manifest, space.tensors
    target = space.target_layer
    layer = target if layer is None else layer
    kept = [r for r in m["roles"] if r.get("kept")]
    coords = t["pca_role_coords"][layer][:, :3]
    axis = t["axis"][layer]
    unit_axis = axis / axis.norm()
    comps = t["pca_components"][layer][:3]
    arrow = (comps @ unit_axis).tolist()  # the unit axis in PC coordinates
    projections = t["role_projections"][:, layer].tolist()
    umap2, umap3 = t.get("umap_2d"), t.get("umap_3d")
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
                "projection": projections[i],
                "pca": coords[i].tolist(),
                "umap_2d": umap2[i].tolist() if umap2 is not None else None,
                "umap_3d": umap3[i].tolist() if umap3 is not None else None,
            }
        )
    default_umap2, default_umap3 = t.get("umap_default_2d"), t.get("umap_default_3d")
    return {
        "model": m["model"],
        "n_layers": m["n_layers"],
        "hidden": m["hidden"],
        "target_layer": target,
        "layer": layer,
        "cap_window": m.get("cap_window"),
        "roles": roles,
        "dropped": {r["name"]: r.get("dropped", "") for r in m["roles"] if not r.get("kept")},
        "assistant": {
            "projection": float(t["default_projection"][layer]),
            "pca": t["pca_default_coords"][layer][:3].tolist(),
            "umap_2d": default_umap2.tolist() if default_umap2 is not None else None,
            "umap_3d": default_umap3.tolist() if default_umap3 is not None else None,
        },
        "axis_arrow_pca": arrow,
        "explained_variance": t["pca_explained_variance"][layer][:10].tolist(),
        "axis_pc1_cosine": t["axis_pc1_cosine"].tolist(),
        "pc1_variance_ratio": t["pca_explained_variance"][:, 0].tolist(),
        "percentiles": space.percentiles,
        "thresholds": {f"p{p:g}": t["thresholds"][i].tolist() for i, p in enumerate(space.percentiles)},
        "pool_projections_target": t["pool_projections"][:, target].tolist(),
        "activation_norm": t["activation_norm"].tolist(),
        "ranking": m.get("ranking", []),
        "traits": m.get("traits"),
        "cap_presets": m.get("cap_presets"),
    }


def role_projection_table(space: Space, layer: int | None = None) -> list[tuple[str, float]]:
    layer = space.target_layer if layer is None else layer
    values = space.tensors["role_projections"][:, layer]
    order = torch.argsort(values, descending=True).tolist()
    return [(space.roles[i], float(values[i])) for i in order]
