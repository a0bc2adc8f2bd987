"""Live chat: tokens stream from the worker with their projection; the cap slider works while a reply streams."""

from __future__ import annotations

import json

import streamlit as st

from app.chat_view import adopt, controls_panel, conversation_view, export_button, new_session, state
from app.ui import call, client, load_space, worker_status

PREFIX = "chat"
st.title("Live chat")
summary = load_space()
health = worker_status()
if summary is None:
    st.stop()
if health is None:
    st.info("The chat needs the model worker. Start everything with `make run`; this page retries on every rerun.")
    st.stop()

s = state(PREFIX)
with st.sidebar:
    st.subheader("Session")
    system = st.text_area("System prompt (optional)", key="chat_system", height=80)
    if st.button("New session", key="chat_new") or s["sid"] is None:
        new_session(PREFIX, system or None, {"cap_layers": summary["cap_window"]} if summary.get("cap_window") else None)
    st.toggle("Compare capped vs uncapped", key="chat_compare", help="Each message is answered twice with the same seed.")
    st.subheader("Controls (apply from the next token)")
    controls_panel(PREFIX, summary)
    a, b = st.columns(2)
    if a.button("Stop", key="chat_stop") and s["sid"]:
        call(client().stop, s["sid"])
    if b.button("Undo", key="chat_undo") and s["sid"]:
        if call(client().undo, s["sid"]) is not None:
            s["conv"] = type(s["conv"])()
    export_button(PREFIX)
    uploaded = st.file_uploader("Import a session (JSON)", type=["json"], key="chat_import")
    if uploaded is not None and st.button("Import", key="chat_import_go"):
        try:
            created = call(client().import_session, json.loads(uploaded.getvalue()))
        except ValueError as exc:
            st.error(f"Not a JSON file: {exc}")
            created = None
        if created:
            adopt(PREFIX, created)

st.caption(f"Session {s['sid']}")


@st.fragment(run_every=0.5)
def live() -> None:
    conversation_view(PREFIX, summary)


live()
prompt = st.chat_input("Say something to the model", key="chat_input")
if prompt and s["sid"]:
    call(client().post_message, s["sid"], prompt, bool(st.session_state.get("chat_compare")))
    st.rerun()
