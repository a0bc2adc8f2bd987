"""The chat and demo pages' shared parts: the page's session (in the URL too), controls bound to the worker, and the
live conversation fragment.

Every control widget's value lives in ``st.session_state`` under ``{prefix}_{name}``, written in one place
(``sync_widgets``) from the session's controls, before any widget is drawn. Adopting another session (new, reopened,
imported) only replaces the controls and asks for a resync, so widgets never keep a stale value and a callback never
reads a key that is not there.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from typing import Any

import streamlit as st

from app.charts import trajectory, turn_chart
from app.client import WorkerError, WorkerUnavailable
from app.conversation import Conversation, apply_events
from app.live_charts import live_token_figure
from app.ui import call, client, plain

URL_PARAM = {"chat": "session", "demo": "demo"}


def state(prefix: str) -> dict[str, Any]:
    key = f"{prefix}_state"
    if key not in st.session_state:
        st.session_state[key] = {"sid": None, "conv": Conversation(), "controls": None, "resync": True, "notice": None}
    value: dict[str, Any] = st.session_state[key]
    return value


# controls <-> widgets --------------------------------------------------------------------------------------------
# widget name -> (control field, control value -> widget value, widget value -> control value)
WIDGETS: dict[str, tuple[str, Callable[[Any], Any], Callable[[Any], Any]]] = {
    "cap_on": ("cap_enabled", bool, bool),
    "cap_pct": ("cap_percentile", lambda v: float(75.0 if v is None else v), float),
    "cap_layers": ("cap_layers", lambda v: (int(v[0]), int(v[1])), list),
    "steer": ("steer_coefficient", lambda v: float(v or 0.0), float),
    "greedy": ("greedy", lambda v: bool(True if v is None else v), bool),
    "seed": ("seed", lambda v: int(v or 0), int),
    "max": ("max_new_tokens", lambda v: int(v or 160), int),
    "rep": ("repetition_penalty", lambda v: float(1.0 if v is None else v), float),
}
CONTROL_KEYS = tuple(WIDGETS)


def widget_values(controls: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    """The value every control widget shows for ``controls`` (fields the worker does not know are left out)."""
    n = summary["n_layers"]
    filled = dict(controls)
    if not filled.get("cap_layers"):
        filled["cap_layers"] = summary.get("cap_window") or [n // 2, n]
    return {
        name: to_widget(filled.get(field))
        for name, (field, to_widget, _) in WIDGETS.items()
        if field != "repetition_penalty" or field in controls
    }


def cap_defaults(summary: dict[str, Any]) -> dict[str, Any] | None:
    """Controls of a new chat session: the space's measured cap preset when it has one, else its cap window."""
    preset = summary.get("cap_preset")
    if preset:
        return {"cap_percentile": float(preset["percentile"]), "cap_layers": list(preset["window"])}
    return {"cap_layers": summary["cap_window"]} if summary.get("cap_window") else None


PICK_KEY = "cap_tuning_pick"  # a setting chosen on the Cap tuning page, applied by the live chat when it opens


def apply_pick(prefix: str) -> None:
    """Load a setting picked on the Cap tuning page into this page's session controls (cap on)."""
    pick = st.session_state.pop(PICK_KEY, None)
    s = state(prefix)
    if not pick or not s["sid"]:
        return
    result = call(
        client().patch_controls, s["sid"], cap_enabled=True, cap_percentile=float(pick["cap_percentile"]),
        cap_layers=[int(x) for x in pick["cap_layers"]],
    )  # fmt: skip
    if result is not None:
        s["controls"] = result["controls"]
        s["resync"] = True
        s["notice"] = f"Cap set from Cap tuning: {pick.get('setting', '')}"


def sync_widgets(prefix: str, summary: dict[str, Any]) -> None:
    """Write the widgets' values from the session's controls: all of them after a new session was adopted, the
    missing ones otherwise (Streamlit forgets a widget's key when its page is left). Call before drawing widgets."""
    s = state(prefix)
    values = widget_values(s["controls"] or {}, summary)
    resync = s.pop("resync", False)
    for name, value in values.items():
        key = f"{prefix}_{name}"
        if resync or key not in st.session_state:
            st.session_state[key] = value


