"""The Traits page's figures: pure functions from the worker's ``/traits`` and ``/traits/{name}/archetypes`` bodies
to plotly figures (tested without a browser).

* :func:`trait_bars`: every trait as a horizontal bar, its cosine with the Assistant Axis, sorted, both ends named;
  weak traits hatched and starred.
* :func:`trait_map`: the trait space's own PCA (2D or 3D), coloured by the cosine with the axis, hover = name,
  description, opposite and cosine; weak traits as open markers.
* :func:`archetype_bars`: the archetypes projected on one trait, the top and bottom ``n``, the default Assistant's
  projection drawn as a line.
"""

from __future__ import annotations

import html
import textwrap
from typing import Any

import plotly.graph_objects as go

from app.charts import BOTTOM_LEGEND

TOP_COLOR, BOTTOM_COLOR, ASSISTANT_COLOR = "#4c78a8", "#e45756", "#b8860b"
ASSISTANT_BLUE = "RdBu"  # blue: the Assistant end, red: the role-play end, as on the persona-space map
BAR_PX = 16  # height of one bar, so every trait's name has a row of its own


def _wrap(text: str, width: int = 60, lines: int = 4) -> str:
    return "<br>".join(html.escape(p) for p in textwrap.wrap(text or "", width)[:lines])


def trait_label(trait: dict[str, Any]) -> str:
    return f"{trait['name']}*" if trait.get("weak") else str(trait["name"])


def trait_hover(trait: dict[str, Any]) -> str:
    weak = "<br><i>weak: too few answers did what they were asked</i>" if trait.get("weak") else ""
    pcs = ", ".join(f"PC{i + 1} {c:+.2f}" for i, c in enumerate(trait.get("pc_cosines") or []))
    return (
        f"<b>{html.escape(trait['name'])}</b><br>{_wrap(trait.get('description', ''))}<br>"
        f"opposite: {_wrap(trait.get('opposite', ''))}<br>cosine with the Assistant Axis {trait['axis_cosine']:+.3f}"
        + (f"<br>cosine with the persona space's {pcs}" if pcs else "")
        + weak
    )


def cosine_scale(data: dict[str, Any]) -> dict[str, Any]:
    """A colour scale symmetric about 0 that spans the traits' cosines with the axis (0 stays white)."""
    reach = max([abs(t["axis_cosine"]) for t in data["traits"]] + [0.05])
    return {"colorscale": ASSISTANT_BLUE, "cmin": -reach, "cmax": reach, "cmid": 0.0}


