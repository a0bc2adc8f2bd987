"""Charts that read at a glance, checked on the figure builders' data: whole-turn ticks, the two reference lines on
every drift chart, one colour scale across a transcript's turns, hover text, titles on every axis, labels placed
apart, and the capped-layer panel following the controls in force. (Drawn label boxes: tests/browser/test_chart_labels.py.)
"""

from __future__ import annotations

import json
from typing import Any

from app.charts import ASSISTANT_LABEL, ROLEPLAY_LABEL, layer_figures, nice_step, trajectory, turn_chart, variance_figure
from app.conversation import Conversation, apply_events
from app.live_charts import live_token_figure
from app.space_charts import AXIS_CAMERA, colour_range, label_places, persona_map, role_hover
from app.transcript_sets import overlay_chart, strip_scale, token_strip
from backend.view.frontier import tradeoff_figure
from tests.helpers.app_pages import page
from tests.helpers.fake_client import FakeClient

ROLES = (("pirate", -3.0, False), ("poet", -1.0, True), ("tutor", 1.5, False))


def space() -> dict[str, Any]:
    roles = [
        {"name": n, "category": "c", "description": f"a {n}", "projection": p, "weak": w, "in_role": 1 if w else 5,
         "pca": [p, -p, 0.5], "axis_first": [p, p / 2, 0.1], "umap_2d": [p, 1.0], "umap_3d": [p, 1.0, 0.0],
         "example": {"question": "q", "answer": f"I am a {n}"}}
        for n, p, w in ROLES
    ]  # fmt: skip
    return {
        "roles": roles, "weak": {"poet": 1}, "dropped": {}, "layer": 2, "target_layer": 2, "n_layers": 4,
        "assistant": {"projection": 4.0, "pca": [4.0, 0.5, 0.0], "axis_first": [4.0, 1.0, 0.0], "umap_2d": [0.0, 0.0],
                      "umap_3d": [0.0, 0.0, 0.0]},
        "axis_arrow_pca": [1.0, 0.0, 0.0], "axis_pc1_cosine": [0.1, 0.5, 0.9, 0.8], "pc1_variance_ratio": [0.2, 0.3, 0.4, 0.3],
        "explained_variance": [0.4, 0.2, 0.1], "model": {"name": "tiny"},
    }  # fmt: skip


def event(seq: int, kind: str, of: int | None, /, **data: Any) -> dict[str, Any]:
    return {"seq": seq, "turn": of, "type": kind, "data": data}


def chat(n_exchanges: int = 3, cap_on_tokens: bool = False, pca: list[float] | None = None) -> Conversation:
    """``n_exchanges`` single replies of two tokens each, under controls version 0 (cap off)."""
    base = {"cap_enabled": False, "cap_percentile": 75.0, "cap_layers": [2, 3]}
    events = [event(1, "session_created", None, controls=base, controls_version=0)]
    seq = 2
    for i in range(n_exchanges):
        user, reply = 2 * i + 1, 2 * i + 2
        events += [
            event(seq, "turn_created", user, turn=user, role="user", content=f"q{i}"),
            event(seq + 1, "turn_created", reply, turn=reply, role="assistant", variant="single", reply_to=user),
            event(seq + 2, "turn_start", reply, turn=reply, controls_version=0),
        ]
        seq += 3
        for k in range(2):
            token = {"turn": reply, "index": k, "text": f"t{k}", "projection": float(i + k), "cap_on": cap_on_tokens}
            if cap_on_tokens:
                token |= {"cap_layers": [2, 3], "tau": [1.0, 1.0], "projection_before_cap": 0.0, "projection_after_cap": 1.0,
                          "cap_delta": 1.0}  # fmt: skip
            events.append(event(seq, "token", reply, **token))
            seq += 1
        events.append(event(seq, "turn_end", reply, turn=reply, status="done", mean_projection=float(i),
                            pca=pca or [float(i), 0.0, 0.0], nearest=[{"name": "pirate"}]))  # fmt: skip
        seq += 1
    return apply_events(Conversation(), events)


def reference_levels_drawn(fig: Any) -> dict[str, float]:
    """Label -> y of every horizontal reference line (plotly draws each as a shape plus its annotation)."""
    ys = [s.y0 for s in fig.layout.shapes if s.y0 == s.y1]
    labels = {a.text: a for a in fig.layout.annotations if a.text in (ASSISTANT_LABEL, ROLEPLAY_LABEL)}
    return {text: a.y for text, a in labels.items() if a.y in ys}


def test_per_turn_chart_has_whole_turn_ticks_both_reference_lines_and_titles() -> None:
    fig = turn_chart(chat(3), space())
    assert fig.layout.xaxis.dtick == 1 and fig.layout.xaxis.tick0 == 1 and fig.layout.xaxis.tickformat == "d"
    assert reference_levels_drawn(fig) == {ASSISTANT_LABEL: 4.0, ROLEPLAY_LABEL: -3.0}
    assert fig.layout.xaxis.title.text == "turn" and fig.layout.yaxis.title.text == "projection" and fig.layout.title.text
    long = turn_chart(chat(40), space())
    assert long.layout.xaxis.dtick == 5 and long.layout.xaxis.tickformat == "d"  # whole turns, not 40 crowded labels
    assert [nice_step(n) for n in (1, 12, 13, 30, 160, 600)] == [1, 1, 2, 5, 20, 50]


