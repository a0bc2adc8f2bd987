"""Live chat: tokens stream from the worker with their projection; the cap slider works while a reply streams."""

from __future__ import annotations

import streamlit as st

from app.chat_input import first_use_hint, input_box, stop_reply, turn_actions
from app.chat_view import (
    apply_pick,
    cap_defaults,
    charts_view,
    controls_panel,
    export_button,
    follow_url,
    import_file,
    live_check,
    messages_view,
    new_session,
    notice,
    session_picker,
    smoothing_control,
    state,
)  # fmt: skip
from app.ui import call, client, load_space, worker_status

PREFIX = "chat"
st.title("Live chat")
summary = load_space()
health = worker_status()
if summary is None:
    st.stop()
if health is None:
    st.info("The chat needs the model worker. Start everything with `make run`; this page updates by itself when it is ready.")
    st.stop()

s = state(PREFIX)
follow_url(PREFIX)
defaults = cap_defaults(summary)
if s["sid"] is None:
    new_session(PREFIX, None, defaults)
apply_pick(PREFIX)


def start_new() -> None:
    new_session(PREFIX, st.session_state.get("chat_system") or None, defaults)


with st.sidebar:
    st.subheader("Session")
    notice(PREFIX)
    st.text_area("System prompt (optional)", key="chat_system", height=80)
    st.button("New session", key="chat_new", on_click=start_new)
    session_picker(PREFIX)
    st.toggle("Compare capped vs uncapped", key="chat_compare", help="Each message is answered twice with the same seed.")
    st.subheader("Controls (apply from the next token)")
    controls_panel(PREFIX, summary)
    smoothing_control(PREFIX)
    a, b = st.columns(2)
    a.button(
        "Stop the reply", key="chat_stop", on_click=stop_reply, args=(PREFIX,),
        help="Stops the reply being written; it keeps what it wrote. Messages queued behind it still run: "
        "Cancel queued (under the conversation) drops those.",
    )  # fmt: skip
    if b.button("Undo", key="chat_undo") and s["sid"]:
        if call(client().undo, s["sid"]) is not None:
            s["conv"] = type(s["conv"])()
    export_button(PREFIX)
    st.file_uploader("Import a session (JSON)", type=["json"], key="chat_import")
    st.button("Import", key="chat_import_go", on_click=import_file, args=(PREFIX, "chat_import"))

st.caption(f"Session {s['sid']} · its link reopens it")


@st.fragment(run_every=0.5)
def live() -> None:
    conv = live_check(PREFIX)
    if not conv.exchanges:
        first_use_hint(PREFIX)
    messages_view(conv)
    turn_actions(PREFIX, conv)
    charts_view(PREFIX, conv, summary)


live()
input_box(PREFIX, "Say something to the model")
