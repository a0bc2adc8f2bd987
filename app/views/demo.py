"""Demo: guided scenarios replayed live, capped and uncapped side by side, with presenter notes."""

from __future__ import annotations

import json

import streamlit as st

from app.chat_view import conversation_view, new_session, state
from app.ui import SCENARIOS, call, client, load_space, worker_status

PREFIX = "demo"
st.title("Demo: does the model stay the Assistant?")
st.write(
    "Each scenario replays a scripted user, turn by turn, against the live model — twice, with the same seed: "
    "once as it is (**uncapped**) and once with a floor on its Assistant projection (**capped**). The chart shows "
    "where every reply sits on the Assistant Axis: up is the Assistant, down is role-play."
)
summary = load_space()
health = worker_status()
if summary is None:
    st.stop()
scenarios = [json.loads(p.read_text()) for p in sorted(SCENARIOS.glob("*.json"))]
s = state(PREFIX)
cols = st.columns(len(scenarios))
for col, scenario in zip(cols, scenarios, strict=True):
    with col.container(border=True):
        st.markdown(f"**{scenario['title']}**")
        st.caption(scenario["description"])
        if st.button("Start", key=f"demo_start_{scenario['id']}", disabled=health is None):
            if new_session(PREFIX, scenario["system"], {"cap_percentile": 75.0, "max_new_tokens": 80}, f"demo/{scenario['id']}"):
                s.update(scenario=scenario, next=0, playing=True)
if health is None:
    st.info("The demo needs the model worker; start it with `make run`.")
    st.stop()
scenario = s.get("scenario")
if not scenario:
    st.stop()

st.subheader(scenario["title"])
st.info(scenario["presenter_note"])
a, b, c = st.columns(3)
if a.button("Pause" if s.get("playing") else "Play", key="demo_play"):
    s["playing"] = not s.get("playing")
if b.button("Next turn", key="demo_next", disabled=bool(s.get("playing"))):
    s["step"] = True
if c.button("Stop", key="demo_stop"):
    s["playing"] = False
    call(client().stop, s["sid"])


@st.fragment(run_every=0.7)
def live() -> None:
    conv = s["conv"]
    turns = scenario["turns"]
    st.progress(min(1.0, s["next"] / len(turns)), text=f"user turn {s['next']} of {len(turns)}")
    conversation_view(PREFIX, summary)
    if not conv.busy and s["next"] < len(turns) and (s.get("playing") or s.pop("step", False)):
        if call(client().post_message, s["sid"], turns[s["next"]], True) is not None:
            s["next"] += 1


live()
