"""End to end in a real browser against `make run`'s servers (embedded model, shipped space).

Screenshots of each page land in artifacts/screenshots/.
"""

from __future__ import annotations

import time

import pytest

from backend.space_view import read_space
from tests.browser import Servers, launch_browser, screenshot
from tests.worker_harness import ROOT

SHIPPED = ROOT / "cached_activations" / "smollm2-135m"


@pytest.fixture(scope="module")
def servers():  # type: ignore[no-untyped-def]
    s = Servers()
    try:
        s.wait_app()
        yield s
    finally:
        s.close()


@pytest.fixture(scope="module")
def browser():  # type: ignore[no-untyped-def]
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = launch_browser(p)
        yield context
        context.close()


def reply_text(page) -> str:  # type: ignore[no-untyped-def]
    return str(page.locator("[data-testid='stChatMessage']").last.inner_text())


def wait_until(fn, timeout: float = 120, step: float = 0.25):  # type: ignore[no-untyped-def]
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(step)
    raise TimeoutError("condition not met")


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
    servers.wait_worker()
    page = browser.new_page()
    page.goto(f"{servers.url}/chat")
    box = page.get_by_placeholder("Say something to the model")
    box.wait_for(timeout=60_000)
    time.sleep(1)
    box.fill("Tell me a long story about a lighthouse keeper.")
    box.press("Enter")
    wait_until(lambda: "…" in reply_text(page) and len(reply_text(page)) > 20, timeout=90)
    page.locator("text=Per-token projection").first.wait_for(timeout=30_000)
    # drag the cap threshold while the reply is streaming
    page.locator("input[type=range][aria-label^='Cap threshold']").focus()
    for _ in range(10):
        page.keyboard.press("ArrowLeft")
    page.get_by_text("Cap on").click()
    streamed = reply_text(page)
    wait_until(
        lambda: (
            "…" not in reply_text(page) and "projection" in page.locator("[data-testid='stCaptionContainer']").last.inner_text()
        ),
        timeout=120,
    )
    final = reply_text(page)
    assert "(stopped)" not in final and len(final) > len(streamed)  # the reply kept streaming
    assert page.locator("text=controls changed").count() >= 1  # the change is marked on the per-token chart
    screenshot(page, "live-chat")
    page.close()


def test_compare_mode_shows_two_replies(servers, browser) -> None:  # type: ignore[no-untyped-def]
    servers.wait_worker()
    page = browser.new_page()
    page.goto(f"{servers.url}/chat")
    page.get_by_placeholder("Say something to the model").wait_for(timeout=60_000)
    page.get_by_text("Compare capped vs uncapped").click()
    time.sleep(1)
    page.get_by_placeholder("Say something to the model").fill("Who are you, really?")
    page.get_by_placeholder("Say something to the model").press("Enter")
    wait_until(
        lambda: page.locator("text=turn 1 · uncapped").count() == 1 and page.locator("text=turn 1 · capped").count() == 1,
        timeout=120,
    )
    wait_until(lambda: page.locator("text=nearest:").count() >= 2, timeout=180)
    screenshot(page, "compare")
    page.close()


def test_transcripts_and_demo_pages_render(servers, browser) -> None:  # type: ignore[no-untyped-def]
    page = browser.new_page()
    page.goto(f"{servers.url}/transcripts")
    page.locator("text=Conversation (JSON)").wait_for(timeout=60_000)
    screenshot(page, "transcripts")
    page.goto(f"{servers.url}/demo")
    page.locator("text=Fixing a Python Script").wait_for(timeout=60_000)
    screenshot(page, "demo")
    page.close()
