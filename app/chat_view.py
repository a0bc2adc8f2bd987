"""The chat and demo pages' shared parts: controls bound to the worker, and the live conversation fragment."""

from __future__ import annotations

import json
from typing import Any

import streamlit as st

from app.charts import token_strip, trajectory, turn_chart
from app.conversation import Conversation, apply_events
from app.ui import call, client, plain


def state(prefix: str) -> dict[str, Any]:
    key = f"{prefix}_state"
    if key not in st.session_state:
        st.session_state[key] = {"sid": None, "conv": Conversation(), "controls": None}
    value: dict[str, Any] = st.session_state[key]
    return value


def new_session(
    prefix: str, system: str | None = None, controls: dict[str, Any] | None = None, title: str | None = None
) -> str | None:
    created = call(client().create_session, system, controls, title)
    if created is None:
        return None
    adopt(prefix, created)
    return str(created["id"])


CONTROL_KEYS = ("cap_on", "cap_pct", "cap_layers", "steer", "greedy", "seed", "max")


def adopt(prefix: str, session: dict[str, Any]) -> None:
    """Make ``session`` the page's session; its controls repopulate the widgets (keyed widgets keep old values)."""
    state(prefix).update(sid=session["id"], conv=Conversation(), controls=session["controls"])
    for name in CONTROL_KEYS:
        st.session_state.pop(f"{prefix}_{name}", None)


def push_control(prefix: str, field: str, widget_key: str, transform: Any = None) -> None:
    """``on_change`` callback: send one control to the worker; it applies from the next token."""
    s = state(prefix)
    if not s["sid"]:
        return
    value = st.session_state[widget_key]
    if transform is not None:
        value = transform(value)
    result = call(client().patch_controls, s["sid"], **{field: value})
    if result is not None:
        s["controls"] = result["controls"]


def controls_panel(prefix: str, summary: dict[str, Any]) -> None:
    s = state(prefix)
    c = s["controls"] or {}
    n = summary["n_layers"]
    window = c.get("cap_layers") or summary.get("cap_window") or [n // 2, n]
    st.toggle(
        "Cap on",
        value=bool(c.get("cap_enabled")),
        key=f"{prefix}_cap_on",
        on_change=push_control,
        args=(prefix, "cap_enabled", f"{prefix}_cap_on"),
    )
    st.slider(
        "Cap threshold (percentile of the space's projections)", 0.0, 100.0, float(c.get("cap_percentile") or 75.0), 1.0,
        key=f"{prefix}_cap_pct", on_change=push_control, args=(prefix, "cap_percentile", f"{prefix}_cap_pct"),
        help="A floor on the Assistant projection at each capped layer. 75 is the paper's recommended setting.",
    )  # fmt: skip
    st.slider(
        "Cap layers", 0, n, (int(window[0]), int(window[1])), key=f"{prefix}_cap_layers",
        on_change=push_control, args=(prefix, "cap_layers", f"{prefix}_cap_layers", list),
        help="Half-open window [start, stop) of decoder layers where the floor applies.",
    )  # fmt: skip
    st.slider(
        "Steering (× mean activation norm; + toward the Assistant)", -1.0, 1.0, float(c.get("steer_coefficient") or 0.0), 0.05,
        key=f"{prefix}_steer", on_change=push_control, args=(prefix, "steer_coefficient", f"{prefix}_steer"),
    )  # fmt: skip
    a, b = st.columns(2)
    a.toggle(
        "Greedy",
        value=bool(c.get("greedy", True)),
        key=f"{prefix}_greedy",
        on_change=push_control,
        args=(prefix, "greedy", f"{prefix}_greedy"),
    )
    b.number_input(
        "Seed",
        0,
        2**31 - 1,
        int(c.get("seed") or 0),
        key=f"{prefix}_seed",
        on_change=push_control,
        args=(prefix, "seed", f"{prefix}_seed"),
    )
    st.slider("Max new tokens", 8, 512, int(c.get("max_new_tokens") or 160), 8, key=f"{prefix}_max",
              on_change=push_control, args=(prefix, "max_new_tokens", f"{prefix}_max"))  # fmt: skip


def refresh(prefix: str) -> Conversation:
    s = state(prefix)
    conv: Conversation = s["conv"]
    if s["sid"]:
        events = call(client().events, s["sid"], conv.last_seq)
        if events:
            apply_events(conv, events)
    return conv


def render_reply(reply: Any) -> None:
    marker = {"running": " …", "queued": " (queued)", "stopped": " (stopped)", "incomplete": " (incomplete)", "error": " (error)"}
    st.markdown(plain(reply.text) + marker.get(reply.status, ""))
    if reply.summary and reply.summary.get("mean_projection") is not None:
        near = ", ".join(n["name"] for n in reply.summary.get("nearest", [])[:3])
        st.caption(f"projection {reply.summary['mean_projection']:.2f} · nearest: {near}")


def conversation_view(prefix: str, summary: dict[str, Any]) -> None:
    """Draw the chat, the per-token strip, the per-turn chart and the trajectory from the event log."""
    conv = refresh(prefix)
    for error in conv.errors[-1:]:
        st.error(error)
    variants = conv.variants
    compare = "capped" in variants or "uncapped" in variants
    for n, ex in enumerate(conv.exchanges, start=1):
        with st.chat_message("user"):
            st.markdown(plain(ex.user_text))
        if compare and len(ex.replies) > 1:
            cols = st.columns(2)
            for col, variant in zip(cols, ("uncapped", "capped"), strict=True):
                if variant in ex.replies:
                    with col, st.chat_message("assistant"):
                        st.caption(f"turn {n} · {variant}")
                        render_reply(ex.replies[variant])
        else:
            for reply in ex.replies.values():
                with st.chat_message("assistant"):
                    render_reply(reply)
    if conv.exchanges:
        st.plotly_chart(token_strip(conv, summary), width="stretch", key=f"{prefix}_strip")
        a, b = st.columns(2)
        selected = a.plotly_chart(turn_chart(conv, summary), width="stretch", key=f"{prefix}_turns", on_select="rerun")
        b.plotly_chart(trajectory(conv, summary), width="stretch", key=f"{prefix}_trajectory")
        points = (selected or {}).get("selection", {}).get("points", []) if isinstance(selected, dict) else []
        if points:
            reply = conv.reply(int(points[0].get("customdata", -1)))
            if reply is not None:
                st.info(f"Turn {points[0].get('x')} ({reply.variant})")
                st.markdown(plain(reply.text))


def export_button(prefix: str) -> None:
    s = state(prefix)
    if s["sid"]:
        data = call(client().export, s["sid"])
        if data is not None:
            st.download_button(
                "Export session (JSON)", json.dumps(data, indent=1), file_name=f"session-{s['sid']}.json", mime="application/json"
            )
