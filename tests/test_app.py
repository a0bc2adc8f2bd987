"""The Streamlit pages, headless (AppTest): against a scripted fake worker client and against the real worker.

Chart *data* is tested through the figure builders; the drawn charts are checked in a real browser
(test_browser.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from streamlit.testing.v1 import AppTest

from app.charts import token_strip, transcript_chart, turn_chart
from app.conversation import Conversation, apply_events
from app.space_charts import caption, coordinates_csv, persona_map, ranking_rows
from app.ui import plain
from tests.fake_client import FakeClient
from tests.worker_harness import ROOT

VIEWS = ROOT / "app" / "views"


@pytest.fixture
def tiny_space(tiny_world, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PERSONA_SPACE_SPACE", str(tiny_world[1]))
    return tiny_world[1]


def page(name: str, client: object | None = None) -> AppTest:
    at = AppTest.from_file(str(VIEWS / f"{name}.py"), default_timeout=60)
    if client is not None:
        at.session_state["_client"] = client
    return at


def texts(at: AppTest) -> str:
    return "\n".join(m.value for m in at.markdown) + "\n".join(c.value for c in at.caption)


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
    assert "Worker not ready" in at.sidebar.warning[0].value
    assert "make run" in at.info[0].value


def test_transcripts_page_projects_an_upload(tiny_space) -> None:  # type: ignore[no-untyped-def]
    fake = FakeClient()
    at = page("transcripts", fake).run()
    assert "Choose a JSON file" in at.info[0].value
    conversation = {"model": "m", "turns": 3, "conversation": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello *there*"},
        {"role": "user", "content": "more"}, {"role": "assistant", "content": "sure"},
    ]}  # fmt: skip
    at.file_uploader(key="transcript_file").set_value(("t.json", json.dumps(conversation).encode(), "application/json")).run()
    assert not at.exception
    assert ("project", 2) in fake.calls
    assert at.dataframe[0].value.shape[0] == 2
    assert plain("hello *there*") in texts(at)
    at.file_uploader(key="transcript_file").set_value(("bad.json", b"{oops", "application/json")).run()
    assert "is not a JSON text file" in at.error[0].value


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
    at.button(key="demo_play").click().run()  # pause
    n = len([c for c in fake.calls if c[0] == "post_message"])
    at.run()
    assert len([c for c in fake.calls if c[0] == "post_message"]) == n


def test_chat_page_against_the_real_worker(worker, tiny_space, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PERSONA_SPACE_WORKER_URL", worker.url)
    from app.client import WorkerClient

    at = page("chat", WorkerClient(worker.url)).run()
    assert not at.exception, at.exception
    at.slider(key="chat_max").set_value(16).run()
    at.chat_input(key="chat_input").set_value("Hello, who are you?").run()
    deadline = time.time() + 60
    while time.time() < deadline:
        at.run()
        if any("projection" in c.value and "nearest" in c.value for c in at.caption):
            break
        time.sleep(0.3)
    assert any("projection" in c.value and "nearest" in c.value for c in at.caption)
    assert not at.exception


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
    strip = token_strip(conv, summary)
    assert list(strip.data[0].y) == [1.5, 2.5] and any(s.x0 == 0.5 for s in strip.layout.shapes)
    assert list(turn_chart(conv, summary).data[0].y) == [2.0]
    result = {
        "layer": 2,
        "turns": [{"index": 0, "projection": 1.0}, {"index": 1, "projection": None}, {"index": 2, "projection": -1.0}],
    }
    assert list(transcript_chart(result).data[0].x) == [1, 3]


def test_space_figures_axis_first_colour_scale_tables_and_csv(tiny_world) -> None:  # type: ignore[no-untyped-def]
    from backend.space_view import read_space, summary

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
        "import app.ui, app.charts, app.space_charts, app.client, app.conversation, app.chat_view, app.launch, backend.space_view;"
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
