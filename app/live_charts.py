"""The live per-token chart: the cap seen working as it happens. Pure functions from a conversation to data and
figures (tested on data, without a browser).

Top panel: the monitor layer's projection per token (raw points and a moving average). Bottom panel: the first
capped layer's projection before and after the cap, the floor tau it enforces, and the tokens it moved. Control
changes are vertical lines labelled with what changed ("cap 75→95 from token 17").
"""

from __future__ import annotations

import html
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from app.charts import add_reference_lines, whole_ticks
from app.conversation import Conversation, Exchange, Reply

VARIANT_COLORS = {"single": "#4c78a8", "uncapped": "#e45756", "capped": "#4c78a8"}
CAP_COLORS = {"before": "#f58518", "after": "#4c78a8", "tau": "#54a24b", "moved": "#b279a2"}


def moving_average(values: list[float | None], window: int) -> list[float | None]:
    """Trailing mean over the last ``window`` points (missing points skipped): the newest value never changes once
    drawn, so the smoothed line does not wobble as tokens arrive."""
    window = max(1, int(window))
    out: list[float | None] = []
    for i in range(len(values)):
        seen = [v for v in values[max(0, i - window + 1) : i + 1] if v is not None]
        out.append(sum(seen) / len(seen) if seen else None)
    return out


def _first(value: Any) -> float | None:
    if isinstance(value, list):
        return float(value[0]) if value else None
    return None if value is None else float(value)


def token_series(reply: Reply) -> dict[str, list[Any]]:
    """Per token: index, text, the monitor reading, and at the first capped layer the projection before and after
    the cap, the floor tau, and whether the cap moved it (None where the cap was off)."""
    rows = reply.tokens
    before = [_first(t.get("projection_before_cap")) if t.get("cap_on") else None for t in rows]
    after = [_first(t.get("projection_after_cap")) if t.get("cap_on") else None for t in rows]
    return {
        "index": [int(t["index"]) for t in rows],
        "text": [str(t.get("text", "")) for t in rows],
        "monitor": [float(t["projection"]) for t in rows],
        "before": before,
        "after": after,
        "tau": [_first(t.get("tau")) if t.get("cap_on") else None for t in rows],
        "moved": [bool(t.get("cap_on")) and float(t.get("cap_delta") or 0.0) > 0 for t in rows],
        "cap_layer": [(t.get("cap_layers") or [None])[0] if t.get("cap_on") else None for t in rows],
    }


