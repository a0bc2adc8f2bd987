"""The Streamlit pages, headless (AppTest): against a scripted fake worker client and against the real worker.

Chart *data* is tested through the figure builders; the drawn charts are checked in a real browser
(test_browser.py).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from app.charts import turn_chart
from app.conversation import Conversation, apply_events
from app.live_charts import control_changes, describe_change, live_token_figure, moving_average, token_series
from app.space_charts import caption, coordinates_csv, persona_map, ranking_rows
from app.transcript_sets import overlay_chart, split_upload, summary_rows, token_strip
from app.ui import plain
from tests.helpers.app_pages import page, texts
from tests.helpers.fake_client import FakeClient
from tests.helpers.worker_harness import ROOT


def test_space_page_switches_layouts_layers_and_highlights(tiny_space) -> None:  # type: ignore[no-untyped-def]
    at = page("space", FakeClient()).run()
    assert not at.exception
    assert at.title[0].value == "Persona space"
    assert len(at.dataframe) >= 2
    assert at.radio(key="space_layout").value == "Axis first"  # the default view
    at.radio(key="space_dims").set_value("3D").run()
    at.toggle(key="space_hide_weak").set_value(True).run()
    assert not at.exception
    at.radio(key="space_layout").set_value("UMAP").run()
    assert not at.exception
    at.radio(key="space_layout").set_value("PCA").run()
    at.radio(key="space_dims").set_value("2D").run()
    at.slider(key="space_layer").set_value(1).run()
    at.multiselect(key="space_highlight").set_value(["pirate", "ghost"]).run()
    assert not at.exception
    assert any("pirate" in e.label for e in at.expander)


def test_space_page_without_a_space_says_so(monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PERSONA_SPACE_SPACE", str(tmp_path))
    at = page("space", FakeClient()).run()
    assert not at.exception and "is not a persona space" in at.error[0].value


def test_chat_streams_and_the_cap_slider_reaches_the_worker(tiny_space) -> None:  # type: ignore[no-untyped-def]
    fake = FakeClient(reply="Arr <b>matey</b> *bold* [link](http://x)")
    at = page("chat", fake).run()
    assert not at.exception
    assert ("create_session", (None, {"cap_layers": [2, 3]})) in fake.calls
    at.chat_input(key="chat_input").set_value("Who are you?").run()
    assert any(c[0] == "post_message" and c[1][1] == "Who are you?" for c in fake.calls)
    at.run()  # the fragment reads the new events
    shown = texts(at)
    assert plain("Arr <b>matey</b> *bold* [link](http://x)") in shown  # model text is escaped, never markup
    at.slider(key="chat_cap_pct").set_value(40.0).run()
    at.toggle(key="chat_cap_on").set_value(True).run()
    at.slider(key="chat_cap_layers").set_value((1, 3)).run()
    patches = [c[1] for c in fake.calls if c[0] == "patch_controls"]
    assert {"cap_percentile": 40.0} in patches and {"cap_enabled": True} in patches and {"cap_layers": [1, 3]} in patches
    at.toggle(key="chat_compare").set_value(True).run()
    at.chat_input(key="chat_input").set_value("Again").run()
    at.run()
    assert any(c[0] == "post_message" and c[1][1:] == ("Again", True) for c in fake.calls)
    captions = [c.value for c in at.caption]
    assert any("uncapped" in c for c in captions) and any("capped" in c and "uncapped" not in c for c in captions)
    at.button(key="chat_stop").click().run()
    at.button(key="chat_undo").click().run()
    assert any(c[0] == "stop" for c in fake.calls) and any(c[0] == "undo" for c in fake.calls)
    assert not at.exception


def test_chat_when_the_worker_is_loading(tiny_space) -> None:  # type: ignore[no-untyped-def]
    at = page("chat", FakeClient(ready=False)).run()
    assert not at.exception
    assert "Worker starting: loading model" in at.sidebar.warning[0].value
    assert "make run" in at.info[0].value


def test_transcripts_page_projects_an_upload(tiny_space) -> None:  # type: ignore[no-untyped-def]
    fake = FakeClient()
    at = page("transcripts", fake).run()
    assert "Choose one or more" in at.info[0].value
    conversation = {"model": "m", "turns": 3, "conversation": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello *there*"},
        {"role": "user", "content": "more"}, {"role": "assistant", "content": "sure"},
    ]}  # fmt: skip
    capped = [*conversation["conversation"], {"role": "user", "content": "again"}, {"role": "assistant", "content": "yes"}]
    at.file_uploader(key="transcript_files").set_value([
        ("t.json", json.dumps(conversation).encode(), "application/json"),
        ("set.jsonl", (json.dumps(capped) + "\n\n" + json.dumps(conversation) + "\n").encode(), "application/jsonl"),
    ]).run()  # fmt: skip
    assert not at.exception, at.exception
    assert [c for c in fake.calls if c[0] == "project"] == [("project", 2)] * 2  # set.jsonl:3 repeats t.json: read once
    table = at.dataframe[0].value
    assert list(table["transcript"]) == ["t.json", "set.jsonl:1", "set.jsonl:3"] and list(table["turns"]) == [2, 3, 2]
    assert (
        list(table["first"]) == [2.0, 2.0, 2.0]
        and list(table["last"]) == [1.0, 0.0, 1.0]
        and list(table["min"]) == [1.0, 0.0, 1.0]
    )
    assert plain("hello *there*") in texts(at)
    at.selectbox(key="transcript_which").set_value("set.jsonl:1").run()
    at.number_input(key="transcript_pick").set_value(3).run()
    assert plain("yes") in texts(at) and "20 tokens of context" in at.caption[0].value
    at.file_uploader(key="transcript_files").set_value([("bad.json", b"{oops", "application/json")]).run()
    assert "is not a JSON text file" in at.error[0].value


def test_transcript_set_helpers() -> None:
    assert [n for n, _ in split_upload("a.jsonl", b'[1]\n\n{"x": 2}\n')] == ["a.jsonl:1", "a.jsonl:3"]
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        split_upload("b.jsonl", b"[1]\n{oops\n")
    with pytest.raises(ValueError, match="holds no conversation"):
        split_upload("c.jsonl", b"\n")
    result = {"layer": 3, "tokens": 9000, "windowed": True, "passes": 2, "window": 8192, "turns": [
        {"index": 0, "projection": 4.0}, {"index": 1, "projection": None}, {"index": 2, "projection": 1.0},
        {"index": 3, "projection": 2.5},
    ]}  # fmt: skip
    (row,) = summary_rows([("x", result)])
    assert row == {"transcript": "x", "turns": 4, "first": 4.0, "last": 2.5, "mean": 2.5, "min": 1.0, "tokens": 9000,
                   "read": "2 windows of ≤ 8192"}  # fmt: skip
    strip = token_strip({"index": 1, "token_projections": [1.0, 3.0], "token_texts": ["a", "\n"]}, centre=2.0)
    assert (
        list(strip.data[0].z[0]) == [1.0, 3.0] and strip.data[0].zmid == 2.0 and list(strip.data[0].customdata[0]) == ["a", "⏎"]
    )


def test_demo_replays_a_scenario_capped_and_uncapped(tiny_space) -> None:  # type: ignore[no-untyped-def]
    fake = FakeClient()
    at = page("demo", fake).run()
    assert not at.exception
    at.button(key="demo_start_coding").click().run()
    posts = [c for c in fake.calls if c[0] == "post_message"]
    assert len(posts) == 1 and posts[0][1][2] is True  # compare mode
    at.run()
    at.run()
    posts = [c for c in fake.calls if c[0] == "post_message"]
    scenario = json.loads((ROOT / "assets" / "scenarios" / "coding.json").read_text())
    assert [p[1][1] for p in posts] == scenario["turns"][: len(posts)] and len(posts) >= 2
    assert at.info[0].value == scenario["presenter_note"]  # the presenter note is shown
    assert at.button(key="demo_play").label == "Pause after this reply"
    at.button(key="demo_play").click().run()  # pause
    assert at.button(key="demo_play").label == "Resume"  # the button says what it will do next
    n = len([c for c in fake.calls if c[0] == "post_message"])
    at.run()
    assert len([c for c in fake.calls if c[0] == "post_message"]) == n
    at.button(key="demo_play").click().run()
    assert at.button(key="demo_play").label == "Pause after this reply"
    assert not [s for s in at.slider if s.key == "demo_rep"]  # the worker does not know the control


def test_repetition_penalty_is_offered_only_when_the_worker_has_it(tiny_space) -> None:  # type: ignore[no-untyped-def]
    fake = FakeClient(repetition_penalty=True)
    at = page("chat", fake).run()
    assert at.slider(key="chat_rep").value == 1.15
    at.slider(key="chat_rep").set_value(1.3).run()
    assert {"repetition_penalty": 1.3} in [c[1] for c in fake.calls if c[0] == "patch_controls"]
    demo = page("demo", fake).run()
    demo.button(key="demo_start_coding").click().run()
    assert demo.slider(key="demo_rep").value == 1.15 and not demo.exception
    old = page("chat", FakeClient()).run()
    assert not [s for s in old.slider if s.key == "chat_rep"]  # an older worker: no slider, nothing it would refuse


def test_figures_hold_the_data() -> None:
    summary = {
        "roles": [{"name": n, "category": "c", "description": "d", "projection": p, "pca": [p, -p, 0.0], "umap_2d": [p, p], "umap_3d": [p, p, p],
                   "axis_first": [p, 0.0, 0.0], "example": {"question": "q", "answer": "a <b>"}} for n, p in (("a", 1.0), ("b", -1.0), ("c", 0.5))],
        "assistant": {"projection": 2.0, "pca": [2.0, 0.0, 0.0], "umap_2d": [0.0, 0.0], "umap_3d": [0, 0, 0], "axis_first": [2.0, 0.0, 0.0]},
        "axis_arrow_pca": [1.0, 0.0, 0.0], "layer": 2, "target_layer": 2, "n_layers": 4,
    }  # fmt: skip
    fig = persona_map(summary, "pca", 2, ["b"])
    assert list(fig.data[0].x) == [1.0, -1.0, 0.5] and list(fig.data[0].marker.color) == [1.0, -1.0, 0.5]
    assert "a &lt;b&gt;" in fig.data[0].hovertext[0]  # hover text is escaped
    assert [a.text for a in fig.layout.annotations] == ["", "Assistant Axis"]
    assert len(persona_map(summary, "umap", 3).data[0].z) == 3
    conv = Conversation()
    apply_events(conv, [
        {"seq": 1, "turn": 1, "type": "turn_created", "data": {"turn": 1, "role": "user", "content": "hi"}},
        {"seq": 2, "turn": 2, "type": "turn_created", "data": {"turn": 2, "role": "assistant", "variant": "single", "reply_to": 1}},
        {"seq": 3, "turn": 2, "type": "token", "data": {"turn": 2, "index": 0, "text": "x", "projection": 1.5}},
        {"seq": 4, "turn": 2, "type": "controls_applied", "data": {"turn": 2, "from_token": 1}},
        {"seq": 5, "turn": 2, "type": "token", "data": {"turn": 2, "index": 1, "text": "y", "projection": 2.5, "cap_delta": 0.3}},
        {"seq": 6, "turn": 2, "type": "turn_end", "data": {"turn": 2, "status": "done", "mean_projection": 2.0, "pca": [0, 1, 2], "nearest": []}},
        {"seq": 5, "turn": 2, "type": "token", "data": {"turn": 2, "index": 1, "text": "DUPLICATE", "projection": 9}},
    ])  # fmt: skip
    assert conv.exchanges[0].replies["single"].text == "xy" and not conv.busy
    strip = live_token_figure(conv, summary, window=1)
    assert list(strip.data[0].y) == [1.5, 2.5] and any(s.x0 == 0.5 for s in strip.layout.shapes)
    assert list(turn_chart(conv, summary).data[0].y) == [2.0]
    result = {
        "layer": 2,
        "turns": [{"index": 0, "projection": 1.0}, {"index": 1, "projection": None}, {"index": 2, "projection": -1.0}],
    }
    overlay = overlay_chart([("a.json", result), ("b.json", {**result, "turns": result["turns"][:1]})])
    assert [list(t.x) for t in overlay.data] == [[1, 3], [1]] and [t.name for t in overlay.data] == ["a.json", "b.json"]
    assert [list(map(list, t.customdata)) for t in overlay.data] == [[[0, 0], [0, 2]], [[1, 0]]]  # (conversation, turn)


def test_space_figures_axis_first_colour_scale_tables_and_csv(tiny_world) -> None:  # type: ignore[no-untyped-def]
    from backend.view.space import read_space, summary

    view = read_space(tiny_world[1])
    s = summary(view)
    stored = view.arrays["role_projections"][:, view.target_layer]
    fig = persona_map(s, "axis", 2)
    assert list(fig.data[0].x) == [float(x) for x in stored]  # x is exactly the stored projection
    star = next(t for t in fig.data if t.name == "default Assistant")
    assert star.x[0] == float(view.arrays["default_projection"][view.target_layer]) and "projection" in star.hovertext[0]
    # the Assistant is at the high end and on the colour scale
    assert fig.data[0].marker.cmax == max([*stored.tolist(), star.x[0]]) and fig.data[0].marker.cmin == min(stored.tolist())
    label = next(a for a in fig.layout.annotations if a.text == "Assistant Axis")
    assert label.x == max([*stored.tolist(), star.x[0]])  # the label sits at the Assistant end of the arrow
    for layout, dims in (("axis", 3), ("pca", 3), ("pca", 2), ("umap", 2)):
        f = persona_map(s, layout, dims)
        assert f.data[0].marker.cmax >= s["assistant"]["projection"], layout
        arrow = [t for t in f.data if t.name == "Assistant Axis"]
        assert bool(arrow) == (dims == 3 and layout != "umap"), (layout, dims)
    assert "gold diamond" in caption(s, "pca", 3, False) and "gold star" in caption(s, "axis", 2, False)
    top = ranking_rows(s, 3, most=True)
    assert top[0]["archetype"] == "★ default Assistant" and len(top) == 3
    assert any("default Assistant" in r["archetype"] for r in ranking_rows(s, 100, most=False))
    rows = coordinates_csv(s).splitlines()
    assert len(rows) == 2 + len(s["roles"]) and rows[-1].startswith("default Assistant,")
    # a weak archetype: an open marker of its own, and one toggle hides it
    s["roles"][1]["weak"], s["roles"][1]["in_role"] = True, 0
    s["weak"] = {s["roles"][1]["name"]: 0}
    fig = persona_map(s, "axis", 2)
    weak = next(t for t in fig.data if t.name == "weak archetypes")
    assert list(weak.text) == [s["roles"][1]["name"]] and weak.marker.symbol == "circle-open"
    assert fig.data[0].marker.cmin == weak.marker.cmin  # one colour scale for both
    hidden = persona_map(s, "axis", 2, hide_weak=True)
    assert not any(t.name == "weak archetypes" for t in hidden.data) and len(hidden.data[0].x) == len(s["roles"]) - 1
    assert "1 weak" in caption(s, "axis", 2, True)


def test_the_app_never_imports_torch() -> None:
    code = (
        "import sys; sys.path.insert(0, '.');"
        "import app.ui, app.charts, app.space_charts, app.client, app.conversation, app.chat_view, app.launch, backend.view.space;"
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_events_repeated_on_reconnect_are_applied_once() -> None:
    """A reconnect may resend the last event seen (seq == last_seq) and older ones: each counts once."""
    created = [
        {"seq": 1, "turn": 1, "type": "turn_created", "data": {"turn": 1, "role": "user", "content": "hi"}},
        {
            "seq": 2,
            "turn": 2,
            "type": "turn_created",
            "data": {"turn": 2, "role": "assistant", "variant": "single", "reply_to": 1},
        },
    ]
    tokens = [{"seq": 3 + i, "turn": 2, "type": "token", "data": {"turn": 2, "index": i, "text": t}} for i, t in enumerate("ab")]
    conv = apply_events(Conversation(), created + tokens)
    assert conv.last_seq == 4
    apply_events(conv, tokens[-1:])  # the last event again
    apply_events(conv, [*tokens, {"seq": 5, "turn": 2, "type": "token", "data": {"turn": 2, "index": 2, "text": "c"}}])
    reply = conv.exchanges[0].replies["single"]
    assert reply.text == "abc" and [t["index"] for t in reply.tokens] == [0, 1, 2] and conv.last_seq == 5
    apply_events(conv, created)  # the whole log from the start: nothing new
    assert len(conv.exchanges) == 1 and len(conv.exchanges[0].replies) == 1 and reply.text == "abc"


def test_chat_import_then_a_control_change_reaches_the_worker(tiny_space) -> None:  # type: ignore[no-untyped-def]
    fake = FakeClient()
    at = page("chat", fake).run()
    sid = at.session_state["chat_state"]["sid"]
    at.chat_input(key="chat_input").set_value("Who are you?").run()
    fake.patch_controls(sid, cap_percentile=90.0, cap_enabled=True, steer_coefficient=0.5)
    exported = json.dumps(fake.export(sid)).encode()
    at.file_uploader(key="chat_import").set_value(("s.json", exported, "application/json")).run()
    at.button(key="chat_import_go").click().run()
    assert not at.exception, at.exception
    imported = at.session_state["chat_state"]["sid"]
    assert imported != sid
    # every control widget shows the imported controls
    assert at.toggle(key="chat_cap_on").value is True
    assert at.slider(key="chat_cap_pct").value == 90.0 and at.slider(key="chat_steer").value == 0.5
    at.run()
    assert "Who are you?" in texts(at)  # the conversation came back
    at.toggle(key="chat_cap_on").set_value(False).run()
    assert not at.exception, at.exception
    assert fake.sessions[imported]["controls"]["cap_enabled"] is False


def test_chat_session_survives_a_refresh_and_reopens_from_the_list(tiny_space) -> None:  # type: ignore[no-untyped-def]
    fake = FakeClient()
    at = page("chat", fake).run()
    sid = at.session_state["chat_state"]["sid"]
    assert at.query_params["session"] in (sid, [sid])  # the URL names the session
    at.chat_input(key="chat_input").set_value("Remember me").run()
    fake.patch_controls(sid, cap_percentile=33.0)
    # a refresh: a new browser session with the same URL
    again = page("chat", fake)
    again.query_params["session"] = sid
    again.run()
    assert not again.exception, again.exception
    assert again.session_state["chat_state"]["sid"] == sid
    assert "Remember me" in texts(again) and again.slider(key="chat_cap_pct").value == 33.0
    # a new session, then the earlier one from the sidebar list
    again.button(key="chat_new").click().run()
    new = again.session_state["chat_state"]["sid"]
    assert new != sid and again.query_params["session"] in (new, [new])
    assert "Remember me" not in texts(again)
    again.selectbox(key="chat_pick").set_value(sid).run()
    again.button(key="chat_open").click().run()
    assert again.session_state["chat_state"]["sid"] == sid and "Remember me" in texts(again)
    # a link to a session the worker does not have says so and starts afresh
    gone = page("chat", fake)
    gone.query_params["session"] = "00000000deadbeef"
    gone.run()
    assert not gone.exception and "Cannot reopen session 00000000deadbeef" in gone.sidebar.error[0].value


def test_export_reads_what_the_worker_holds_at_click_time() -> None:
    from app.chat_view import export_json

    fake = FakeClient()
    sid = fake.create_session()["id"]
    fake.post_message(sid, "hi")  # after the page was drawn: the export still has it
    data = json.loads(export_json(fake, sid))
    assert any(e["type"] == "turn_end" for e in data["events"])
    assert "failed" in json.loads(export_json(fake, "ffffffffffffffff"))["error"]


def test_live_chart_shows_the_cap_at_its_first_layer_and_labels_control_changes() -> None:
    def token(seq: int, index: int, before: float, tau: float | None, version: int) -> dict:  # type: ignore[type-arg]
        data = {"turn": 2, "index": index, "text": f"t{index}", "projection": float(index), "controls_version": version,
                "cap_on": tau is not None, "cap_delta": max(0.0, (tau or 0) - before) if tau is not None else 0.0}  # fmt: skip
        if tau is not None:
            data.update(
                cap_layers=[21, 26], tau=[tau, tau + 1], projection_before_cap=before, projection_after_cap=max(before, tau)
            )
        return {"seq": seq, "turn": 2, "type": "token", "data": data}

    base = {"cap_enabled": False, "cap_percentile": 75.0, "cap_layers": [21, 26], "steer_coefficient": 0.0}
    conv = apply_events(Conversation(), [
        {"seq": 1, "turn": None, "type": "session_created", "data": {"controls": base, "controls_version": 0}},
        {"seq": 2, "turn": 1, "type": "turn_created", "data": {"turn": 1, "role": "user", "content": "hi"}},
        {"seq": 3, "turn": 2, "type": "turn_created", "data": {"turn": 2, "role": "assistant", "variant": "single", "reply_to": 1}},
        {"seq": 4, "turn": 2, "type": "turn_start", "data": {"turn": 2, "controls_version": 0}},
        token(5, 0, 3.0, None, 0),
        {"seq": 6, "turn": None, "type": "controls", "data": {"controls": {**base, "cap_enabled": True}, "controls_version": 1}},
        {"seq": 7, "turn": 2, "type": "controls_applied", "data": {"turn": 2, "controls_version": 1, "from_token": 1}},
        token(8, 1, 3.0, 5.0, 1),
        token(9, 2, 6.0, 5.0, 1),
        {"seq": 10, "turn": None, "type": "controls", "data": {"controls": {**base, "cap_enabled": True, "cap_percentile": 95.0},
                                                               "controls_version": 2}},
        {"seq": 11, "turn": 2, "type": "controls_applied", "data": {"turn": 2, "controls_version": 2, "from_token": 3}},
        token(12, 3, 4.0, 7.0, 2),
    ])  # fmt: skip
    reply = conv.exchanges[0].replies["single"]
    series = token_series(reply)
    assert series["before"] == [None, 3.0, 6.0, 4.0] and series["after"] == [None, 5.0, 6.0, 7.0]
    assert series["tau"] == [None, 5.0, 5.0, 7.0]  # the first capped layer's floor, following the slider
    assert series["moved"] == [False, True, False, True]
    assert control_changes(conv, reply) == [(1, "cap on from token 1"), (3, "cap 75→95 from token 3")]
    fig = live_token_figure(conv, None, window=2)
    by_name = {t.name: t for t in fig.data}
    assert list(by_name["monitor"].y) == [0.0, 1.0, 2.0, 3.0]
    assert list(by_name["monitor, average of 2"].y) == [0.0, 0.5, 1.5, 2.5]
    assert list(by_name["floor τ"].y) == [None, 5.0, 5.0, 7.0] and list(by_name["moved by the cap"].x) == [1, 3]
    assert "First capped layer 21" in fig.layout.annotations[1].text
    assert {a.text for a in fig.layout.annotations} >= {"cap on from token 1", "cap 75→95 from token 3"}
    assert moving_average([1.0, None, 3.0, 5.0], 2) == [1.0, 1.0, 3.0, 4.0]
    assert describe_change({"cap_layers": [21, 26], "greedy": True}, {"cap_layers": [18, 26], "greedy": False}) == (
        "sampling, cap layers 21–26→18–26"
    )


def test_worker_status_line_follows_start_up_and_the_queue() -> None:
    from app.ui import status_line

    assert status_line("connection refused")[0] == "warning"  # starting up is not an error
    assert status_line({"ready": False, "phase": "building the map"}) == ("warning", "Worker starting: building the map…")
    assert status_line({"ready": False, "error": "boom"})[0] == "error"
    ready = {"ready": True, "model_name": "M", "device": "cpu", "phase": "ready"}
    assert status_line({**ready, "queue_length": 0})[1].endswith("idle")
    assert status_line({**ready, "queue_length": 2})[1].endswith("busy: 2 turns running or queued")
    compiling = status_line({**ready, "queue_length": 0, "decode_step": "compiling (1 x 512)"})
    assert compiling[0] == "success" and compiling[1].endswith("idle · compiling the decode step (faster tokens soon)")
    int8 = status_line({**ready, "queue_length": 0, "precision": "int8"})[1]
    assert int8.endswith("idle · int8 weights (a faster decode step; projections approximate float32's)")
    assert status_line({**ready, "queue_length": 0, "decode_step": "compiled (1 x 512, 2 x 512, 1 x 1024, 2 x 1024)"})[
        1
    ].endswith("idle")


def test_exported_charts_embed_plotly_and_reach_no_network() -> None:
    from app.charts import standalone_html

    page_html = standalone_html(overlay_chart([("t.json", {"layer": 2, "turns": [{"index": 0, "projection": 1.0}]})]))
    assert "<script src=" not in page_html and 'src="https://cdn' not in page_html  # no script fetched
    assert "Plotly.newPlot" in page_html and len(page_html) > 1_000_000  # plotly.js itself is inside


def test_demo_reopened_from_its_link_resumes_the_scenario_paused(tiny_space) -> None:  # type: ignore[no-untyped-def]
    fake = FakeClient()
    at = page("demo", fake).run()
    at.button(key="demo_start_coding").click().run()
    at.run()
    sid = at.session_state["demo_state"]["sid"]
    posted = len([c for c in fake.calls if c[0] == "post_message"])
    assert at.query_params["demo"] in (sid, [sid]) and posted >= 2
    again = page("demo", fake)
    again.query_params["demo"] = sid
    again.run()
    assert not again.exception, again.exception
    scenario = json.loads((ROOT / "assets" / "scenarios" / "coding.json").read_text())
    assert again.info[0].value == scenario["presenter_note"] and again.button(key="demo_play").label == "Resume"
    assert again.session_state["demo_state"]["next"] == posted  # resumes after the turns already in the log
    assert len([c for c in fake.calls if c[0] == "post_message"]) == posted  # paused: nothing sent by reopening
