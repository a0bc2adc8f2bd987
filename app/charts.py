"""Plotly figures of Persona Space: pure functions from plain data to figures (tested without a browser)."""

from __future__ import annotations

import html
import textwrap
from typing import Any

import plotly.graph_objects as go

from app.conversation import Conversation, per_turn_rows

VARIANT_COLORS = {"single": "#4c78a8", "uncapped": "#e45756", "capped": "#4c78a8"}
ROLEPLAY_LABEL, ASSISTANT_LABEL = "Role-play", "Assistant"


def _wrap(text: str, width: int = 60, lines: int = 4) -> str:
    parts = textwrap.wrap(text or "", width)[:lines]
    return "<br>".join(html.escape(p) for p in parts)


def role_hover(role: dict[str, Any]) -> str:
    example = (role.get("example") or {}).get("answer", "")
    return (
        f"<b>{html.escape(role['name'])}</b> ({html.escape(role.get('category', ''))})<br>"
        f"{_wrap(role.get('description', ''))}<br>projection {role['projection']:.2f}"
        + (f"<br><i>{_wrap(example)}</i>" if example else "")
    )


def persona_map(summary: dict[str, Any], layout: str = "pca", dims: int = 2, highlight: list[str] | None = None) -> go.Figure:
    """Archetypes coloured by their projection on the axis (diverging, centred at the space's mid-point), the
    Assistant marked, the axis drawn as an arrow in PCA space."""
    roles = summary["roles"]
    key = "pca" if layout == "pca" else f"umap_{dims}d"
    pts = [r[key] for r in roles]
    projections = [r["projection"] for r in roles]
    centre = (max(projections) + min(projections)) / 2 if projections else 0.0
    marker = {
        "size": 7 if dims == 2 else 4, "color": projections, "colorscale": "RdBu", "cmid": centre,
        "colorbar": {"title": "projection"}, "line": {"width": 0},
    }  # fmt: skip
    hover = [role_hover(r) for r in roles]
    names = [r["name"] for r in roles]
    fig = go.Figure()
    assistant = summary["assistant"][key if layout == "pca" else f"umap_{dims}d"]
    if dims == 3:
        fig.add_trace(go.Scatter3d(x=[p[0] for p in pts], y=[p[1] for p in pts], z=[p[2] for p in pts], mode="markers", marker=marker,
                                   text=names, hovertext=hover, hoverinfo="text", name="archetypes"))  # fmt: skip
        if assistant:
            fig.add_trace(go.Scatter3d(x=[assistant[0]], y=[assistant[1]], z=[assistant[2]], mode="markers+text", text=["Assistant"],
                                       marker={"size": 9, "color": "gold", "symbol": "diamond", "line": {"width": 2, "color": "black"}},
                                       name="default Assistant", hoverinfo="text", hovertext=["the default Assistant"]))  # fmt: skip
    else:
        fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="markers", marker=marker, text=names,
                                 hovertext=hover, hoverinfo="text", name="archetypes", customdata=names))  # fmt: skip
        if assistant:
            fig.add_trace(go.Scatter(x=[assistant[0]], y=[assistant[1]], mode="markers+text", text=["Assistant"], textposition="top center",
                                     marker={"size": 16, "color": "gold", "symbol": "star", "line": {"width": 1, "color": "black"}},
                                     name="default Assistant", hoverinfo="text", hovertext=["the default Assistant"]))  # fmt: skip
        if layout == "pca":
            arrow = summary["axis_arrow_pca"]
            span = max(max(abs(p[0]) for p in pts), max(abs(p[1]) for p in pts)) * 0.8 if pts else 1.0
            norm = (arrow[0] ** 2 + arrow[1] ** 2) ** 0.5 or 1.0
            fig.add_annotation(x=arrow[0] / norm * span, y=arrow[1] / norm * span, ax=-arrow[0] / norm * span, ay=-arrow[1] / norm * span,
                               xref="x", yref="y", axref="x", ayref="y", showarrow=True, arrowhead=3, arrowwidth=2, arrowcolor="#2ca02c",
                               text="Assistant Axis", font={"color": "#2ca02c"})  # fmt: skip
    if highlight:
        chosen = [r for r in roles if r["name"] in set(highlight)]
        hp = [r[key] for r in chosen]
        if dims == 3:
            fig.add_trace(go.Scatter3d(x=[p[0] for p in hp], y=[p[1] for p in hp], z=[p[2] for p in hp], mode="markers+text",
                                       text=[r["name"] for r in chosen], marker={"size": 8, "color": "black", "symbol": "circle-open"},
                                       name="highlighted", hoverinfo="skip"))  # fmt: skip
        else:
            fig.add_trace(go.Scatter(x=[p[0] for p in hp], y=[p[1] for p in hp], mode="markers+text", text=[r["name"] for r in chosen],
                                     textposition="top center", marker={"size": 14, "color": "rgba(0,0,0,0)", "line": {"width": 2, "color": "black"}},
                                     name="highlighted", hoverinfo="skip"))  # fmt: skip
    axis_names = ("PC1", "PC2", "PC3") if layout == "pca" else ("UMAP 1", "UMAP 2", "UMAP 3")
    title = f"{len(roles)} archetypes — {'PCA at layer ' + str(summary['layer']) if layout == 'pca' else 'UMAP at layer ' + str(summary['target_layer'])}"
    fig.update_layout(
        title=title, height=620, margin={"l": 10, "r": 10, "t": 50, "b": 10}, legend={"orientation": "h"}, template="plotly_white"
    )
    if dims == 3:
        fig.update_layout(
            scene={"xaxis_title": axis_names[0], "yaxis_title": axis_names[1], "zaxis_title": axis_names[2]}, uirevision="keep"
        )
    else:
        fig.update_xaxes(title=axis_names[0])
        fig.update_yaxes(title=axis_names[1])
    return fig