def _num(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _window(value: Any) -> str:
    return "none" if not value else f"{value[0]}–{value[1]}"


CHANGES = (  # control field, label, how a value is shown
    ("cap_percentile", "cap", _num),
    ("cap_threshold", "cap τ", lambda v: "percentile" if v is None else _num(v)),
    ("cap_layers", "cap layers", _window),
    ("steer_coefficient", "steer", _num),
    ("steer_layers", "steer layers", _window),
    ("temperature", "temperature", _num),
    ("top_p", "top-p", _num),
    ("seed", "seed", _num),
    ("max_new_tokens", "max tokens", _num),
    ("repetition_penalty", "repetition penalty", _num),
)


def describe_change(old: dict[str, Any] | None, new: dict[str, Any] | None) -> str:
    """What changed between two control sets, e.g. ``cap on, cap 75→95``."""
    if new is None:
        return "controls changed"
    if old is None:
        return "controls: " + ", ".join(
            [("cap on" if new.get("cap_enabled") else "cap off")]
            + [f"{label} {show(new[field])}" for field, label, show in CHANGES[:1] if field in new]
        )
    parts = []
    if bool(old.get("cap_enabled")) != bool(new.get("cap_enabled")):
        parts.append("cap on" if new.get("cap_enabled") else "cap off")
    if bool(old.get("greedy", True)) != bool(new.get("greedy", True)):
        parts.append("greedy" if new.get("greedy") else "sampling")
    for field, label, show in CHANGES:
        a, b = old.get(field), new.get(field)
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            a, b = list(a), list(b)
        if a != b and (field in old or field in new):
            parts.append(f"{label} {show(a)}→{show(b)}")
    return ", ".join(parts) or "controls unchanged"


def control_changes(conv: Conversation, reply: Reply) -> list[tuple[int, str]]:
    """``(from_token, label)`` for every control change applied during ``reply``."""
    out = []
    previous = reply.controls_version
    for mark, version in zip(reply.control_marks, reply.control_versions, strict=False):
        old = conv.controls.get(previous) if previous is not None else None
        if old is None:
            known = [v for v in conv.controls if v < version]
            old = conv.controls[max(known)] if known else None
        out.append((mark, f"{describe_change(old, conv.controls.get(version))} from token {mark}"))
        previous = version
    return out


def shown_exchange(conv: Conversation) -> Exchange | None:
    """The exchange the per-token chart draws: the newest with a token (a stopped or cancelled newer one that never
    started would leave the chart blank), else the newest."""
    with_tokens = [ex for ex in conv.exchanges if any(r.tokens for r in ex.replies.values())]
    return with_tokens[-1] if with_tokens else (conv.exchanges[-1] if conv.exchanges else None)


def cap_panel_title(cap_layer: int | None, controls: dict[str, Any] | None) -> tuple[str, str | None]:
    """The lower panel's title, and the note drawn in it while it has nothing to show.

    ``cap_layer`` is the first capped layer the shown tokens carry (None when none was capped); ``controls`` are the
    controls in force now, so a cap switched on after the shown tokens is said to be on, never "(cap off)"."""
    if cap_layer is not None:
        return f"First capped layer {cap_layer}: before and after the cap", None
    on = bool(controls and controls.get("cap_enabled"))
    window = (controls or {}).get("cap_layers") or []
    first = f" {int(window[0])}" if on and window else ""
    if on:
        return (
            f"First capped layer{first}: before and after the cap",
            "The cap is on: it applies from the next token written (the tokens above were written without it).",
        )
    return (
        "First capped layer: the cap is off",
        'The cap is off, so nothing is capped. Switch "Cap on" to see the capped layer\'s projection<br>'
        "before and after the cap, and the floor τ it enforces.",
    )


def live_token_figure(
    conv: Conversation, summary: dict[str, Any] | None, window: int = 5, controls: dict[str, Any] | None = None
) -> go.Figure:
    """The newest exchange with tokens, token by token: monitor layer on top, the first capped layer (before/after
    the cap, the floor tau, the tokens moved) below, control changes labelled on both.

    ``controls`` are the controls in force now (default: the newest the event log holds); while no shown token was
    capped, the lower panel's title and note follow them."""
    monitor_layer = summary.get("target_layer") if summary else None
    if controls is None and conv.newest_controls is not None:
        controls = conv.newest_controls[1]
    shown = shown_exchange(conv)
    replies = list(shown.replies.values()) if shown is not None else []
    capped = [(r, token_series(r)) for r in replies]
    cap_layer = next((layer for _, s in capped for layer in s["cap_layer"] if layer is not None), None)
    cap_title, cap_note = cap_panel_title(cap_layer, controls)
    fig = make_subplots(
        rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.14,
        subplot_titles=(
            f"Monitor layer {monitor_layer if monitor_layer is not None else ''}: projection per token",
            cap_title,
        ),
    )  # fmt: skip
    many = len(replies) > 1
    marks: list[tuple[int, str]] = []
    for reply, series in capped:
        pre = f"{reply.variant} · " if many else ""
        color = VARIANT_COLORS.get(reply.variant, "#4c78a8")
        hover = [html.escape(t) for t in series["text"]]
        fig.add_trace(go.Scatter(x=series["index"], y=series["monitor"], mode="markers", name=pre + "monitor", text=hover,
                                 marker={"size": 4, "color": color, "opacity": 0.45}, legendgroup=reply.variant,
                                 hovertemplate="token %{x}: '%{text}'<br>monitor %{y:.2f}<extra></extra>"), row=1, col=1)  # fmt: skip
        fig.add_trace(go.Scatter(x=series["index"], y=moving_average(series["monitor"], window), mode="lines",
                                 name=pre + f"monitor, average of {window}", line={"color": color, "width": 2.5},
                                 legendgroup=reply.variant, hoverinfo="skip"), row=1, col=1)  # fmt: skip
        if any(v is not None for v in series["before"]):
            fig.add_trace(go.Scatter(x=series["index"], y=series["before"], mode="markers", name=pre + "before cap", text=hover,
                                     marker={"size": 4, "color": CAP_COLORS["before"], "opacity": 0.6},
                                     hovertemplate="token %{x}: '%{text}'<br>before cap %{y:.2f}<extra></extra>"), row=2, col=1)  # fmt: skip
            fig.add_trace(go.Scatter(x=series["index"], y=moving_average(series["before"], window), mode="lines",
                                     name=pre + f"before cap, average of {window}", line={"color": CAP_COLORS["before"], "dash": "dot"},
                                     hoverinfo="skip"), row=2, col=1)  # fmt: skip
            fig.add_trace(go.Scatter(x=series["index"], y=series["after"], mode="lines", name=pre + "after cap",
                                     line={"color": CAP_COLORS["after"], "width": 2}, connectgaps=False,
                                     hovertemplate="token %{x}<br>after cap %{y:.2f}<extra></extra>"), row=2, col=1)  # fmt: skip
            fig.add_trace(go.Scatter(x=series["index"], y=series["tau"], mode="lines", name=pre + "floor τ", line_shape="hv",
                                     line={"color": CAP_COLORS["tau"], "dash": "dash"}, connectgaps=False,
                                     hovertemplate="token %{x}<br>τ %{y:.2f}<extra></extra>"), row=2, col=1)  # fmt: skip
            moved = [i for i, m in enumerate(series["moved"]) if m]
            fig.add_trace(go.Scatter(x=[series["index"][i] for i in moved], y=[series["after"][i] for i in moved], mode="markers",
                                     name=pre + "moved by the cap", marker={"symbol": "triangle-up", "size": 8, "color": CAP_COLORS["moved"]},
                                     hovertemplate="token %{x}: raised to %{y:.2f}<extra></extra>"), row=2, col=1)  # fmt: skip
        for mark, label in control_changes(conv, reply):
            marks.append((mark, label))
    last = max((max(series["index"]) for _, series in capped if series["index"]), default=0)
    for i, (mark, label) in enumerate(sorted(set(marks))):
        # inside the top panel, under its title (never over it), one row each so two close changes do not collide;
        # a change in the right half is labelled leftwards, so the label never runs into the margin's labels
        fig.add_vline(x=mark - 0.5, line_dash="dash", line_color="gray", row="all", col=1)
        fig.add_annotation(x=mark - 0.5, y=1.0, yref="y domain", xref="x", text=html.escape(label), showarrow=False,
                           xanchor="right" if mark > last / 2 else "left", yanchor="top", yshift=-2 - 16 * (i % 3), font={"size": 11, "color": "#555"},
                           bgcolor="rgba(255,255,255,0.8)")  # fmt: skip
    if summary:
        add_reference_lines(fig, summary, row=1, col=1)
    if cap_note:  # a trace of no points keeps the lower panel's axes (and the x title "token") drawn
        fig.add_trace(go.Scatter(x=[], y=[], mode="markers", showlegend=False, hoverinfo="skip", name="no capped token"),
                      row=2, col=1)  # fmt: skip
        fig.update_yaxes(showticklabels=False, showgrid=False, row=2, col=1)
        fig.add_annotation(x=0.5, y=0.5, xref="x2 domain", yref="y2 domain", text=cap_note, showarrow=False,
                           font={"size": 12, "color": "#666"})  # fmt: skip
    # the legend sits at the very bottom of the figure, below the x-axis title (never over it)
    fig.update_layout(height=520, template="plotly_white", margin={"t": 60, "b": 120, "r": 80},
                      legend={"orientation": "h", "yref": "container", "y": 0.0, "yanchor": "bottom", "x": 0.0},
                      uirevision="live")  # fmt: skip
    fig.update_xaxes(title_text="token", row=2, col=1)
    n = max((max(series["index"]) + 1 for _, series in capped if series["index"]), default=1)
    fig.update_xaxes(**whole_ticks(n, start=0))  # tokens are whole: never 0, 1, 1, 2 from fractional ticks
    fig.update_yaxes(title_text="projection")
    return fig
