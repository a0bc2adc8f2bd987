"""What ``info`` reports about a space's traits: each trait's cosine with the Assistant Axis and with PC1-PC3 of the
persona space at the target layer, whether it is weak, the trait space's own PCA, and the traits at each end."""

from __future__ import annotations

from typing import Any

import torch

from backend.maths.contrast import cosines
from backend.maths.pca import fit_pca
from backend.store.space import Space
from backend.store.traits import read_traits


def trait_info(space: Space, components: int = 10) -> dict[str, Any] | None:
    """``{"layer", "traits": {name: {axis_cosine, pc_cosines, weak}}, "pca_variance_ratio", "weak"}``, or None."""
    traits = read_traits(space)
    if traits is None or not traits.names:
        return None
    layer = space.target_layer
    vectors = traits.vectors[:, layer]
    axis_cos = cosines(vectors, space.tensors["axis"][layer])
    pcs = space.tensors["pca_components"][layer, :3]
    pc_cos = torch.stack([cosines(vectors, pc) for pc in pcs], dim=1) if len(pcs) else torch.zeros(len(traits.names), 0)
    fit = [i for i, w in enumerate(traits.weak) if not w]
    variance: list[float] = []
    if len(fit) >= 2:
        pca = fit_pca(vectors[fit], n_components=components)
        variance = [round(float(x), 4) for x in pca.explained_variance_ratio]
    return {
        "layer": layer,
        "traits": {
            name: {
                "axis_cosine": round(float(axis_cos[i]), 4),
                "pc_cosines": [round(float(c), 4) for c in pc_cos[i]],
                "weak": traits.weak[i],
            }
            for i, name in enumerate(traits.names)
        },
        "pca_variance_ratio": variance,
        "weak": sum(traits.weak),
        "dropped": {e["name"]: e.get("dropped", "dropped") for e in traits.entries if not e.get("kept")},
    }


def format_trait_ends(info: dict[str, Any], ends: int = 10) -> list[str]:
    """Lines for ``info``: the traits nearest each end of the axis (``*``: weak)."""
    ranked = sorted(info["traits"].items(), key=lambda kv: kv[1]["axis_cosine"], reverse=True)

    def show(items: list[tuple[str, dict[str, Any]]]) -> str:
        return ", ".join(f"{n}{'*' if v['weak'] else ''} ({v['axis_cosine']:+.2f})" for n, v in items)

    variance = ", ".join(f"{v:.2f}" for v in info["pca_variance_ratio"][:3]) or "n/a"
    return [
        f"traits      {len(info['traits'])} with a vector ({info['weak']} weak, * below), {len(info['dropped'])} dropped; "
        f"trait-space PCA variance PC1-3: {variance}",
        f"traits at the Assistant end (cosine with the axis, layer {info['layer']}): " + show(ranked[:ends]),
        "traits at the far end: " + show(ranked[-ends:][::-1]),
    ]
