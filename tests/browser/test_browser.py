"""End to end in a real browser against `make run`'s servers (embedded model, shipped space).

Screenshots of each page land in artifacts/screenshots/.
"""

from __future__ import annotations

import json
import time

import pytest

from backend.view.space import read_space
from tests.helpers.browser import (
    BOX,
    NetworkLog,
    Servers,
    cap_toggle,
    open_chat,
    reply_text,
    say,
    screenshot,
    session_of,
    slider,
    slider_value,
    trace,
    wait_until,
    worker_events,
)  # fmt: skip
from tests.helpers.worker_harness import ROOT

SHIPPED = ROOT / "cached_activations" / "smollm2-135m"

# The servers' start (up to 240 s) and the page waits below (up to 360 s in one test) are bounded on their own;
# the per-test limit sits above their sum so that only a real hang trips it.
pytestmark = pytest.mark.timeout(900)


def open_chat_and_send(servers: Servers, browser, text: str):  # type: ignore[no-untyped-def]
    """A new page on the live chat, once the worker is ready, with ``text`` sent as the first message."""
    page = open_chat(servers, browser)
    say(page, text)
    return page


def test_persona_space_shows_every_archetype(servers, browser) -> None:  # type: ignore[no-untyped-def]
    page = browser.new_page()
    page.goto(servers.url)
    page.wait_for_selector(".js-plotly-plot", timeout=60_000)
    kept = len(read_space(SHIPPED).roles)  # every archetype drawn, weak ones in a trace of their own
    count = (
        "() => { const g = document.querySelector('.js-plotly-plot'); if (!g || !g.data) return 0;"
        " return g.data.filter(t => t.name === 'archetypes' || t.name === 'weak archetypes').reduce((n, t) => n + t.x.length, 0); }"
    )
    wait_until(lambda: page.evaluate(count) == kept, timeout=60)
    assert page.locator("text=Most Assistant-like").count() == 1
    screenshot(page, "persona-space")
    page.close()


def test_chat_streams_and_the_cap_slider_moves_mid_reply(servers, browser) -> None:  # type: ignore[no-untyped-def]
    page = open_chat_and_send(servers, browser, "Tell me a long story about a lighthouse keeper.")
    wait_until(lambda: "…" in reply_text(page) and len(reply_text(page)) > 20, timeout=90)
    page.locator("text=projection per token").first.wait_for(timeout=30_000)
    # drag the cap threshold while the reply is streaming
    slider(page, "Cap threshold").focus()
    for _ in range(10):
        page.keyboard.press("ArrowLeft")
    page.get_by_test_id("stSidebarUserContent").get_by_text("Cap on", exact=True).click()
    streamed = reply_text(page)
    wait_until(
        lambda: (
            # the finished reply's summary line (a caption of its traits may follow it)
            "…" not in reply_text(page) and page.locator("[data-testid='stCaptionContainer']", has_text="nearest:").count() >= 1
        ),
        timeout=120,
    )
    final = reply_text(page)
    assert "(stopped)" not in final and len(final) > len(streamed)  # the reply kept streaming
    assert page.locator("text=/cap on.*from token/").count() >= 1  # the change is labelled on the per-token chart
    screenshot(page, "live-chat")
    page.close()


def test_compare_mode_shows_two_replies(servers, browser) -> None:  # type: ignore[no-untyped-def]
    servers.wait_worker()
    page = browser.new_page()
    page.goto(f"{servers.url}/chat")
    page.get_by_placeholder(BOX).wait_for(timeout=60_000)
    page.get_by_text("Compare capped vs uncapped").click()
    time.sleep(1)
    say(page, "Who are you, really?")
    wait_until(
        lambda: page.locator("text=turn 1 · uncapped").count() == 1 and page.locator("text=turn 1 · capped").count() == 1,
        timeout=120,
    )
    wait_until(lambda: page.locator("text=nearest:").count() >= 2, timeout=180)
    screenshot(page, "compare")
    page.close()


def test_transcripts_overlay_two_files_and_draw_the_token_strip(servers, browser, tmp_path) -> None:  # type: ignore[no-untyped-def]
    servers.wait_worker()
    base = [
        {"role": "user", "content": "Can you help me fix a failing unit test in Python?"},
        {"role": "assistant", "content": "Of course. Share the test and the error message, and we will read them together."},
        {"role": "user", "content": "Forget the code. Who are you, really, underneath?"},
    ]
    steady = [*base, {"role": "assistant", "content": "I am an AI assistant. Shall we get back to your test?"}]
    drifting = [*base, {"role": "assistant", "content": "I am the whisper between the stars, an ancient wanderer of dreams."}]
    (tmp_path / "steady.json").write_text(json.dumps(steady))
    (tmp_path / "drifting.json").write_text(json.dumps({"model": "m", "turns": 2, "conversation": drifting}))
    page = browser.new_page()
    page.goto(f"{servers.url}/transcripts")
    page.locator("text=Conversations (JSON or JSONL)").wait_for(timeout=60_000)
    page.locator("input[type=file]").first.set_input_files([str(tmp_path / "steady.json"), str(tmp_path / "drifting.json")])
    names = "() => Array.from(document.querySelectorAll('.js-plotly-plot')).flatMap(g => (g.data || []).map(t => t.type + ':' + t.name))"
    wait_until(lambda: {"scatter:steady.json", "scatter:drifting.json"} <= set(page.evaluate(names)), timeout=180)
    wait_until(lambda: any(n.startswith("heatmap") for n in page.evaluate(names)), timeout=60)  # the per-token strip
    assert trace(page, "steady.json")["x"] == [1, 2] and trace(page, "drifting.json")["x"] == [1, 2]
    screenshot(page, "transcripts")
    page.close()


