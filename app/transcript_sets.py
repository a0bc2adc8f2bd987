"""Sets of transcripts on the Transcripts page: uploads split into conversations, the overlaid per-turn drift
chart, the per-file summary table and the per-token heat strip. Pure functions of the worker's results."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go

from app.charts import BOTTOM_LEGEND, add_reference_lines, whole_ticks


class UploadError(ValueError):
    """An uploaded file that holds no readable conversation."""


def split_upload(name: str, raw: bytes) -> list[tuple[str, Any]]:
    """``(label, decoded JSON)`` per conversation: a ``.jsonl`` file gives one per non-empty line (``name:N``),
    anything else one. The worker validates each conversation's messages."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UploadError(f"{name} is not UTF-8 text") from exc
    if not name.endswith(".jsonl"):
        try:
            return [(name, json.loads(text))]
        except ValueError as exc:
            raise UploadError(f"{name} is not a JSON text file: {exc}") from exc
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append((f"{name}:{n}", json.loads(line)))
        except ValueError as exc:
            raise UploadError(f"{name} line {n} is not JSON: {exc}") from exc
    if not out:
        raise UploadError(f"{name} holds no conversation")
    return out


def assistant_texts(data: Any) -> list[str]:
    """The assistant messages' texts of a decoded conversation (any accepted format), in order."""
    messages = data.get("conversation", data.get("messages")) if isinstance(data, dict) else data
    if not isinstance(messages, list):
        return []
    out = []
    for m in messages:
        if isinstance(m, dict) and m.get("role") == "assistant":
            content = m.get("content")
            out.append(content if isinstance(content, str) else json.dumps(content))
    return out


def summary_rows(results: Sequence[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per conversation: turns, first/last/mean/min projection (over turns that have one), tokens, how it was read."""
    rows = []
    for name, result in results:
        values = [t["projection"] for t in result["turns"] if t.get("projection") is not None]
        rows.append({
            "transcript": name,
            "turns": len(result["turns"]),
            "first": values[0] if values else None,
            "last": values[-1] if values else None,
            "mean": sum(values) / len(values) if values else None,
            "min": min(values) if values else None,
            "tokens": result.get("tokens"),
            "read": f"{result['passes']} windows of ≤ {result['window']}" if result.get("windowed") else "one pass",
        })  # fmt: skip
    return rows


def turn_rows(results: Sequence[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per assistant turn of every conversation (the CSV export)."""
    return [
        {
            "transcript": name,
            "turn": t["index"] + 1,
            "projection": t.get("projection"),
            "tokens": t["n_tokens"],
            "context_tokens": t.get("context_tokens"),
            "left_out_messages": t.get("left_out_messages"),
            "nearest": ", ".join(n["name"] for n in t.get("nearest", [])[:3]),
        }
        for name, result in results
        for t in result["turns"]
    ]


def overlay_chart(results: Sequence[tuple[str, dict[str, Any]]], summary: dict[str, Any] | None = None) -> go.Figure:
    """Per-turn projection of each conversation, one line each; ``customdata`` = (conversation index, turn index)."""
    fig = go.Figure()
    for i, (name, result) in enumerate(results):
        turns = [t for t in result["turns"] if t.get("projection") is not None]
        fig.add_trace(
            go.Scatter(
                x=[t["index"] + 1 for t in turns],
                y=[t["projection"] for t in turns],
                mode="lines+markers",
                name=name,
                customdata=[[i, t["index"]] for t in turns],
                hovertemplate=f"{name}<br>assistant turn %{{x}}<br>%{{y:.3f}}<extra></extra>",
            )
        )
    if summary:
        add_reference_lines(fig, summary)
    longest = max((len(r["turns"]) for _, r in results), default=0)
    fig.update_xaxes(**whole_ticks(max(1, longest)))
    layer = results[0][1]["layer"] if results else "?"
    fig.update_layout(
        height=380, title=f"Drift per assistant turn (layer {layer})", xaxis_title="assistant turn", yaxis_title="projection",
        template="plotly_white", clickmode="event+select", margin={"t": 50, "b": 90, "r": 80}, legend=BOTTOM_LEGEND,
    )  # fmt: skip
    return fig


def strip_scale(result: dict[str, Any]) -> tuple[float, float, float] | None:
    """``(low, middle, high)`` of one colour scale for every turn of a transcript: the lowest and highest per-token
    projection over all its turns, centred on their mean (None when no turn has tokens). One scale, so a colour
    means the same projection whichever turn is shown."""
    values = [v for t in result.get("turns", []) for v in (t.get("token_projections") or []) if v is not None]
    if not values:
        return None
    return min(values), sum(values) / len(values), max(values)


def token_strip(turn: dict[str, Any], centre: float | None = None, scale: tuple[float, float, float] | None = None) -> go.Figure:
    """A one-row heat strip of a turn's per-token projections (hover: the token's text and value).

    The colour scale is diverging: with ``scale`` = ``(low, middle, high)`` (:func:`strip_scale`, the same for every
    turn of a transcript) it is fixed; otherwise it spans this turn's values around ``centre`` (default their mean)."""
    values = turn.get("token_projections") or []
    texts = turn.get("token_texts") or [""] * len(values)
    if scale is not None:
        lo, mid, hi = scale
        colour: dict[str, Any] = {"zmin": lo, "zmid": mid, "zmax": hi}
    else:
        colour = {"zmid": centre if centre is not None else (sum(values) / len(values) if values else 0.0)}
    fig = go.Figure(
        go.Heatmap(
            z=[values],
            x=list(range(1, len(values) + 1)),
            customdata=[[t.replace("\n", "⏎") for t in texts]],
            colorscale="RdBu",
            hovertemplate="token %{x}: %{customdata}<br>%{z:.3f}<extra></extra>",
            colorbar={"thickness": 10, "len": 1.0, "title": "projection"},
            **colour,
        )
    )
    fig.update_layout(
        height=170, margin={"t": 28, "b": 44, "l": 10, "r": 10}, template="plotly_white",
        title=f"Per-token projection, assistant turn {turn['index'] + 1}", yaxis={"visible": False}, xaxis_title="token",
    )  # fmt: skip
    fig.update_xaxes(**whole_ticks(len(values)))
    return fig