def test_live_chart_has_both_reference_lines_labels_under_the_title_and_the_legend_below_the_token_title() -> None:
    conv = chat(1)
    conv = apply_events(conv, [
        event(50, "controls", None, controls={"cap_enabled": True, "cap_layers": [2, 3]}, controls_version=1),
        event(51, "controls_applied", 2, turn=2, controls_version=1, from_token=1),
    ])  # fmt: skip
    fig = live_token_figure(conv, space())
    assert reference_levels_drawn(fig) == {ASSISTANT_LABEL: 4.0, ROLEPLAY_LABEL: -3.0}
    (mark,) = [a for a in fig.layout.annotations if "from token 1" in a.text]
    assert mark.yref == "y domain" and mark.yanchor == "top"  # inside the top panel, under its title
    assert fig.layout.legend.yref == "container" and fig.layout.legend.y == 0 and fig.layout.legend.yanchor == "bottom"
    assert fig.layout.margin.b >= 100  # room for the x title above the legend
    assert fig.layout.xaxis2.title.text == "token" and fig.layout.yaxis.title.text == "projection"
    assert fig.layout.xaxis.tickformat == "d" and fig.layout.xaxis.dtick == 1  # whole tokens, never 0, 1, 1, 2
    # the reference lines are labelled in the right margin, clear of the control labels drawn in the panel
    assert {a.xref for a in fig.layout.annotations if a.text in (ASSISTANT_LABEL, ROLEPLAY_LABEL)} == {"paper"}


def test_control_labels_are_stacked_and_a_late_one_is_labelled_leftwards() -> None:
    conv = chat(1)  # tokens 0 and 1; changes from token 0 (left half) and token 1 (right half)
    conv = apply_events(conv, [
        event(50, "controls", None, controls={"cap_enabled": True, "cap_layers": [2, 3]}, controls_version=1),
        event(51, "controls_applied", 2, turn=2, controls_version=1, from_token=0),
        event(52, "controls", None, controls={"cap_enabled": True, "cap_layers": [2, 3], "cap_percentile": 90.0},
              controls_version=2),
        event(53, "controls_applied", 2, turn=2, controls_version=2, from_token=1),
    ])  # fmt: skip
    marks = [a for a in live_token_figure(conv, space()).layout.annotations if "from token" in a.text]
    assert [(a.xanchor, a.yshift) for a in marks] == [("left", -2), ("right", -18)]  # one row each, inside the plot


def test_the_capped_layer_panel_follows_the_controls_in_force() -> None:
    off = live_token_figure(chat(1), space())
    title = off.layout.annotations[1].text
    assert "cap is off" in title and any("Switch" in a.text for a in off.layout.annotations)  # explained, not empty
    # the cap switched on after the shown tokens were written: the title says so at once, never "(cap off)"
    on = live_token_figure(chat(1), space(), controls={"cap_enabled": True, "cap_layers": [2, 3]})
    assert on.layout.annotations[1].text == "First capped layer 2: before and after the cap"
    assert any("applies from the next token" in a.text for a in on.layout.annotations)
    # the event log's newest controls are used when none are passed
    conv = apply_events(
        chat(1), [event(60, "controls", None, controls={"cap_enabled": True, "cap_layers": [3, 3]}, controls_version=1)]
    )
    assert "off" not in live_token_figure(conv, space()).layout.annotations[1].text
    capped = live_token_figure(chat(1, cap_on_tokens=True), space(), controls={"cap_enabled": False})
    assert capped.layout.annotations[1].text.startswith("First capped layer 2")  # tokens that were capped say where
    assert not any("Switch" in a.text or "next token" in a.text for a in capped.layout.annotations)


def test_trajectory_colours_archetypes_by_projection_has_axis_titles_and_holds_every_turn() -> None:
    s = space()
    fig = trajectory(chat(2, pca=[30.0, -20.0, 0.0]), s)  # turns far outside the archetype cloud
    archetypes = fig.data[0]
    assert list(archetypes.marker.color) == [p for _, p, _ in ROLES]
    assert (archetypes.marker.cmin, archetypes.marker.cmax) == colour_range(s)
    assert archetypes.marker.colorscale == persona_map(s).data[0].marker.colorscale  # the map's scale
    assert fig.layout.xaxis.title.text == "PC1" and fig.layout.yaxis.title.text == "PC2"
    (x0, x1), (y0, y1) = fig.layout.xaxis.range, fig.layout.yaxis.range
    for trace in fig.data:
        assert all(x0 < x < x1 for x in trace.x) and all(y0 < y < y1 for y in trace.y), trace.name
    assert x1 > 30 and y0 < -20


