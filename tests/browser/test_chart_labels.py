"""Labels that collided, measured where they are drawn: the bounding boxes of plotly's SVG text in Chromium.

The pairs the issue found overlapping: "Assistant" and "Assistant Axis" at the star (axis-first map, 2D and 3D),
a control-change label over the per-token chart's title, the x-axis title "token" under the legend.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers.browser import cap_toggle, open_chat, reply_text, say, screenshot, wait_until

pytestmark = pytest.mark.timeout(900)

# every text plotly draws as SVG: annotations (subplot titles, reference-line and control labels, 3D scene labels),
# axis titles, legend entries, the figure title, and text drawn at points
LABELS = (
    ".annotation-text, .g-xtitle text, .g-x2title text, .g-ytitle text, .g-y2title text, .legendtext, .gtitle, .textpoint text"
)
BOXES = """([index, sel]) => {
    const g = document.querySelectorAll('.js-plotly-plot')[index];
    if (!g) return [];
    return Array.from(g.querySelectorAll(sel)).map(e => {
        const b = e.getBoundingClientRect();
        return {text: e.textContent, cls: e.getAttribute('class') || e.parentNode.getAttribute('class') || '',
                x: b.x, y: b.y, w: b.width, h: b.height};
    }).filter(b => b.text.trim() && b.w > 0 && b.h > 0);
}"""
CHART_INDEX = """(needle) => Array.from(document.querySelectorAll('.js-plotly-plot')).findIndex(
    g => Array.from(g.querySelectorAll('.annotation-text, .gtitle')).some(e => e.textContent.includes(needle)))"""


def boxes(page: Any, index: int) -> list[dict[str, Any]]:
    return list(page.evaluate(BOXES, [index, LABELS]))


def overlap(a: dict[str, Any], b: dict[str, Any], slack: float = 1.0) -> bool:
    """Whether two boxes share more than ``slack`` pixels both ways."""
    dx = min(a["x"] + a["w"], b["x"] + b["w"]) - max(a["x"], b["x"])
    dy = min(a["y"] + a["h"], b["y"] + b["h"]) - max(a["y"], b["y"])
    return dx > slack and dy > slack


def one(found: list[dict[str, Any]], text: str, exact: bool = True) -> dict[str, Any] | None:
    hits = [b for b in found if (b["text"] == text if exact else text in b["text"])]
    return hits[0] if hits else None


def star_labels(page: Any, scene: bool = False) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The boxes of "Assistant" (at the star) and "Assistant Axis" (at the arrow head) on the persona map, the page's
    first chart (legend entries left out); with ``scene``, only once they are 3D scene annotations."""
    found = [b for b in boxes(page, 0) if "legendtext" not in b["cls"]]
    star, axis = one(found, "Assistant"), one(found, "Assistant Axis")
    if scene and not (star and "annotation-text" in star["cls"]):
        return None
    return (star, axis) if star and axis else None


def test_the_assistant_and_the_axis_labels_stay_apart_in_2d_and_3d(servers, browser) -> None:  # type: ignore[no-untyped-def]
    page = browser.new_page()
    page.goto(servers.url)  # the Persona space page, axis first, 2D
    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=60_000)
    star, axis = wait_until(lambda: star_labels(page), timeout=60)
    assert not overlap(star, axis), (star, axis)
    found = boxes(page, 0)
    xtitle = one(found, "projection on the Assistant Axis")
    assert xtitle is not None and not any(overlap(xtitle, b) for b in found if "legendtext" in b["cls"])
    page.get_by_text("3D", exact=True).click()
    # in 3D the two labels are scene annotations (page text); drawn as WebGL text they could not be kept apart
    star, axis = wait_until(lambda: star_labels(page, scene=True), timeout=60)
    assert not overlap(star, axis), (star, axis)
    screenshot(page, "chart-labels-3d")
    page.close()


def test_control_labels_sit_under_the_title_and_the_legend_under_the_token_title(servers, browser) -> None:  # type: ignore[no-untyped-def]
    page = open_chat(servers, browser)
    say(page, "Write a long poem about the sea and the wind.")
    wait_until(lambda: "…" in reply_text(page) and len(reply_text(page)) > 30, timeout=120)
    index = wait_until(lambda: page.evaluate(CHART_INDEX, "projection per token") + 1, timeout=60) - 1
    assert any("cap is off" in b["text"] for b in boxes(page, index))  # the capped-layer panel says why it is empty
    cap_toggle(page).click(force=True)
    mark = wait_until(lambda: one(boxes(page, index), "from token", exact=False), timeout=90)
    found = boxes(page, index)
    assert not any("cap is off" in b["text"] for b in found)  # the panel follows the cap just switched on
    titles = [b for b in found if "projection per token" in b["text"] or "First capped layer" in b["text"]]
    assert len(titles) == 2, found
    for other in found:  # the subplot titles, the reference-line labels, the legend: the control label covers none
        assert other["text"] == mark["text"] or not overlap(mark, other), (mark, other)
    monitor = next(b for b in titles if "projection per token" in b["text"])
    assert mark["y"] >= monitor["y"] + monitor["h"] - 1, (mark, monitor)  # inside the panel, under its title
    token = one(found, "token")
    legend = [b for b in found if "legendtext" in b["cls"]]
    assert token is not None and legend, [(b["text"], b["cls"]) for b in found]
    for entry in legend:  # the legend wholly below the x title, not over it
        assert not overlap(token, entry) and entry["y"] >= token["y"] + token["h"] - 0.5, (token, entry)
    screenshot(page, "chart-labels-live")
    page.close()
