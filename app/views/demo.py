"""Demo: guided scenarios replayed live, capped and uncapped side by side, with presenter notes.

On a wide screen the conversation scrolls in its own box on the left and the charts stay in view on the right.
"""

from __future__ import annotations

import json

import streamlit as st

from app.chat_view import (
    charts_view,
    controls_panel,
    follow_url,
    messages_view,
    new_session,
    notice,
    refresh,
    smoothing_control,
    state,
)
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
scenarios = {s["id"]: s for s in (json.loads(p.read_text()) for p in sorted(SCENARIOS.glob("*.json")))}
s = state(PREFIX)
if health is not None:
    follow_url(PREFIX)
    title = str(s.get("title") or "")
    reopened = scenarios.get(title.removeprefix("demo/")) if title.startswith("demo/") else None
    if reopened is not None and s.get("scenario") is not reopened and (s.get("scenario") or {}).get("id") != reopened["id"]:
        s.update(scenario=reopened, next=None, playing=False)  # a refresh or a link: resume where the log stops


def start(scenario: dict[str, object]) -> None:
    controls = {"cap_percentile": 75.0, "max_new_tokens": 80}
    if new_session(PREFIX, str(scenario["system"]), controls, f"demo/{scenario['id']}"):
        s.update(scenario=scenario, next=0, playing=True)


def toggle_play() -> None:
    s["playing"] = not s.get("playing")


def stop() -> None:
    s["playing"] = False
    if s["sid"]:
        call(client().stop, s["sid"])


chooser = st.expander("Scenarios", expanded=not s.get("scenario"))  # folded while one plays: the charts stay in view
cols = chooser.columns(len(scenarios))
for col, scenario in zip(cols, scenarios.values(), strict=True):
    with col.container(border=True):
        st.markdown(f"**{scenario['title']}**")
        st.caption(scenario["description"])
        st.button("Start", key=f"demo_start_{scenario['id']}", disabled=health is None, on_click=start, args=(scenario,))
if health is None:
    st.info("The demo needs the model worker; start it with `make run`. This page updates by itself when it is ready.")
    st.stop()
scenario = s.get("scenario")
if not scenario:
    st.stop()

with st.sidebar:
    notice(PREFIX)
    st.subheader("Controls (apply from the next token)")
    controls_panel(PREFIX, summary, ("cap_pct", "cap_layers", "rep", "max"))
    smoothing_control(PREFIX)

st.subheader(scenario["title"])
st.info(scenario["presenter_note"])
a, b, c = st.columns(3)
a.button(
    "Pause" if s.get("playing") else "Resume",
    key="demo_play",
    on_click=toggle_play,
    icon=":material/pause:" if s.get("playing") else ":material/play_arrow:",
)
if b.button("Next turn", key="demo_next", disabled=bool(s.get("playing"))):
    s["step"] = True
c.button("Stop", key="demo_stop", on_click=stop)


@st.fragment(run_every=0.7)
def live() -> None:
    conv = refresh(PREFIX)
    turns = scenario["turns"]
    if s.get("next") is None:  # reopened: the scripted turns already in the log are done
        s["next"] = min(len(conv.exchanges), len(turns))
    if not conv.busy and s["next"] < len(turns) and (s.get("playing") or s.pop("step", False)):
        if call(client().post_message, s["sid"], turns[s["next"]], True) is not None:
            s["next"] += 1
            conv = refresh(PREFIX)
    state_text = "playing" if s.get("playing") else "paused"
    st.progress(min(1.0, s["next"] / len(turns)), text=f"user turn {s['next']} of {len(turns)} · {state_text}")
    left, right = st.columns([5, 6], gap="medium")
    with left, st.container(height=640, border=True):
        messages_view(conv)
    with right:
        charts_view(PREFIX, conv, summary, stacked=True)


live()
