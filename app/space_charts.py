"""The persona-space map and its tables: pure functions from a space summary to figures, rows and CSV.

Layouts: ``axis`` (x = projection on the Assistant Axis, exactly the stored value; y, z = leading principal
components of what remains once the axis direction is removed), ``pca`` and ``umap``. In every layout the colour
scale spans the archetypes *and* the default Assistant, weak archetypes (few in-role answers) get an open marker,
and the axis arrow's label sits at its Assistant end.
"""

from __future__ import annotations

import csv
import html
import io
import textwrap
from typing import Any

import plotly.graph_objects as go

LAYOUTS = {"axis": "Axis first", "pca": "PCA", "umap": "UMAP"}
AXIS_COLOR = "#2ca02c"
ASSISTANT = "default Assistant"
# the axis-first 3D camera: x (the axis) left to right, seen from far enough that the x title is not cut off
AXIS_CAMERA = {"eye": {"x": 0.2, "y": -2.3, "z": 0.8}}


def _wrap(text: str, width: int = 60, lines: int = 4) -> str:
    parts = textwrap.wrap(text or "", width)[:lines]
    return "<br>".join(html.escape(p) for p in parts)


def role_hover(role: dict[str, Any], assistant_projection: float | None = None) -> str:
    """Name, category, description, projection (beside the default Assistant's own), weakness, an example answer."""
    example = (role.get("example") or {}).get("answer", "")
    weak = f"<br>weak: {role.get('in_role')} in-role answers" if role.get("weak") else ""
    theirs = f" (default Assistant {assistant_projection:.2f})" if assistant_projection is not None else ""
    return (
        f"<b>{html.escape(role['name'])}</b> ({html.escape(role.get('category', ''))})<br>"
        f"{_wrap(role.get('description', ''))}<br>projection {role['projection']:.2f}{theirs}{weak}"
        + (f"<br><i>{_wrap(example)}</i>" if example else "")
    )


def assistant_hover(summary: dict[str, Any]) -> str:
    return f"<b>{ASSISTANT}</b><br>projection {summary['assistant']['projection']:.2f}"


def coords_key(layout: str, dims: int) -> str:
    return {"axis": "axis_first", "pca": "pca"}.get(layout, f"umap_{dims}d")


def colour_range(summary: dict[str, Any]) -> tuple[float, float]:
    """The colour scale's ends: every archetype's projection and the default Assistant's."""
    values = [r["projection"] for r in summary["roles"]] + [summary["assistant"]["projection"]]
    return min(values), max(values)


def axis_labels(layout: str) -> tuple[str, str, str]:
    if layout == "axis":
        return "projection on the Assistant Axis", "residual PC1", "residual PC2"
    if layout == "pca":
        return "PC1", "PC2", "PC3"
    return "UMAP 1", "UMAP 2", "UMAP 3"


def _arrow(summary: dict[str, Any], layout: str, dims: int, pts: list[list[float]]) -> tuple[list[float], list[float]] | None:
    """Tail and head of the axis arrow in the chart's coordinates (head = Assistant end); None for UMAP."""
    if layout == "axis":
        xs = [p[0] for p in pts] + [summary["assistant"]["axis_first"][0]]
        return [min(xs)] + [0.0] * (dims - 1), [max(xs)] + [0.0] * (dims - 1)
    if layout != "pca" or not pts:
        return None
    arrow = summary["axis_arrow_pca"][:dims]
    norm = sum(a * a for a in arrow) ** 0.5 or 1.0
    span = max(max(abs(c) for c in p[:dims]) for p in pts) * 0.8
    head = [a / norm * span for a in arrow]
    return [-h for h in head], head


