"""Plotly figures of Persona Space: pure functions from plain data to figures (tested without a browser)."""

from __future__ import annotations

import html
import itertools
import textwrap
from typing import Any

import plotly.graph_objects as go

from app.conversation import Conversation, per_turn_rows
from app.space_charts import colour_range

VARIANT_COLORS = {"single": "#4c78a8", "uncapped": "#e45756", "capped": "#4c78a8"}
ROLEPLAY_LABEL, ASSISTANT_LABEL = "Role-play", "Assistant"
# a horizontal legend at the very bottom of the figure: below the x-axis title, never over it (needs a bottom margin)
BOTTOM_LEGEND = {"orientation": "h", "yref": "container", "y": 0.0, "yanchor": "bottom", "x": 0.0}


def _wrap(text: str, width: int = 60, lines: int = 4) -> str:
    parts = textwrap.wrap(text or "", width)[:lines]
    return "<br>".join(html.escape(p) for p in parts)


def layer_figures(summary: dict[str, Any]) -> go.Figure:
    layers = list(range(summary["n_layers"]))
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=layers, y=summary["axis_pc1_cosine"], mode="lines+markers", name="cos(PC1, axis)"))
    fig.add_trace(go.Scatter(x=layers, y=summary["pc1_variance_ratio"], mode="lines+markers", name="PC1 variance ratio"))
    fig.add_vline(x=summary["target_layer"], line_dash="dot", annotation_text="target layer")
    fig.update_layout(height=320, title="By layer", xaxis_title="layer", yaxis_title="cosine / variance ratio", template="plotly_white",
                      margin={"t": 40, "b": 80}, legend=BOTTOM_LEGEND)  # fmt: skip
    fig.update_xaxes(**whole_ticks(len(layers), start=0))
    return fig


def variance_figure(summary: dict[str, Any]) -> go.Figure:
    ev = summary["explained_variance"]
    cumulative = [sum(ev[: i + 1]) for i in range(len(ev))]
    fig = go.Figure(go.Bar(x=[f"PC{i + 1}" for i in range(len(ev))], y=ev, name="explained"))
    fig.add_trace(go.Scatter(x=[f"PC{i + 1}" for i in range(len(ev))], y=cumulative, name="cumulative", mode="lines+markers"))
    fig.update_layout(
        height=320, title=f"Variance explained at layer {summary['layer']}", xaxis_title="principal component",
        yaxis_title="share of variance", template="plotly_white", margin={"t": 40, "b": 80}, legend=BOTTOM_LEGEND,
    )  # fmt: skip
    return fig


def reference_levels(summary: dict[str, Any]) -> dict[str, float]:
    """The drift charts' two reference levels: the default Assistant's projection and the role-play end (the lowest
    archetype's projection)."""
    levels = {ASSISTANT_LABEL: float(summary["assistant"]["projection"])}
    if summary.get("roles"):
        levels[ROLEPLAY_LABEL] = float(min(r["projection"] for r in summary["roles"]))
    return levels


def add_reference_lines(fig: go.Figure, summary: dict[str, Any], row: int | None = None, col: int | None = None) -> go.Figure:
    """The Assistant (green) and role-play (purple) reference lines of every drift chart, labelled in the right
    margin (never over the data or a control label; the figure needs ``margin.r`` ≈ 70); ``row``/``col`` pick a
    subplot."""
    where = {"row": row, "col": col} if row is not None else {}
    yref = "y" if row in (None, 1) else f"y{row}"
    colors = {ASSISTANT_LABEL: "green", ROLEPLAY_LABEL: "purple"}
    for label, y in reference_levels(summary).items():
        fig.add_hline(y=y, line_dash="dot", line_color=colors[label], **where)
        fig.add_annotation(x=1.0, xref="paper", xanchor="left", xshift=4, y=y, yref=yref, text=label, showarrow=False,
                           font={"color": colors[label], "size": 12})  # fmt: skip
    return fig


def nice_step(n: int, most: int = 12) -> int:
    """A whole tick step of 1, 2, 5, 10, 20, 50 ... that puts at most ``most`` ticks over ``n`` values."""
    step, grow = 1, itertools.cycle((2.0, 2.5, 2.0))
    while n / step > most:
        step = int(step * next(grow))
    return step


