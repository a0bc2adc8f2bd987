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