def ranked(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The traits from the Assistant end (highest cosine with the axis) to the role-play end."""
    return sorted(data["traits"], key=lambda t: t["axis_cosine"], reverse=True)


def trait_bars(data: dict[str, Any], highlight: str | None = None) -> go.Figure:
    """One bar per trait (a single trace: its bars are the traits), the Assistant end at the top."""
    traits = ranked(data)
    values = [t["axis_cosine"] for t in traits]
    scale = cosine_scale(data)
    fig = go.Figure(
        go.Bar(
            x=values, y=[trait_label(t) for t in traits], orientation="h", name="traits",
            marker={"color": values, **scale, "line": {"width": [2 if t["name"] == highlight else 0 for t in traits],
                                                              "color": "black"},
                    "pattern": {"shape": ["/" if t.get("weak") else "" for t in traits], "fgcolor": "#444"}},
            hovertext=[trait_hover(t) for t in traits], hoverinfo="text", customdata=[t["name"] for t in traits],
        )
    )  # fmt: skip
    reach = max([abs(v) for v in values] + [0.05]) * 1.15
    weak = sum(bool(t.get("weak")) for t in traits)
    for x, text, anchor in ((-reach, "← role-play end", "left"), (reach, "Assistant end →", "right")):
        fig.add_annotation(x=x, y=1.0, xref="x", yref="paper", yanchor="bottom", xanchor=anchor, text=f"<b>{text}</b>",
                           showarrow=False, yshift=4)  # fmt: skip
    fig.add_vline(x=0, line_width=1, line_color="#888")
    fig.update_layout(
        title=f"Traits by cosine with the Assistant Axis<br><sup>layer {data['layer']} · {len(traits)} traits"
        + (f", {weak} weak (hatched, *)" if weak else "")
        + "</sup>",
        height=max(320, BAR_PX * len(traits) + 150), template="plotly_white", showlegend=False,
        margin={"l": 140, "r": 20, "t": 80, "b": 60}, bargap=0.15,
    )  # fmt: skip
    fig.update_xaxes(title="cosine with the Assistant Axis", range=[-reach, reach], zeroline=False)
    fig.update_yaxes(autorange="reversed", dtick=1, tickfont={"size": 11}, automargin=True)
    return fig


def trait_map(data: dict[str, Any], dims: int = 2, highlight: str | None = None) -> go.Figure:
    """The traits in their own PCA (fitted on the non-weak traits), coloured by their cosine with the axis."""
    key = "pca_3d" if dims == 3 else "pca_2d"
    placed = [t for t in data["traits"] if t.get(key) is not None]
    scatter: Any = go.Scatter3d if dims == 3 else go.Scatter
    scale = cosine_scale(data)
    fig = go.Figure()
    for i, (label, group, symbol) in enumerate(
        (
            ("traits", [t for t in placed if not t.get("weak")], "circle"),
            ("weak traits", [t for t in placed if t.get("weak")], "circle-open"),
        )
    ):
        if not group and i:
            continue
        pts, colours = [t[key] for t in group], [t["axis_cosine"] for t in group]
        outline = {"width": 1.5, "color": colours, **scale} if i else {"width": 0}
        marker = {"size": (8 if dims == 2 else 4) + 2 * i, "symbol": symbol, "color": colours, **scale,
                  "showscale": i == 0, "colorbar": {"title": "cosine with<br>the axis"}, "line": outline}  # fmt: skip
        coords = {"x": [p[0] for p in pts], "y": [p[1] for p in pts]} | ({"z": [p[2] for p in pts]} if dims == 3 else {})
        fig.add_trace(scatter(**coords, mode="markers", marker=marker, name=label, hoverinfo="text",
                              hovertext=[trait_hover(t) for t in group], customdata=[t["name"] for t in group]))  # fmt: skip
    chosen = [t for t in placed if t["name"] == highlight]
    if chosen:
        p = chosen[0][key]
        coords = {"x": [p[0]], "y": [p[1]]} | ({"z": [p[2]]} if dims == 3 else {})
        ring = {"size": 10, "color": "black", "symbol": "circle-open"} if dims == 3 else {
            "size": 16, "color": "rgba(0,0,0,0)", "line": {"width": 2, "color": "black"}}  # fmt: skip
        fig.add_trace(scatter(**coords, mode="markers+text", text=[highlight], marker=ring, name="chosen", hoverinfo="skip",
                              **({"textposition": "top center"} if dims == 2 else {})))  # fmt: skip
    variance = data.get("pca_variance") or []
    titles = [f"trait PC{i + 1}" + (f" ({variance[i]:.0%})" if i < len(variance) else "") for i in range(3)]
    fit = "the non-weak traits" if data.get("pca_fit") == "non-weak" else "every trait"
    fig.update_layout(
        title=f"Trait space (PCA of the trait vectors)<br><sup>layer {data['layer']} · {len(placed)} traits · fitted on {fit}</sup>",
        height=600, template="plotly_white", legend=BOTTOM_LEGEND,
        margin={"l": 10, "r": 10, "t": 50, "b": 50} if dims == 3 else {"l": 60, "r": 10, "t": 50, "b": 100},
    )  # fmt: skip
    if dims == 3:
        fig.update_layout(scene={"xaxis_title": titles[0], "yaxis_title": titles[1], "zaxis_title": titles[2]}, uirevision="keep")
    else:
        fig.update_xaxes(title=titles[0])
        fig.update_yaxes(title=titles[1])
    return fig


def archetype_rows(data: dict[str, Any], n: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The ``n`` archetypes projecting highest on the trait and the ``n`` lowest (all of them, once, when few)."""
    rows = data["archetypes"]
    if len(rows) <= 2 * n:
        half = (len(rows) + 1) // 2
        return rows[:half], rows[half:]
    return rows[:n], rows[-n:]


def archetype_bars(data: dict[str, Any], n: int = 15) -> go.Figure:
    """The archetypes expressing the trait most (top) and least (bottom), the default Assistant as a line."""
    top, bottom = archetype_rows(data, n)
    fig = go.Figure()
    for label, group, colour in (("most", top, TOP_COLOR), ("least", bottom, BOTTOM_COLOR)):
        fig.add_trace(go.Bar(
            x=[r["projection"] for r in group], y=[f"{r['name']}*" if r.get("weak") else r["name"] for r in group],
            orientation="h", name=f"{label} {data['trait']}", marker={"color": colour, "pattern": {
                "shape": ["/" if r.get("weak") else "" for r in group], "fgcolor": "#444"}},
            hovertext=[f"<b>{html.escape(r['name'])}</b> ({html.escape(r.get('category', ''))})<br>projection "
                       f"{r['projection']:.2f}" + (" · weak archetype" if r.get("weak") else "") for r in group],
            hoverinfo="text",
        ))  # fmt: skip
    mine = float(data["assistant"])
    fig.add_vline(x=mine, line_dash="dash", line_color=ASSISTANT_COLOR, line_width=2)
    fig.add_annotation(x=mine, y=1.0, yref="paper", yanchor="bottom", text=f"default Assistant {mine:.2f}", showarrow=False,
                       font={"color": ASSISTANT_COLOR}, yshift=4)  # fmt: skip
    count = len(top) + len(bottom)
    fig.update_layout(
        title=f"Archetypes projected on “{data['trait']}”<br><sup>layer {data['layer']} · the top and bottom {len(top)}</sup>",
        height=max(320, BAR_PX * count + 190), template="plotly_white", legend=BOTTOM_LEGEND, bargap=0.15,
        margin={"l": 140, "r": 20, "t": 80, "b": 100},
    )  # fmt: skip
    fig.update_xaxes(title=f"projection on the unit “{data['trait']}” vector")
    fig.update_yaxes(autorange="reversed", dtick=1, tickfont={"size": 11}, automargin=True)
    return fig