def push_control(prefix: str, name: str) -> None:
    """``on_change`` callback: send one control to the worker; it applies from the next token."""
    s = state(prefix)
    value = st.session_state.get(f"{prefix}_{name}")
    if not s["sid"] or value is None:
        return
    field, _, to_control = WIDGETS[name]
    result = call(client().patch_controls, s["sid"], **{field: to_control(value)})
    if result is not None:
        s["controls"] = result["controls"]
    else:  # refused: show the worker's value again
        s["resync"] = True


# sessions --------------------------------------------------------------------------------------------------------
def adopt(prefix: str, session: dict[str, Any]) -> None:
    """Make ``session`` the page's session: its conversation is read again from the start and its controls
    repopulate every widget; the URL names it, so a refresh or a shared link reopens it."""
    state(prefix).update(
        sid=session["id"], conv=Conversation(), controls=session["controls"], resync=True, title=session.get("title")
    )
    st.query_params[URL_PARAM[prefix]] = session["id"]


def new_session(
    prefix: str, system: str | None = None, controls: dict[str, Any] | None = None, title: str | None = None
) -> str | None:
    created = call(client().create_session, system, controls, title)
    if created is None:
        return None
    adopt(prefix, created)
    return str(created["id"])


def reopen(prefix: str, sid: str) -> bool:
    """Adopt the stored session ``sid``; False (with a notice) when the worker does not have it."""
    try:
        session = client().session(sid)
    except (WorkerUnavailable, WorkerError) as exc:
        state(prefix)["notice"] = f"Cannot reopen session {sid}: {exc}"
        return False
    adopt(prefix, session)
    return True


def follow_url(prefix: str) -> None:
    """Reopen the session the URL names (a refresh, a shared link); put the page's session in the URL otherwise."""
    s = state(prefix)
    param = URL_PARAM[prefix]
    wanted = st.query_params.get(param)
    if wanted and wanted != s["sid"]:
        if not reopen(prefix, wanted):
            del st.query_params[param]
    elif s["sid"] and not wanted:
        st.query_params[param] = s["sid"]


def import_file(prefix: str, uploader_key: str) -> None:
    """``on_click`` callback of the Import button: recreate the uploaded export on the worker and adopt it."""
    s = state(prefix)
    uploaded = st.session_state.get(uploader_key)
    if uploaded is None:
        s["notice"] = "Choose a session export (JSON) first."
        return
    try:
        data = json.loads(uploaded.getvalue())
    except ValueError as exc:
        s["notice"] = f"{uploaded.name} is not JSON: {exc}"
        return
    try:
        created = client().import_session(data)
    except (WorkerUnavailable, WorkerError) as exc:
        s["notice"] = f"Import failed: {exc}"
        return
    adopt(prefix, created)
    s["notice"] = None


def export_json(worker: Any, sid: str) -> str:
    """The session as the worker holds it now (fetched when the button is clicked, not when the page was drawn)."""
    try:
        return json.dumps(worker.export(sid), indent=1)
    except (WorkerUnavailable, WorkerError) as exc:
        return json.dumps({"error": f"export of session {sid} failed: {exc}"})


def export_button(prefix: str) -> None:
    sid = state(prefix)["sid"]
    if sid:
        worker = client()
        st.download_button(
            "Export session (JSON)", data=lambda: export_json(worker, sid), file_name=f"session-{sid}.json",
            mime="application/json", on_click="ignore", key=f"{prefix}_export",
        )  # fmt: skip


def session_label(row: dict[str, Any]) -> str:
    when = datetime.datetime.fromtimestamp(float(row.get("created") or 0)).strftime("%m-%d %H:%M")
    return f"{when} · {row.get('title') or 'untitled'} · {row.get('turns', 0)} turns · {row['id'][:6]}"


