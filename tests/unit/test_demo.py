"""The demo for a room (issue #23): Pause finishes the reply first, Stop ends the scenario, the expected time is shown
before Start, and a finished run is saved as a recording that replays without the model, labelled as one."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from app import demo_recordings as rec
from app.conversation import Conversation, apply_events
from app.demo_plan import expected_duration, measured_rate, run_state
from app.ui import plain
from tests.helpers.app_pages import page, texts
from tests.helpers.fake_client import FakeClient
from tests.helpers.worker_harness import ROOT

SCENARIO = json.loads((ROOT / "assets" / "scenarios" / "coding.json").read_text())


def _events(times: list[float]) -> list[dict[str, object]]:
    return [{"seq": i + 1, "turn": None, "type": "token", "data": {}, "time": t} for i, t in enumerate(times)]


def test_a_recording_is_written_whole_and_read_back(tmp_path: Path) -> None:
    data = rec.make(SCENARIO, "SmolLM2", _events([10.0, 10.5, 13.0]), recorded=1_700_000_000.0)
    path = rec.save(data, tmp_path)
    again = rec.save(data, tmp_path)  # the same second: a second file, never one written over
    assert path != again and path.exists() and again.exists()
    assert not list(tmp_path.glob(".recording-*"))  # no temporary left behind
    loaded = rec.load(path)
    assert loaded.scenario == "coding" and loaded.model == "SmolLM2" and loaded.duration_s == pytest.approx(3.0)
    assert [e["seq"] for e in loaded.events] == [1, 2, 3]
    assert "recording of" in loaded.label and "SmolLM2" in loaded.label and "3 s" in loaded.label


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda d: d.update(format="persona-space-session"), "not a Persona Space demo recording"),
        (lambda d: d.update(version=2), "version 2"),
        (lambda d: d.update(model=""), "model"),
        (lambda d: d.update(recorded=float("nan")), "recorded"),
        (lambda d: d.update(events=[]), "events must be a non-empty list"),
        (lambda d: d["events"][1].update(seq=1), "events[1]: seq"),
        (lambda d: d["events"][0].update(time="noon"), "events[0]: time"),
        (lambda d: d["events"][0].update(data=None), "events[0] must be an object"),
    ],
)
def test_a_hand_edited_recording_is_refused_naming_what_is_wrong(tmp_path: Path, edit, named: str) -> None:  # type: ignore[no-untyped-def]
    data = rec.make(SCENARIO, "m", _events([1.0, 2.0]))
    edit(data)
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(rec.RecordingError, match=named.replace("[", r"\[").replace("]", r"\]")):
        rec.load(tmp_path / "bad.json")
    found, problems = rec.find(tmp_path)
    assert str(tmp_path / "bad.json") not in [str(r.path) for r in found] and any("bad.json" in p for p in problems)
    with pytest.raises(rec.RecordingError):
        rec.save(data, tmp_path / "out")  # nothing unreadable is written either
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.json"))


def test_a_file_that_is_not_json_is_listed_as_a_problem(tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text("{not json")
    found, problems = rec.find(tmp_path)
    assert problems and "broken.json cannot be read" in problems[0]
    assert all(r.shipped for r in found)


def test_the_timeline_keeps_real_gaps_and_shortens_long_waits() -> None:
    offsets, shortened = rec.timeline(_events([100.0, 100.5, 101.0, 160.0, 160.25]), max_gap=2.0)
    assert offsets == [0.0, 0.5, 1.0, 3.0, 3.25] and shortened == 1  # the minute's pause became 2 s
    assert rec.due(offsets, 0.0, 1.0) == 1  # the first event at once
    assert rec.due(offsets, 0.99, 1.0) == 2 and rec.due(offsets, 1.0, 1.0) == 3
    assert rec.due(offsets, 0.5, 4.0) == 3  # 4x: 0.5 s of replay is 2 s of the run
    assert rec.due(offsets, 100.0, 1.0) == 5
    assert rec.replay_length(offsets, 2.0) == pytest.approx(1.625)
    with pytest.raises(ValueError):
        rec.due(offsets, 1.0, 0.0)


def test_the_run_state_says_pausing_until_the_reply_being_written_ends() -> None:
    conv = Conversation()
    apply_events(conv, [
        {"seq": 1, "type": "turn_created", "turn": 1, "data": {"turn": 1, "role": "user", "content": "hi"}},
        {"seq": 2, "type": "turn_created", "turn": 2, "data": {"turn": 2, "role": "assistant", "reply_to": 1, "variant": "single"}},
        {"seq": 3, "type": "turn_start", "turn": 2, "data": {}},
    ])  # fmt: skip
    assert run_state(True, False, 1, 5, conv) == "playing"
    assert run_state(False, False, 1, 5, conv).startswith("pausing: the reply being written finishes")
    assert run_state(False, True, 1, 5, conv) == "stopped at user turn 1 of 5"
    apply_events(conv, [{"seq": 4, "type": "turn_end", "turn": 2, "data": {"status": "done"}}])
    assert run_state(False, False, 1, 5, conv).startswith("paused")
    assert run_state(False, False, 5, 5, conv) == "finished" and run_state(True, False, 5, 5, conv) == "finished"


def test_the_expected_time_comes_from_a_recording_here_else_from_the_measured_rate(tmp_path: Path) -> None:
    turns = [
        {"role": "assistant", "status": "done", "summary": {"n_tokens": 40, "seconds": 2.0}},
        {"role": "assistant", "status": "done", "summary": {"n_tokens": 60, "seconds": 3.0}},
        {"role": "assistant", "status": "stopped", "summary": {"n_tokens": 5, "seconds": 10.0}},  # not a measure
        {"role": "user", "status": "done", "summary": None},
    ]
    assert measured_rate(turns) == pytest.approx(20.0) and measured_rate([]) is None
    n = len(SCENARIO["turns"])
    text = expected_duration(SCENARIO, 80, 20.0, [])
    assert text.startswith(f"at most {rec.duration_text(n * 80 / 20.0)}") and "20.0 tokens/s" in text
    assert "known once the worker has written a reply" in expected_duration(SCENARIO, 80, None, [])
    made = rec.load(rec.save(rec.make(SCENARIO, "m", _events([0.0, 95.0])), tmp_path))
    assert expected_duration(SCENARIO, 80, 20.0, [made]).startswith("about 1.6 min")
    other = rec.load(rec.save(rec.make(dict(SCENARIO, id="writing"), "m", _events([0.0, 95.0])), tmp_path))
    assert expected_duration(SCENARIO, 80, 20.0, [other]).startswith("at most")


@pytest.mark.usefixtures("tiny_space")
def test_pause_lets_the_reply_finish_and_stop_ends_the_scenario(monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PERSONA_SPACE_RECORDINGS", str(tmp_path))
    fake = FakeClient(hold=True)
    at = page("demo", fake).run()
    at.button(key="demo_start_coding").click().run()
    sid = at.session_state["demo_state"]["sid"]
    assert at.button(key="demo_play").label == "Pause after this reply"
    fake.begin(sid, 3)
    at.button(key="demo_play").click().run()
    assert "pausing: the reply being written finishes" in at.get("progress")[0].proto.text
    while fake.queued or fake.running:  # the pair in flight ends; nothing new is sent while paused
        if sid not in fake.running:
            fake.begin(sid, 2)
        fake.finish(sid)
    at.run()
    posts = len([c for c in fake.calls if c[0] == "post_message"])
    assert posts == 1 and "paused" in at.get("progress")[0].proto.text
    at.button(key="demo_next").click().run()  # one turn
    assert len([c for c in fake.calls if c[0] == "post_message"]) == 2
    fake.begin(sid, 2)
    at.button(key="demo_stop").click().run()
    assert "stopped at user turn 2 of" in at.get("progress")[0].proto.text
    assert at.button(key="demo_play").disabled and at.button(key="demo_next").disabled
    at.run()
    assert len([c for c in fake.calls if c[0] == "post_message"]) == 2  # nothing more is sent
    assert not list(tmp_path.glob("*.json"))  # a stopped run is not a finished one: no recording


@pytest.mark.usefixtures("tiny_space")
def test_a_finished_run_is_saved_and_replays_with_the_worker_down(monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PERSONA_SPACE_RECORDINGS", str(tmp_path))
    fake = FakeClient()
    at = page("demo", fake).run()
    at.button(key="demo_start_coding").click().run()
    for _ in range(len(SCENARIO["turns"]) + 2):
        at.run()
    assert "finished" in at.get("progress")[0].proto.text, at.get("progress")[0].proto.text
    saved = list(tmp_path.glob("coding-*.json"))
    assert len(saved) == 1 and "Saved as a recording" in texts(at)
    recording = rec.load(saved[0])
    assert sum(1 for e in recording.events if e["type"] == "turn_created" and e["data"]["role"] == "user") == len(
        SCENARIO["turns"]
    )
    at.run()
    assert len(list(tmp_path.glob("*.json"))) == 1  # saved once

    down = FakeClient(ready=False)
    replay = page("demo", down).run()
    assert not replay.exception
    assert replay.button(key="demo_start_coding").disabled  # a live run needs the worker
    labels = replay.selectbox(key="demo_rec").options
    assert any("recording of" in o and "Fake" in o for o in labels)
    replay.selectbox(key="demo_rec").set_value(str(saved[0]))
    replay.select_slider(key="demo_speed").set_value(8.0)
    replay.button(key="demo_replay").click().run()
    assert any("**Recording**, not live" in w.value for w in replay.warning)
    deadline = time.time() + 30
    while "replay finished" not in replay.get("progress")[0].proto.text and time.time() < deadline:
        time.sleep(0.3)
        replay.run()
    assert "replay finished" in replay.get("progress")[0].proto.text
    shown = texts(replay)
    assert plain(SCENARIO["turns"][0]) in shown and plain("Hello there, I am a helpful assistant.") in shown
    assert not [c for c in down.calls if c[0] in ("post_message", "create_session")]  # the model was never asked
    replay.button(key="demo_replay_end").click().run()
    assert not replay.exception and not any("**Recording**" in w.value for w in replay.warning)


@pytest.mark.usefixtures("tiny_space")
def test_a_scenario_without_a_system_prompt_sends_none_not_the_word_none() -> None:
    fake = FakeClient()
    at = page("demo", fake).run()
    at.button(key="demo_start_coding").click().run()
    created = [c[1] for c in fake.calls if c[0] == "create_session"]
    assert SCENARIO["system"] is None and created == [(None, {"cap_percentile": 75.0, "max_new_tokens": 80})]