def persona_map(
    summary: dict[str, Any], layout: str = "axis", dims: int = 2, highlight: list[str] | None = None, hide_weak: bool = False
) -> go.Figure:
    """Archetypes coloured by their projection on the axis, the default Assistant as a gold star (2D) or diamond
    (3D), the axis drawn as an arrow (not in UMAP, whose directions mean nothing)."""
    key = coords_key(layout, dims)
    all_roles = summary["roles"]
    roles = [r for r in all_roles if not (hide_weak and r.get("weak"))]
    lo, hi = colour_range(summary)
    mine = float(summary["assistant"]["projection"])
    assistant = summary["assistant"].get(key)
    fig = go.Figure()
    scatter: Any = go.Scatter3d if dims == 3 else go.Scatter
    groups = (
        ("archetypes", [r for r in roles if not r.get("weak")], "circle"),
        ("weak archetypes", [r for r in roles if r.get("weak")], "circle-open"),
    )
    for i, (label, group, symbol) in enumerate(groups):
        if not group and i:
            continue
        pts = [r[key] for r in group]
        colours = [r["projection"] for r in group]
        scale = {"colorscale": "RdBu", "cmin": lo, "cmax": hi, "cmid": (lo + hi) / 2}
        # an open marker is drawn by its outline: colour the outline by projection too (3D draws it grey otherwise)
        outline = {"width": 1.5, "color": colours, **scale} if symbol != "circle" else {"width": 0}
        marker = {
            "size": (7 if dims == 2 else 4) + (2 if symbol != "circle" else 0), "symbol": symbol, "color": colours,
            **scale, "showscale": i == 0, "colorbar": {"title": "projection"}, "line": outline,
        }  # fmt: skip
        coords = {"x": [p[0] for p in pts], "y": [p[1] for p in pts]}
        if dims == 3:
            coords["z"] = [p[2] for p in pts]
        names = [r["name"] for r in group]
        fig.add_trace(scatter(**coords, mode="markers", marker=marker, text=names, hovertext=[role_hover(r, mine) for r in group],
                              hoverinfo="text", name=label, customdata=names))  # fmt: skip
    arrow = _arrow(summary, layout, dims, [r[key] for r in all_roles])
    star_label, axis_label = label_places(assistant, arrow[1] if arrow else None, dims)
    if assistant:
        star = {"size": 16, "symbol": "star"} if dims == 2 else {"size": 9, "symbol": "diamond"}
        coords = {"x": [assistant[0]], "y": [assistant[1]]} | ({"z": [assistant[2]]} if dims == 3 else {})
        text = (
            {"mode": "markers+text", "text": ["Assistant"], "textfont": {"size": 13}, **star_label}
            if dims == 2
            else {"mode": "markers"}
        )
        fig.add_trace(scatter(**coords, name=ASSISTANT, hoverinfo="text", hovertext=[assistant_hover(summary)],
                              marker={**star, "color": "gold", "line": {"width": 1, "color": "black"}}, **text))  # fmt: skip
    if arrow is not None:
        tail, head = arrow
        if dims == 2:
            fig.add_annotation(x=head[0], y=head[1], ax=tail[0], ay=tail[1], xref="x", yref="y", axref="x", ayref="y", text="",
                               showarrow=True, arrowhead=3, arrowwidth=2, arrowcolor=AXIS_COLOR)  # fmt: skip
            fig.add_annotation(
                x=head[0], y=head[1], text="Assistant Axis", showarrow=False, font={"color": AXIS_COLOR}, **axis_label
            )
        else:
            fig.add_trace(go.Scatter3d(x=[tail[0], head[0]], y=[tail[1], head[1]], z=[tail[2], head[2]], mode="lines",
                                       line={"color": AXIS_COLOR, "width": 6}, name="Assistant Axis", hoverinfo="skip"))  # fmt: skip
            d = [h - t for h, t in zip(head, tail, strict=True)]
            fig.add_trace(go.Cone(x=[head[0]], y=[head[1]], z=[head[2]], u=[d[0]], v=[d[1]], w=[d[2]], sizemode="absolute",
                                  sizeref=max(abs(c) for c in d) * 0.08 or 1.0, anchor="tip", showscale=False, hoverinfo="skip",
                                  colorscale=[[0, AXIS_COLOR], [1, AXIS_COLOR]], name="Assistant Axis"))  # fmt: skip
    if dims == 3:  # scene annotations: drawn as page text, placed apart on screen (the camera keeps x left to right)
        notes = []
        if assistant:
            notes.append({"x": assistant[0], "y": assistant[1], "z": assistant[2], "text": "Assistant", "showarrow": False,
                          "font": {"size": 13}, "bgcolor": "rgba(255,255,255,0.75)", **star_label})  # fmt: skip
        if arrow is not None:
            head = arrow[1]
            notes.append({"x": head[0], "y": head[1], "z": head[2], "text": "Assistant Axis", "showarrow": False,
                          "font": {"color": AXIS_COLOR}, "bgcolor": "rgba(255,255,255,0.75)", **axis_label})  # fmt: skip
        fig.update_layout(scene={"annotations": notes})
    if highlight:
        chosen = [r for r in all_roles if r["name"] in set(highlight)]
        hp = [r[key] for r in chosen]
        coords = {"x": [p[0] for p in hp], "y": [p[1] for p in hp]} | ({"z": [p[2] for p in hp]} if dims == 3 else {})
        ring = (
            {"size": 8, "color": "black", "symbol": "circle-open"}
            if dims == 3
            else {"size": 14, "color": "rgba(0,0,0,0)", "line": {"width": 2, "color": "black"}}
        )
        fig.add_trace(scatter(**coords, mode="markers+text", text=[r["name"] for r in chosen], marker=ring, name="highlighted", hoverinfo="skip",
                              **({"textposition": "top center"} if dims == 2 else {})))  # fmt: skip
    titles = axis_labels(layout)
    where = f"layer {summary['layer']}" if layout != "umap" else f"layer {summary['target_layer']}"
    fig.update_layout(title=f"{len(roles)} archetypes — {LAYOUTS[layout]} at {where}", height=620, template="plotly_white",
                      margin={"l": 10, "r": 10, "t": 50, "b": 50} if dims == 3 else {"l": 60, "r": 10, "t": 50, "b": 100},
                      legend={"orientation": "h", "yref": "container", "y": 0.0, "yanchor": "bottom"})  # fmt: skip
    if dims == 3:
        scene: dict[str, Any] = {"xaxis_title": titles[0], "yaxis_title": titles[1], "zaxis_title": titles[2]}
        if layout == "axis":  # x (the axis) runs left to right, far enough back that its title stays in the view
            scene["camera"] = AXIS_CAMERA
        fig.update_layout(scene=scene, uirevision="keep")
    else:
        fig.update_xaxes(title=titles[0])
        fig.update_yaxes(title=titles[1])
    return fig


