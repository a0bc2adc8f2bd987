"""What ``python -m backend info`` reports about a space."""

from __future__ import annotations

from typing import Any

import torch

from backend.store.space import Space


def default_pc1_percentile(role_pc1: torch.Tensor, default_pc1: torch.Tensor) -> list[float]:
    """Per layer, the share of archetypes (``role_pc1`` ``(L, R)``) whose PC1 coordinate the default's
    (``(L,)``) exceeds; PC1's sign follows the axis, so 1.0 means the Assistant is at the Assistant end."""
    beyond = (role_pc1 < default_pc1[:, None]).double().mean(dim=1)
    return [round(float(x), 4) for x in beyond]


def space_info(space: Space) -> dict[str, Any]:
    from backend.store.trait_info import trait_info

    m, t = space.manifest, space.tensors
    target = space.target_layer
    kept = space.roles
    projections = t["role_projections"][:, target].tolist()
    return {
        "path": str(space.path),
        "model": m["model"]["name"],
        "model_spec": m["model"].get("spec"),
        "fingerprint": m["model"]["fingerprint"],
        "n_layers": m["n_layers"],
        "hidden": m["hidden"],
        "target_layer": target,
        "cap_window": m.get("cap_window"),
        "cap_preset": m.get("cap_preset"),
        "roles": kept,
        "dropped": {r["name"]: r.get("dropped", "dropped") for r in m["roles"] if not r.get("kept")},
        "weak": {r["name"]: r.get("in_role") for r in m["roles"] if r.get("kept") and r.get("weak")},
        "recipe": m.get("recipe", "paper"),
        "default_pc1_percentile": default_pc1_percentile(t["pca_role_coords"][:, :, 0], t["pca_default_coords"][:, 0]),
        "axis_pc1_cosine": [round(float(x), 4) for x in t["axis_pc1_cosine"]],
        "pc1_variance_ratio": [round(float(x), 4) for x in t["pca_explained_variance"][:, 0]],
        "projections": {name: round(float(p), 4) for name, p in zip(kept, projections, strict=True)},
        "default_projection": round(float(t["default_projection"][target]), 4),
        "thresholds": {
            str(layer): {f"p{p:g}": round(float(t["thresholds"][i, layer]), 4) for i, p in enumerate(space.percentiles)}
            for layer in range(m["n_layers"])
        },
        "counts": m.get("counts", {}),
        "settings": m.get("settings", {}),
        "created": m.get("created"),
        "build_seconds": m.get("build_seconds"),
        **({"traits": traits} if (traits := trait_info(space)) is not None else {}),
    }


def format_info(info: dict[str, Any], ends: int = 10) -> str:
    lines = [
        f"space       {info['path']}",
        f"model       {info['model']} (weights {info['fingerprint'][:12]})",
        f"layers      {info['n_layers']} x {info['hidden']}, target layer {info['target_layer']}, cap window {info['cap_window']}",
        f"cap preset  {_preset_line(info.get('cap_preset'))}",
        f"roles       {len(info['roles'])} drawn ({len(info['weak'])} weak), {len(info['dropped'])} dropped",
        f"recipe      {info['recipe']}",
        "layer  cos(PC1,axis)  PC1 var  Assistant beyond",
    ]
    rows = zip(info["axis_pc1_cosine"], info["pc1_variance_ratio"], info["default_pc1_percentile"], strict=True)
    for layer, (cos, var, beyond) in enumerate(rows):
        mark = "  <- target" if layer == info["target_layer"] else ""
        lines.append(f"{layer:>5}  {cos:>13.3f}  {var:>7.3f}  {beyond:>15.0%}{mark}")
    ranked = sorted(info["projections"].items(), key=lambda kv: kv[1], reverse=True)
    lines.append(f"default Assistant projection at the target layer: {info['default_projection']:.3f}")
    lines.append("most Assistant-like: " + ", ".join(f"{n} ({p:.2f})" for n, p in ranked[:ends]))
    lines.append("least Assistant-like: " + ", ".join(f"{n} ({p:.2f})" for n, p in ranked[-ends:][::-1]))
    if info.get("traits"):
        from backend.store.trait_info import format_trait_ends

        lines.extend(format_trait_ends(info["traits"], ends))
    return "\n".join(lines)


def _preset_line(preset: dict[str, Any] | None) -> str:
    if not preset:
        return "none (default: p75 on the cap window); `python -m backend evaluate-cap --write-preset` measures one"
    f = preset.get("figures", {})
    adoption = (
        f"adoption {f['adoption']:.0%} vs {f['uncapped_adoption']:.0%} uncapped, "
        if f.get("uncapped_adoption") is not None
        else ""
    )
    kl = f"benign KL {f['kl']:.3f} nats/token" if f.get("kl") is not None else ""
    return f"p{preset['percentile']:g} on layers {preset['window']} ({adoption}{kl}; rule: {preset.get('rule', '?')})"