def layer_figures(summary: dict[str, Any]) -> go.Figure:
    layers = list(range(summary["n_layers"]))
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=layers, y=summary["axis_pc1_cosine"], mode="lines+markers", name="cos(PC1, axis)"))
    fig.add_trace(go.Scatter(x=layers, y=summary["pc1_variance_ratio"], mode="lines+markers", name="PC1 variance ratio"))
    fig.add_vline(x=summary["target_layer"], line_dash="dot", annotation_text="target layer")
    fig.update_layout(height=300, title="By layer", xaxis_title="layer", template="plotly_white", margin={"t": 40, "b": 30})
    return fig


def variance_figure(summary: dict[str, Any]) -> go.Figure:
    ev = summary["explained_variance"]
    cumulative = [sum(ev[: i + 1]) for i in range(len(ev))]
    fig = go.Figure(go.Bar(x=[f"PC{i + 1}" for i in range(len(ev))], y=ev, name="explained"))
    fig.add_trace(go.Scatter(x=[f"PC{i + 1}" for i in range(len(ev))], y=cumulative, name="cumulative", mode="lines+markers"))
    fig.update_layout(
        height=300, title=f"Variance explained at layer {summary['layer']}", template="plotly_white", margin={"t": 40, "b": 30}
    )
    return fig


def turn_chart(conv: Conversation, summary: dict[str, Any] | None) -> go.Figure:
    rows = per_turn_rows(conv)
    fig = go.Figure()
    for variant in conv.variants:
        pts = [r for r in rows if r["variant"] == variant]
        fig.add_trace(
            go.Scatter(
                x=[r["exchange"] for r in pts], y=[r["projection"] for r in pts], mode="lines+markers", name=variant,
                line={"color": VARIANT_COLORS.get(variant)}, customdata=[r["turn"] for r in pts],
                text=[html.escape(r["snippet"]) for r in pts], hovertemplate="turn %{x}<br>%{y:.2f}<br>%{text}<extra></extra>",
            )
        )  # fmt: skip
    if summary:
        fig.add_hline(y=summary["assistant"]["projection"], line_dash="dot", line_color="green", annotation_text=ASSISTANT_LABEL)
        low = min(r["projection"] for r in summary["roles"])
        fig.add_hline(y=low, line_dash="dot", line_color="purple", annotation_text=ROLEPLAY_LABEL)
    fig.update_layout(height=300, title="Per-turn projection on the Assistant Axis", xaxis_title="turn", yaxis_title="projection",
                      template="plotly_white", margin={"t": 40, "b": 30})  # fmt: skip
    return fig


def trajectory(conv: Conversation, summary: dict[str, Any]) -> go.Figure:
    """The conversation's turns drawn over the persona space (PCA 2D at the target layer)."""
    fig = go.Figure()
    roles = summary["roles"]
    fig.add_trace(go.Scatter(x=[r["pca"][0] for r in roles], y=[r["pca"][1] for r in roles], mode="markers", name="archetypes",
                             marker={"size": 5, "color": "lightgray"}, text=[r["name"] for r in roles], hoverinfo="text"))  # fmt: skip
    a = summary["assistant"]["pca"]
    fig.add_trace(
        go.Scatter(x=[a[0]], y=[a[1]], mode="markers", name="Assistant", marker={"size": 14, "color": "gold", "symbol": "star"})
    )
    rows = per_turn_rows(conv)
    for variant in conv.variants:
        pts = [r for r in rows if r["variant"] == variant and r["pca"]]
        fig.add_trace(
            go.Scatter(
                x=[r["pca"][0] for r in pts], y=[r["pca"][1] for r in pts], mode="lines+markers+text", name=f"{variant} turns",
                text=[str(r["exchange"]) for r in pts], textposition="top center", line={"color": VARIANT_COLORS.get(variant)},
                hovertext=[f"turn {r['exchange']}: nearest {', '.join(n['name'] for n in r['nearest'][:3])}" for r in pts], hoverinfo="text",
            )
        )  # fmt: skip
    fig.update_layout(
        height=360, title="Trajectory over the persona space (PCA)", template="plotly_white", margin={"t": 40, "b": 30}
    )
    return fig


def standalone_html(fig: go.Figure) -> str:
    """The figure as one HTML file that needs no network: plotly.js is embedded, never loaded from a CDN."""
    return str(fig.to_html(include_plotlyjs=True, full_html=True))
