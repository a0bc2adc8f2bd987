"""The chat and demo pages' shared parts: the page's session (in the URL too), controls bound to the worker, and the
live conversation fragment.

Every control widget's value lives in ``st.session_state`` under ``{prefix}_{name}``, written in one place
(``sync_widgets``) from the session's controls, before any widget is drawn. Adopting another session (new, reopened,
imported) only replaces the controls and asks for a resync, so widgets never keep a stale value and a callback never
reads a key that is not there.

The widgets always end up showing what the worker holds:

* **Local changes** go out through :func:`push_controls`, which sends every widget that differs from the worker's
  controls, under the page's lock, in runs of the whole page only (the widgets' ``on_change``, and
  ``sync_widgets``). Streamlit runs the callbacks of a fast burst of changes on several threads at once;
  unserialised, their requests reached the worker out of order and left it several steps behind the slider. Each
  push reads the widgets when it holds the lock, so the last one sends the last values.
* **Runs of the live fragment never send a control.** Such a run carries the values the browser held when it asked
  for it, which can be older than a change the page has just sent or drawn; sent, they put the worker back (two
  tabs on one session switched the cap on and off in turn). A control widget lives outside the fragment, so a change
  the user makes always comes with a run of the whole page.
* **Changes made elsewhere** (another tab, the Cap tuning page) arrive as ``controls`` events with a newer version
  than the page's; :func:`follow_controls` adopts them, and the whole page is run again to draw the worker's
  values. The last change to reach the worker wins, in every tab.
* **A refused change** leaves a message that lasts until it is dismissed or a later change is applied, and the
  widgets show the worker's values again.
"""

from __future__ import annotations

import datetime
import json
import threading
from collections.abc import Callable
from typing import Any

import streamlit as st

from app.charts import trajectory, turn_chart
from app.chat_states import marker, state_line
from app.client import WorkerError, WorkerUnavailable
from app.conversation import Conversation, Reply, apply_events
from app.live_charts import live_token_figure
from app.turn_traits import AXIS, steer_options, trait_line, trait_numbers
from app.turn_traits import to_control as trait_control
from app.turn_traits import to_widget as trait_widget
from app.ui import call, client, plain

URL_PARAM = {"chat": "session", "demo": "demo"}
_NEW_STATE = threading.Lock()  # two callback threads must not create two states (and two locks) for one page


def state(prefix: str) -> dict[str, Any]:
    """The page's session: id, conversation, the worker's controls and their version, lasting messages, the lock
    that serialises its control changes."""
    key = f"{prefix}_state"
    with _NEW_STATE:
        if key not in st.session_state:
            st.session_state[key] = {
                "sid": None, "conv": Conversation(), "controls": None, "version": None, "resync": True, "notice": None,
                "info": None, "control_error": None, "send_error": None, "summary": None, "drawn": (),
                "lock": threading.RLock(),
            }  # fmt: skip
    value: dict[str, Any] = st.session_state[key]
    return value