def session_picker(prefix: str, title_prefix: str | None = None) -> None:
    """Earlier sessions stored by the worker, newest first; Open reopens one."""
    try:
        rows = client().list_sessions()
    except (WorkerUnavailable, WorkerError):
        return
    if title_prefix is not None:
        rows = [r for r in rows if str(r.get("title") or "").startswith(title_prefix)]
    rows = [r for r in rows if r["id"] != state(prefix)["sid"]][:50]
    if not rows:
        return
    labels = {r["id"]: session_label(r) for r in rows}
    st.selectbox("Earlier sessions", list(labels), format_func=labels.__getitem__, key=f"{prefix}_pick")
    st.button("Open", key=f"{prefix}_open", on_click=lambda: reopen(prefix, st.session_state[f"{prefix}_pick"]))


def notice(prefix: str) -> None:
    message = state(prefix).pop("notice", None)
    if message:
        st.error(message)


# widgets ---------------------------------------------------------------------------------------------------------
def controls_panel(prefix: str, summary: dict[str, Any], names: tuple[str, ...] = CONTROL_KEYS) -> None:
    """The control widgets named in ``names`` (all by default), bound to the session's controls on the worker."""
    sync_widgets(prefix, summary)
    n = summary["n_layers"]
    shown = set(names)

    def bind(name: str) -> dict[str, Any]:
        return {"key": f"{prefix}_{name}", "on_change": push_control, "args": (prefix, name)}

    if "cap_on" in shown:
        st.toggle("Cap on", **bind("cap_on"))
    st.slider(
        "Cap threshold (percentile of the space's projections)", 0.0, 100.0, step=1.0, **bind("cap_pct"),
        help="A floor on the Assistant projection at each capped layer. 75 is the paper's recommended setting.",
    )  # fmt: skip
    st.slider(
        "Cap layers", 0, n, **bind("cap_layers"), help="Half-open window [start, stop) of decoder layers where the floor applies."
    )
    if "steer" in shown:
        st.slider("Steering (× mean activation norm; + toward the Assistant)", -1.0, 1.0, step=0.05, **bind("steer"))
    if "rep" in shown and f"{prefix}_rep" in st.session_state:  # only when the worker knows the control
        st.slider(
            "Repetition penalty", 1.0, 2.0, step=0.05, **bind("rep"),
            help="Divides the scores of tokens already in the reply (1 = off). Keeps the small model from looping.",
        )  # fmt: skip
    if "greedy" in shown:
        a, b = st.columns(2)
        a.toggle("Greedy", **bind("greedy"))
        b.number_input("Seed", 0, 2**31 - 1, **bind("seed"))
    st.slider("Max new tokens", 8, 512, step=8, **bind("max"))


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


def messages_view(conv: Conversation) -> None:
    for error in conv.errors[-1:]:
        st.error(error)
    compare = "capped" in conv.variants or "uncapped" in conv.variants
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


def charts_view(prefix: str, conv: Conversation, summary: dict[str, Any], stacked: bool = False) -> None:
    if not conv.exchanges:
        return
    window = int(st.session_state.get(f"{prefix}_smooth", 5))
    st.plotly_chart(live_token_figure(conv, summary, window), width="stretch", key=f"{prefix}_strip")
    a, b = (st.container(), st.container()) if stacked else st.columns(2)
    selected = a.plotly_chart(turn_chart(conv, summary), width="stretch", key=f"{prefix}_turns", on_select="rerun")
    b.plotly_chart(trajectory(conv, summary), width="stretch", key=f"{prefix}_trajectory")
    points = (selected or {}).get("selection", {}).get("points", []) if isinstance(selected, dict) else []
    if points:
        reply = conv.reply(int(points[0].get("customdata", -1)))
        if reply is not None:
            st.info(f"Turn {points[0].get('x')} ({reply.variant})")
            st.markdown(plain(reply.text))


def smoothing_control(prefix: str) -> None:
    st.select_slider(
        "Smoothing (moving average over tokens)", options=[1, 3, 5, 9, 15], value=5, key=f"{prefix}_smooth",
        help="Window of the smoothed line drawn over the raw per-token points (1 = no smoothing).",
    )  # fmt: skip