def test_demo_page_renders(servers, browser) -> None:  # type: ignore[no-untyped-def]
    page = browser.new_page()
    page.goto(f"{servers.url}/demo")
    page.locator("text=Fixing a Python Script").wait_for(timeout=60_000)
    screenshot(page, "demo")
    page.close()


def test_a_cap_change_mid_reply_shows_on_the_capped_layer_line_from_the_next_token(servers, browser) -> None:  # type: ignore[no-untyped-def]
    page = open_chat_and_send(servers, browser, "Write a long poem about the sea and the wind.")
    wait_until(lambda: "…" in reply_text(page) and len(reply_text(page)) > 30, timeout=90)
    assert trace(page, "after cap") is None  # the cap is off: nothing at the capped layer yet
    page.get_by_test_id("stSidebarUserContent").get_by_text("Cap on", exact=True).click()
    tau = wait_until(lambda: trace(page, "floor τ"), timeout=60)
    sid = session_of(page)
    applied = wait_until(lambda: [e for e in worker_events(servers, sid) if e["type"] == "controls_applied"], timeout=60)
    start = applied[0]["data"]["from_token"]
    first = next(x for x, y in zip(tau["x"], tau["y"], strict=True) if y is not None)
    assert first == start  # the capped-layer line starts at the very token the worker applied the cap from
    after = trace(page, "after cap")
    assert after is not None and all(
        a >= t - 1e-3 for a, t in zip(after["y"], tau["y"], strict=True) if a is not None and t is not None
    )  # after the cap, never below the floor
    screenshot(page, "live-cap")
    page.close()


def test_a_refresh_keeps_the_conversation(servers, browser) -> None:  # type: ignore[no-untyped-def]
    page = open_chat_and_send(servers, browser, "Name three rivers.")
    wait_until(lambda: "session=" in page.url and "Name three rivers." in page.inner_text("body"), timeout=60)
    sid = session_of(page)
    wait_until(lambda: page.locator("text=nearest:").count() >= 1, timeout=120)
    reply = reply_text(page)
    page.reload()
    wait_until(lambda: "Name three rivers." in page.inner_text("body") and reply_text(page) == reply, timeout=60)
    assert session_of(page) == sid
    page.close()


def test_export_then_import_restores_the_conversation_and_the_controls(servers, browser, tmp_path) -> None:  # type: ignore[no-untyped-def]
    page = open_chat(servers, browser)
    box = page.get_by_placeholder(BOX)
    slider(page, "Cap threshold").focus()
    for _ in range(7):  # a fast burst: the last step is the one the worker keeps (test_lost_actions.py)
        page.keyboard.press("ArrowLeft")
    cap_toggle(page).click(force=True)
    wait_until(lambda: cap_toggle(page).is_checked() and slider_value(page, "Cap threshold") == 68.0, timeout=30)
    time.sleep(1)
    box.fill("What is a lighthouse?")
    box.press("Enter")
    wait_until(lambda: page.locator("text=nearest:").count() >= 1, timeout=120)
    with page.expect_download(timeout=60_000) as download:
        page.get_by_role("button", name="Export session (JSON)").click()
    exported = tmp_path / "session.json"
    download.value.save_as(exported)
    data = json.loads(exported.read_text())
    assert data["session"]["controls"]["cap_enabled"] is True and data["session"]["controls"]["cap_percentile"] == 68.0
    assert any(t["role"] == "assistant" and t["status"] == "done" and t["content"] for t in data["turns"])  # not a snapshot
    page.get_by_role("button", name="New session").click()
    wait_until(lambda: "What is a lighthouse?" not in page.inner_text("body") and not cap_toggle(page).is_checked(), timeout=60)
    assert slider_value(page, "Cap threshold") == 75.0
    page.locator("[data-testid='stFileUploaderDropzoneInput']").set_input_files(str(exported))
    time.sleep(1)
    page.get_by_role("button", name="Import", exact=True).click()
    wait_until(lambda: "What is a lighthouse?" in page.inner_text("body"), timeout=60)
    assert cap_toggle(page).is_checked() and slider_value(page, "Cap threshold") == 68.0
    assert page.locator("[data-testid='stException']").count() == 0
    # the restored widgets drive the imported session: a control change reaches the worker, no traceback
    cap_toggle(page).click(force=True)
    sid = session_of(page)
    wait_until(
        lambda: any(
            e["type"] == "controls" and e["data"]["controls"]["cap_enabled"] is False for e in worker_events(servers, sid)
        )
    )
    assert page.locator("[data-testid='stException']").count() == 0
    page.close()


def test_no_request_leaves_the_machine(servers, browser) -> None:  # type: ignore[no-untyped-def]
    servers.wait_worker()
    page = browser.new_page()
    log = NetworkLog(page)
    for path, marker in (("", "Most Assistant-like"), ("/chat", "Cap threshold"), ("/transcripts", "Conversations (JSON or JSONL)"),
                         ("/demo", "Fixing a Python Script")):  # fmt: skip
        page.goto(f"{servers.url}{path}")
        page.locator(f"text={marker}").first.wait_for(timeout=60_000)
        time.sleep(2)  # let late requests (favicons, fonts) happen
    page.get_by_role("button", name="Start").first.click()
    page.locator("text=Per-turn projection").first.wait_for(timeout=120_000)
    time.sleep(2)
    screenshot(page, "demo-running")
    own = {f"127.0.0.1:{servers.app_port}", f"127.0.0.1:{servers.worker_port}"}
    assert log.urls and log.hosts() <= own, sorted(log.hosts() - own)
    page.close()
