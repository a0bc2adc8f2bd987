"""Demo: guided scenarios replayed live, capped and uncapped side by side, with presenter notes; and runs recorded
earlier, replayed without the model (labelled as recordings).

For a room, the replies sit above the charts in two wide columns (readable on a projector); on a wide screen they
can scroll in their own box beside the charts instead. Pause lets the reply being written finish, then waits; Stop
ends the scenario. A finished run is saved as a recording (:mod:`app.demo_recordings`).
"""

from __future__ import annotations

import json
import time
from typing import Any

import streamlit as st

from app import demo_recordings as rec
from app.chat_view import (
    charts_view,
    controls_panel,
    follow_url,
    live_check,
    messages_view,
    new_session,
    notice,
    refresh,
    smoothing_control,
    state,
)
from app.client import WorkerError, WorkerUnavailable
from app.conversation import Conversation, apply_events
from app.demo_plan import DEMO_CONTROLS, expected_duration, measured_rate, run_state
from app.ui import SCENARIOS, call, client, load_space, worker_status

PREFIX = "demo"
LAYOUTS = ("Replies above the charts (projector)", "Side by side (wide screen)")

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
recordings, problems = rec.find()
if health is not None and not s.get("replay"):
    follow_url(PREFIX)
    title = str(s.get("title") or "")
    reopened = scenarios.get(title.removeprefix("demo/")) if title.startswith("demo/") else None
    if reopened is not None and s.get("scenario") is not reopened and (s.get("scenario") or {}).get("id") != reopened["id"]:
        s.update(scenario=reopened, next=None, playing=False, stopped=False)  # a refresh or a link: resume paused


@st.cache_data(ttl=30, show_spinner=False)
def worker_rate() -> float | None:
    """Tokens/s of one reply, measured on the newest sessions' finished turns (None when there are none)."""
    try:
        turns = [t for row in client().list_sessions()[:5] for t in client().session(row["id"])["turns"]]
    except (WorkerUnavailable, WorkerError):
        return None
    return measured_rate(turns)


def start(scenario: dict[str, Any]) -> None:
    if new_session(PREFIX, scenario.get("system") or None, dict(DEMO_CONTROLS), f"demo/{scenario['id']}"):
        s.update(scenario=scenario, next=0, playing=True, stopped=False, saved=None, replay=None)


def pause_or_resume() -> None:
    s["playing"] = not s.get("playing")


def stop() -> None:
    s.update(playing=False, stopped=True)
    if s["sid"]:
        call(client().stop, s["sid"])


def replay(recording: rec.Recording, speed: float) -> None:
    s["replay"] = {"recording": recording, "speed": speed, "started": time.monotonic(), "conv": Conversation(), "done": 0}


def end_replay() -> None:
    s["replay"] = None


# choosing ----------------------------------------------------------------------------------------------------------
chooser = st.expander("Scenarios", expanded=not s.get("scenario") and not s.get("replay"))
rate = worker_rate() if health is not None else None
max_tokens = int((s.get("controls") or {}).get("max_new_tokens") or DEMO_CONTROLS["max_new_tokens"])
cols = chooser.columns(len(scenarios))
for col, scenario in zip(cols, scenarios.values(), strict=True):
    with col.container(border=True):
        st.markdown(f"**{scenario['title']}**")
        st.caption(scenario["description"])
        st.caption(f"Expected time: {expected_duration(scenario, max_tokens, rate, recordings)}")
        st.button("Start", key=f"demo_start_{scenario['id']}", disabled=health is None, on_click=start, args=(scenario,))
if health is None:
    chooser.info(
        "A live run needs the model worker; start it with `make run` (this page updates by itself when it is ready). "
        "A recorded run plays without it."
    )