def test_transcript_strip_uses_one_colour_scale_for_every_turn() -> None:
    result = {"layer": 2, "turns": [
        {"index": 0, "projection": 1.0, "token_projections": [0.0, 2.0], "token_texts": ["a", "b"]},
        {"index": 1, "projection": 5.0, "token_projections": [4.0, 6.0], "token_texts": ["c", "d"]},
    ]}  # fmt: skip
    scale = strip_scale(result)
    assert scale == (0.0, 3.0, 6.0)
    strips = [token_strip(t, scale=scale).data[0] for t in result["turns"]]
    assert {(s.zmin, s.zmid, s.zmax) for s in strips} == {(0.0, 3.0, 6.0)}  # the same for both turns
    assert strip_scale({"turns": [{"index": 0}]}) is None
    assert token_strip(result["turns"][0], scale=scale).layout.xaxis.title.text == "token"


def test_transcript_drift_has_both_reference_lines_and_whole_turn_ticks() -> None:
    result = {"layer": 2, "turns": [{"index": i, "projection": float(i)} for i in range(4)]}
    fig = overlay_chart([("a.json", result)], space())
    assert reference_levels_drawn(fig) == {ASSISTANT_LABEL: 4.0, ROLEPLAY_LABEL: -3.0}
    assert fig.layout.xaxis.dtick == 1 and fig.layout.xaxis.tickformat == "d"
    assert fig.layout.xaxis.title.text == "assistant turn" and fig.layout.yaxis.title.text == "projection"


def test_archetype_hover_shows_the_assistants_projection() -> None:
    fig = persona_map(space(), "axis", 2)
    hover = fig.data[0].hovertext[0]
    assert "projection -3.00" in hover and "default Assistant 4.00" in hover and "I am a pirate" in hover
    assert "default Assistant" not in role_hover(space()["roles"][0])  # only when given


def test_weak_archetypes_are_drawn_alike_in_2d_and_3d() -> None:
    two, three = (next(t for t in persona_map(space(), "axis", d).data if t.name == "weak archetypes") for d in (2, 3))
    for weak in (two, three):
        assert weak.marker.symbol == "circle-open"
        assert list(weak.marker.color) == [-1.0] and list(weak.marker.line.color) == [-1.0]  # rings coloured by projection
        assert (weak.marker.line.cmin, weak.marker.line.cmax) == colour_range(space())


def test_map_labels_are_placed_apart_and_every_axis_has_a_title() -> None:
    star, axis = label_places([4.0, 1.0], [4.0, 0.0], 2)  # star above the arrow head: its label above, the axis' below
    assert star == {"textposition": "top center"} and axis["yanchor"] == "top" and axis["yshift"] < 0
    star, axis = label_places([4.0, -1.0], [4.0, 0.0], 2)
    assert star == {"textposition": "bottom center"} and axis["yanchor"] == "bottom" and axis["yshift"] > 0
    fig = persona_map(space(), "axis", 2)
    assert next(t for t in fig.data if t.name == "default Assistant").textposition == "top center"
    assert [a.yanchor for a in fig.layout.annotations if a.text == "Assistant Axis"] == ["top"]
    three = persona_map(space(), "axis", 3)
    notes = {a.text: a for a in three.layout.scene.annotations}
    assert notes["Assistant"].xanchor == "right" and notes["Assistant Axis"].xanchor == "left"  # left and right of them
    assert three.layout.scene.camera.eye.y == AXIS_CAMERA["eye"]["y"]  # x runs left to right, seen from far enough
    assert three.layout.scene.xaxis.title.text == "projection on the Assistant Axis"
    for layout in ("axis", "pca", "umap"):
        f = persona_map(space(), layout, 2)
        assert f.layout.xaxis.title.text and f.layout.yaxis.title.text and f.layout.title.text, layout
    for f in (layer_figures(space()), variance_figure({**space(), "layer": 2})):
        assert f.layout.xaxis.title.text and f.layout.yaxis.title.text and f.layout.title.text
    report = {"settings": [{"setting": "uncapped", "kl": 0.0, "adoption": 0.5}, {"setting": "p75", "kl": 0.01, "adoption": 0.2}]}
    f = tradeoff_figure(report)
    assert f.layout.xaxis.title.text and f.layout.yaxis.title.text and f.layout.title.text


def test_space_page_says_why_umap_has_no_layer(tiny_space) -> None:  # type: ignore[no-untyped-def]
    at = page("space", FakeClient()).run()
    assert at.slider(key="space_layer") is not None
    at.radio(key="space_layout").set_value("UMAP").run()
    assert not at.exception
    assert not [s for s in at.slider if s.key == "space_layer"]
    assert any("no layer" in c.value and "UMAP" in c.value for c in at.caption)


def test_transcripts_page_draws_the_strip_on_one_scale(tiny_space) -> None:  # type: ignore[no-untyped-def]
    at = page("transcripts", FakeClient()).run()
    conversation = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a"},
                    {"role": "user", "content": "more"}, {"role": "assistant", "content": "b"}]  # fmt: skip
    at.file_uploader(key="transcript_files").set_value([("t.json", json.dumps(conversation).encode(), "application/json")]).run()
    assert not at.exception, at.exception
    assert any("one scale for every turn" in c.value for c in at.caption)