# controls <-> widgets --------------------------------------------------------------------------------------------
# widget name -> (control field, control value -> widget value, widget value -> control value)
WIDGETS: dict[str, tuple[str, Callable[[Any], Any], Callable[[Any], Any]]] = {
    "cap_on": ("cap_enabled", bool, bool),
    "cap_pct": ("cap_percentile", lambda v: float(75.0 if v is None else v), float),
    "cap_layers": ("cap_layers", lambda v: (int(v[0]), int(v[1])), list),
    "steer": ("steer_coefficient", lambda v: float(v or 0.0), float),
    "steer_trait": ("steer_trait", trait_widget, trait_control),  # the "steer along" select (None: the axis)
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
    with s["lock"]:
        result = call(
            client().patch_controls, s["sid"], cap_enabled=True, cap_percentile=float(pick["cap_percentile"]),
            cap_layers=[int(x) for x in pick["cap_layers"]],
        )  # fmt: skip
        if result is not None:
            _took(s, result)
            s["resync"] = True
            s["info"] = f"Cap set from Cap tuning: {pick.get('setting', '')}"


def _took(s: dict[str, Any], result: dict[str, Any]) -> None:
    """The worker's answer to a change: its controls and their version are now the page's."""
    s["controls"] = result["controls"]
    if result.get("controls_version") is not None:
        s["version"] = int(result["controls_version"])


def _same(a: Any, b: Any) -> bool:
    norm = lambda v: list(v) if isinstance(v, (list, tuple)) else v  # noqa: E731 (a range slider gives a tuple)
    return bool(norm(a) == norm(b))


def sync_widgets(prefix: str, summary: dict[str, Any]) -> None:
    """Write the widgets' values from the session's controls: all of them after a new session was adopted (or the
    worker's controls changed elsewhere, or refused a change), the missing ones otherwise (Streamlit forgets a
    widget's key when its page is left); otherwise first send what the widgets changed. Call before drawing widgets."""
    s = state(prefix)
    with s["lock"]:  # after a push in flight on another thread: its answer is in the controls written here
        s["summary"] = summary
        if not s.get("resync"):
            push_controls(prefix)  # a change whose callback did not run (or ran in an interrupted run)
        values = widget_values(s["controls"] or {}, summary)
        resync = s.pop("resync", False)
        for name, value in values.items():
            key = f"{prefix}_{name}"
            if resync or key not in st.session_state:
                st.session_state[key] = value


def local_edits(prefix: str) -> dict[str, Any]:
    """The controls whose widgets show something else than the worker holds: control field -> the widget's value."""
    s = state(prefix)
    if s["controls"] is None or s["summary"] is None:
        return {}
    worker = widget_values(s["controls"], s["summary"])
    edits = {}
    for name, (field, _, to_control) in WIDGETS.items():
        key = f"{prefix}_{name}"
        if (
            name in s["drawn"]
            and name in worker
            and st.session_state.get(key) is not None
            and not _same(st.session_state[key], worker[name])
        ):
            edits[field] = to_control(st.session_state[key])
    return edits


def fragment_run() -> bool:
    """This run is one of a fragment only (its widget values may be older than the page's)."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    return bool(ctx is not None and ctx.fragment_ids_this_run)


def push_controls(prefix: str, *_: Any) -> bool:
    """Send every control whose widget differs from the worker's value (they apply from the next token): the
    widgets' ``on_change``, in a run of the whole page. False when the worker refused: the widgets are then redrawn
    with its values, and the refusal stays on screen."""
    s = state(prefix)
    if fragment_run():
        return True
    with s["lock"]:
        sid, edits = s["sid"], local_edits(prefix)
        if not sid or not edits:
            return True
        changes = dict(edits)
        if "steer_trait" in changes and changes["steer_trait"] is None:  # back to the axis: a null would mean "unchanged"
            del changes["steer_trait"]
            changes["clear_steer_trait"] = True
        try:
            result = client().patch_controls(sid, **changes)
        except (WorkerUnavailable, WorkerError) as exc:
            shown = ", ".join(f"{field} {value}" for field, value in edits.items())
            s["control_error"] = f"Not applied: {shown}. {exc} The controls show the worker's values again."
            s["resync"] = True
            return False
        if s["sid"] == sid:
            _took(s, result)
            s["control_error"] = None
        return True


def follow_controls(prefix: str, conv: Conversation) -> bool:
    """In the live fragment: adopt controls changed elsewhere (a newer version in the event log than the page's);
    True when the widgets must then be redrawn with the worker's values. Without a newer version nothing is done: a
    widget that differs from the worker here holds a value older than the browser's (see the module's docstring)."""
    s = state(prefix)
    newest = conv.newest_controls
    with s["lock"]:  # after a push in flight: its answer (a newer version of its own) is in s["version"]
        if newest is None or s["version"] is None or newest[0] <= s["version"]:
            return False
        s["version"], s["controls"] = newest[0], newest[1]
        if local_edits(prefix):
            s["resync"] = True
        return bool(s.get("resync"))


# sessions --------------------------------------------------------------------------------------------------------
def adopt(prefix: str, session: dict[str, Any]) -> None:
    """Make ``session`` the page's session: its conversation is read again from the start and its controls
    repopulate every widget; the URL names it, so a refresh or a shared link reopens it."""
    version = session.get("controls_version")
    state(prefix).update(
        sid=session["id"], conv=Conversation(), controls=session["controls"], resync=True, title=session.get("title"),
        version=None if version is None else int(version), control_error=None, send_error=None,
    )  # fmt: skip
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
    st.button("Open", key=f"{prefix}_open", on_click=open_picked, args=(prefix,))


def open_picked(prefix: str) -> None:
    reopen(prefix, st.session_state[f"{prefix}_pick"])


def lasting(prefix: str, field: str, level: str = "error") -> None:
    """The message in ``state(prefix)[field]``, shown until it is dismissed (or replaced, or cleared by a later
    success of the same action)."""
    s = state(prefix)
    message = s.get(field)
    if not message:
        return
    getattr(st, level)(message)
    st.button("Dismiss", key=f"{prefix}_dismiss_{field}", on_click=s.update, kwargs={field: None}, type="tertiary")


def notice(prefix: str) -> None:
    for field, level in (("notice", "error"), ("control_error", "error"), ("info", "info")):
        lasting(prefix, field, level)


# widgets ---------------------------------------------------------------------------------------------------------
def controls_panel(prefix: str, summary: dict[str, Any], names: tuple[str, ...] = CONTROL_KEYS) -> None:
    """The control widgets named in ``names`` (all by default), bound to the session's controls on the worker."""
    sync_widgets(prefix, summary)
    n = summary["n_layers"]
    shown = set(names)
    state(prefix)["drawn"] = tuple(w for w in {*shown, "cap_pct", "cap_layers", "max"} if f"{prefix}_{w}" in st.session_state)

    def bind(name: str) -> dict[str, Any]:
        return {"key": f"{prefix}_{name}", "on_change": push_controls, "args": (prefix, name)}

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
        options = steer_options(summary)
        along = st.session_state.get(f"{prefix}_steer_trait", AXIS)
        if len(options) > 1 and "steer_trait" in shown:
            if along not in options:  # a trait this space has no vector for: show the axis (the worker refuses it)
                st.session_state[f"{prefix}_steer_trait"] = along = AXIS
            st.selectbox(
                "Steer along", options, **bind("steer_trait"),
                help="The Assistant Axis or one of the space's trait vectors (same scale; + toward expressing the trait).",
            )  # fmt: skip
        toward = "the Assistant" if along == AXIS else str(along).replace("_", " ")
        st.slider(f"Steering (× mean activation norm; + toward {toward})", -1.0, 1.0, step=0.05, **bind("steer"))
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
    """Read the session's new events; while a reply waits in the queue, also how many jobs run before it."""
    s = state(prefix)
    conv: Conversation = s["conv"]
    if s["sid"]:
        events = call(client().events, s["sid"], conv.last_seq)
        if events:
            apply_events(conv, events)
        if conv.queued:
            try:
                queue = client().session(s["sid"]).get("queue") or {}
                conv.queue = {int(turn): int(ahead) for turn, ahead in queue.items()}
            except (WorkerUnavailable, WorkerError):
                pass  # the position given when it was queued stays on screen
    return conv


def live_check(prefix: str) -> Conversation:
    """What the live fragment does first: read new events, and run the whole page again when its widgets must show
    other values (the worker's controls changed elsewhere; the sidebar is outside the fragment)."""
    conv = refresh(prefix)
    if follow_controls(prefix, conv):
        st.rerun(scope="app")
    return conv


def render_reply(conv: Conversation, reply: Reply) -> None:
    st.markdown(plain(reply.text) + marker(reply))
    parts = []
    if reply.summary and reply.summary.get("mean_projection") is not None:
        near = ", ".join(n["name"] for n in reply.summary.get("nearest", [])[:3])
        parts.append(f"projection {reply.summary['mean_projection']:.2f} · nearest: {near}")
    line = state_line(conv, reply)
    if line:
        parts.append(line)
    if parts:
        st.caption(" · ".join(parts))
    traits = (reply.summary or {}).get("traits")
    words = trait_line(traits)
    if words:  # the z scores on hover
        st.caption(f"traits: {words}", help=trait_numbers(traits))


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
                        render_reply(conv, ex.replies[variant])
        else:
            for reply in ex.replies.values():
                with st.chat_message("assistant"):
                    render_reply(conv, reply)


def charts_view(prefix: str, conv: Conversation, summary: dict[str, Any] | None, stacked: bool = False) -> None:
    if not conv.exchanges or summary is None:
        return
    window = int(st.session_state.get(f"{prefix}_smooth", 5))
    controls = state(prefix)["controls"]  # the controls in force now: the capped-layer panel's title follows them
    st.plotly_chart(live_token_figure(conv, summary, window, controls), width="stretch", key=f"{prefix}_strip")
    a, b = (st.container(), st.container()) if stacked else st.columns(2)
    selected = a.plotly_chart(turn_chart(conv, summary), width="stretch", key=f"{prefix}_turns", on_select="rerun")
    b.plotly_chart(trajectory(conv, summary), width="stretch", key=f"{prefix}_trajectory")
    points: list[dict[str, Any]] = selected.get("selection", {}).get("points", []) if isinstance(selected, dict) else []
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