def label_places(assistant: list[float] | None, head: list[float] | None, dims: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Where the "Assistant" label (at the star) and the "Assistant Axis" label (at the arrow head) go, so they
    never cover each other.

    2D: on opposite sides vertically: the star's label centred on the star's far side from the head, the axis label
    on the other side of the head, ending at it (so it runs along the arrow). 3D: the star's label to its left, the
    axis label to the right of the head (the axis-first camera runs x left to right, and the head is the highest x).
    """
    if dims == 3:
        return {"xanchor": "right", "xshift": -10}, {"xanchor": "left", "xshift": 10}
    above = assistant is None or head is None or assistant[1] >= head[1]
    star = {"textposition": "top center" if above else "bottom center"}
    axis = {"xanchor": "right", "yanchor": "top" if above else "bottom", "yshift": -6 if above else 6}
    return star, axis


def caption(summary: dict[str, Any], layout: str, dims: int, hide_weak: bool) -> str:
    marker = "gold star" if dims == 2 else "gold diamond"
    weak = len(summary.get("weak") or {})
    shown = len(summary["roles"]) - (weak if hide_weak else 0)
    parts = [
        f"{summary['model']['name']} — {shown} archetypes drawn"
        + (f" ({weak} weak, open circles{', hidden' if hide_weak else ''})" if weak else "")
        + f", {len(summary['dropped'])} without any usable answer. Recipe: {summary.get('recipe', 'paper')}.",
        f"Colour: projection on the Assistant Axis (blue = more Assistant-like; the scale includes the Assistant). The {marker} is the default Assistant.",
    ]
    if layout == "axis":
        parts.append("x is the projection on the axis itself; y and z spread what the axis leaves out.")
    elif layout == "umap":
        parts.append("UMAP keeps neighbours, not directions: no axis arrow here.")
    parts.append("PNG: the camera button on the chart.")
    return " ".join(parts)


def ranking_rows(summary: dict[str, Any], n: int = 15, most: bool = True) -> list[dict[str, Any]]:
    """The ``n`` archetypes at one end of the axis, with the default Assistant in its place among them."""
    rows = [
        {"archetype": r["name"] + (" (weak)" if r.get("weak") else ""), "projection": r["projection"]} for r in summary["roles"]
    ]
    rows.append({"archetype": f"★ {ASSISTANT}", "projection": summary["assistant"]["projection"]})
    rows.sort(key=lambda r: r["projection"], reverse=most)
    return [{"archetype": r["archetype"], "projection": round(r["projection"], 2)} for r in rows[:n]]


def coordinates_csv(summary: dict[str, Any]) -> str:
    """Every archetype and the default Assistant: projection, axis-first, PCA and UMAP coordinates."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(
        ["name", "category", "weak", "in_role", "projection", "axis_y", "axis_z", "pc1", "pc2", "pc3", "umap2_x", "umap2_y"]
    )
    for r in summary["roles"]:
        writer.writerow([r["name"], r["category"], int(bool(r.get("weak"))), r.get("in_role"), r["projection"],
                         *r["axis_first"][1:3], *r["pca"][:3], *(r.get("umap_2d") or ["", ""])])  # fmt: skip
    a = summary["assistant"]
    writer.writerow(
        [ASSISTANT, "", 0, "", a["projection"], *a["axis_first"][1:3], *a["pca"][:3], *(a.get("umap_2d") or ["", ""])]
    )
    return buffer.getvalue()