shelf = st.expander(f"Recorded runs ({len(recordings)})", expanded=health is None and not s.get("replay"))
with shelf:
    st.caption(
        "A finished scenario run is saved here by itself, and replays without the model at its real pace or faster: "
        "for a slow laptop, or a room without the worker. Recordings are read from "
        f"`{rec.recordings_dir()}` and from the app's own `assets/recordings/`."
    )
    for line in problems:
        st.warning(f"Not a recording, skipped: {line}")
    if recordings:
        by_path = {str(r.path): r for r in recordings}
        chosen = by_path[st.selectbox("Recording", list(by_path), format_func=lambda p: by_path[p].label, key="demo_rec")]
        speed = st.select_slider("Replay speed", options=rec.SPEEDS, value=1.0, format_func=lambda v: f"{v:g}×", key="demo_speed")
        left, right = st.columns(2)
        left.button("Replay", key="demo_replay", on_click=replay, args=(chosen, float(speed)), type="primary")
        right.download_button(
            "Download the recording", chosen.path.read_bytes(), file_name=chosen.path.name, mime="application/json",
            key="demo_rec_download",
        )  # fmt: skip
    upload = st.file_uploader("Add a recording made elsewhere (JSON)", type=["json"], key="demo_rec_upload")
    if upload is not None and st.button("Add", key="demo_rec_add"):
        try:
            added = rec.save(json.loads(upload.getvalue().decode("utf-8")))  # checked as it would be read
            st.success(f"Added: {added.name}")
        except (rec.RecordingError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            st.error(f"Not added: {exc}")

with st.sidebar:
    st.radio(
        "Layout",
        LAYOUTS,
        key="demo_layout",
        help="Above: two wide reply columns for a projector. Beside: the charts stay in view.",
    )


def draw(conv: Conversation) -> None:
    if st.session_state.get("demo_layout", LAYOUTS[0]) == LAYOUTS[0]:
        messages_view(conv)
        charts_view(PREFIX, conv, summary)
        return
    left, right = st.columns([5, 6], gap="medium")
    with left, st.container(height=640, border=True):
        messages_view(conv)
    with right:
        charts_view(PREFIX, conv, summary, stacked=True)


# a recorded run ----------------------------------------------------------------------------------------------------
playback = s.get("replay")
if playback:
    recording: rec.Recording = playback["recording"]
    with st.sidebar:
        smoothing_control(PREFIX)
    st.subheader(recording.title)
    st.warning(
        f"**Recording**, not live: {recording.label}. The model is not running it; the events the worker logged are "
        "replayed as they were timed.",
        icon=":material/movie:",
    )
    st.button("Back to live runs", key="demo_replay_end", on_click=end_replay)
    offsets, shortened = rec.timeline(recording.events)

    @st.fragment(run_every=0.5)
    def replaying() -> None:
        elapsed = time.monotonic() - playback["started"]
        n = rec.due(offsets, elapsed, playback["speed"])
        if n > playback["done"]:
            apply_events(playback["conv"], recording.events[playback["done"] : n])
            playback["done"] = n
        total = rec.replay_length(offsets, playback["speed"])
        note = f" · {shortened} long waits shortened to {rec.MAX_GAP_S:g} s" if shortened else ""
        text = f"replay at {playback['speed']:g}× · {min(elapsed, total):.0f} s of {total:.0f} s{note}"
        st.progress(n / len(offsets), text=("replay finished" if n == len(offsets) else text))
        draw(playback["conv"])

    replaying()
    st.stop()

# a live run ----------------------------------------------------------------------------------------------------
if health is None:
    st.stop()
scenario = s.get("scenario")
if not scenario:
    st.stop()
model_name = str(health.get("model_name") or health.get("model") or "unknown model")

with st.sidebar:
    notice(PREFIX)
    st.subheader("Controls (apply from the next token)")
    controls_panel(PREFIX, summary, ("cap_pct", "cap_layers", "rep", "max"))
    smoothing_control(PREFIX)

st.subheader(scenario["title"])
st.info(scenario["presenter_note"])
a, b, c = st.columns(3)
stopped = bool(s.get("stopped"))
a.button(
    "Pause after this reply" if s.get("playing") else "Resume",
    key="demo_play", on_click=pause_or_resume, disabled=stopped,
    icon=":material/pause:" if s.get("playing") else ":material/play_arrow:",
    help="Pause: the reply being written finishes, then the scenario waits for Resume or Next turn.",
)  # fmt: skip
if b.button("Next turn", key="demo_next", disabled=bool(s.get("playing")) or stopped):
    s["step"] = True
c.button(
    "Stop the scenario", key="demo_stop", on_click=stop, disabled=stopped,
    help="Ends the scenario now: the replies being written stop where they are, and no further turn is sent. "
    "Start it again from Scenarios.",
)  # fmt: skip


def all_events(sid: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    while True:
        page = client().events(sid, events[-1]["seq"] if events else 0)
        if not page:
            return events
        events.extend(page)


@st.fragment(run_every=0.7)
def live() -> None:
    conv = live_check(PREFIX)
    turns = scenario["turns"]
    if s.get("next") is None:  # reopened: the scripted turns already in the log are done
        s["next"] = min(len(conv.exchanges), len(turns))
    if not stopped and not conv.busy and s["next"] < len(turns) and (s.get("playing") or s.pop("step", False)):
        if call(client().post_message, s["sid"], turns[s["next"]], True) is not None:
            s["next"] += 1
            conv = refresh(PREFIX)
    words = run_state(bool(s.get("playing")), stopped, s["next"], len(turns), conv)
    if words == "finished" and s.get("saved") != s["sid"]:
        try:
            path = rec.save(rec.make(scenario, model_name, all_events(s["sid"])))
            s.update(saved=s["sid"], saved_note=f"Saved as a recording: {path.name} (Recorded runs, above, replays it).")
        except (OSError, rec.RecordingError, WorkerUnavailable, WorkerError) as exc:
            s.update(saved=s["sid"], saved_note=f"The run could not be saved as a recording: {exc}")
    st.progress(min(1.0, s["next"] / len(turns)), text=f"user turn {s['next']} of {len(turns)} · {words}")
    if words == "finished" and s.get("saved_note"):
        st.caption(s["saved_note"])
    draw(conv)


live()