def whole_ticks(n: int, start: int = 1) -> dict[str, Any]:
    """x-axis settings that label whole numbers only, from ``start`` (turns from 1, tokens from 0), one tick per
    1, 2, 5, 10 ... values so that at most about a dozen show."""
    return {"tick0": start, "dtick": nice_step(n), "tickformat": "d"}


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
        add_reference_lines(fig, summary)
    n = max((int(r["exchange"]) for r in rows), default=1)
    fig.update_layout(height=340, title="Per-turn projection on the Assistant Axis", xaxis_title="turn", yaxis_title="projection",
                      template="plotly_white", margin={"t": 40, "b": 80, "r": 80}, legend=BOTTOM_LEGEND)  # fmt: skip
    fig.update_xaxes(**whole_ticks(n))
    return fig


def _span(values: list[float], pad: float = 0.08) -> list[float]:
    lo, hi = min(values), max(values)
    margin = (hi - lo) * pad or 1.0
    return [lo - margin, hi + margin]


def trajectory(conv: Conversation, summary: dict[str, Any]) -> go.Figure:
    """The conversation's turns drawn over the persona space (PCA 2D at the target layer): archetypes coloured by
    their projection on the colour scale of the map, and a view that holds the archetypes and every turn."""
    fig = go.Figure()
    roles = summary["roles"]
    lo, hi = colour_range(summary)
    fig.add_trace(go.Scatter(x=[r["pca"][0] for r in roles], y=[r["pca"][1] for r in roles], mode="markers", name="archetypes",
                             marker={"size": 6, "color": [r["projection"] for r in roles], "colorscale": "RdBu", "cmin": lo,
                                     "cmax": hi, "cmid": (lo + hi) / 2, "opacity": 0.7, "showscale": True,
                                     "colorbar": {"title": "projection", "thickness": 10}},
                             text=[f"{html.escape(r['name'])}: projection {r['projection']:.2f}" for r in roles],
                             hoverinfo="text"))  # fmt: skip
    a = summary["assistant"]["pca"]
    fig.add_trace(
        go.Scatter(x=[a[0]], y=[a[1]], mode="markers", name="Assistant",
                   marker={"size": 14, "color": "gold", "symbol": "star", "line": {"width": 1, "color": "black"}})
    )  # fmt: skip
    xs, ys = [r["pca"][0] for r in roles] + [a[0]], [r["pca"][1] for r in roles] + [a[1]]
    rows = per_turn_rows(conv)
    for variant in conv.variants:
        pts = [r for r in rows if r["variant"] == variant and r["pca"]]
        xs += [r["pca"][0] for r in pts]
        ys += [r["pca"][1] for r in pts]
        fig.add_trace(
            go.Scatter(
                x=[r["pca"][0] for r in pts], y=[r["pca"][1] for r in pts], mode="lines+markers+text", name=f"{variant} turns",
                text=[str(r["exchange"]) for r in pts], textposition="top center", line={"color": VARIANT_COLORS.get(variant)},
                hovertext=[f"turn {r['exchange']}: nearest {', '.join(n['name'] for n in r['nearest'][:3])}" for r in pts], hoverinfo="text",
            )
        )  # fmt: skip
    fig.update_layout(
        height=380, title="Trajectory over the persona space (PCA)", template="plotly_white", margin={"t": 40, "b": 80},
        xaxis_title="PC1", yaxis_title="PC2", legend=BOTTOM_LEGEND,
    )  # fmt: skip
    fig.update_xaxes(range=_span(xs))
    fig.update_yaxes(range=_span(ys))
    return fig


def standalone_html(fig: go.Figure) -> str:
    """The figure as one HTML file that needs no network: plotly.js is embedded, never loaded from a CDN."""
    return str(fig.to_html(include_plotlyjs=True, full_html=True))


def charts_html(figs: list[go.Figure], title: str) -> str:
    """Several figures as one HTML file that needs no network: plotly.js is embedded once, never loaded from a CDN."""
    parts = [str(fig.to_html(include_plotlyjs=i == 0, full_html=False)) for i, fig in enumerate(figs)]
    head = f"<head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
    return f"<!DOCTYPE html><html>{head}<body>" + "".join(parts) + "</body></html>"
