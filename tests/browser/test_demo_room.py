"""The demo in a room (issue #23), in Chromium: a recorded run replays with no model worker at all, labelled as a
recording; the toolbar keeps what a viewer needs (no Deploy, no Stop in the header)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from app import demo_recordings as rec
from tests.helpers.browser import screenshot, wait_until
from tests.helpers.worker_harness import ROOT, free_port

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def app_alone() -> Iterator[str]:
    """The Streamlit app as `make run` starts it, with no worker behind it (the worker's port is closed)."""
    port = free_port()
    env = dict(
        os.environ, PERSONA_SPACE_WORKER_URL=f"http://127.0.0.1:{free_port()}", PYTHONPATH=str(ROOT),
        PERSONA_SPACE_SPACE=str(ROOT / "cached_activations" / "smollm2-135m"),
        PERSONA_SPACE_RECORDINGS=tempfile.mkdtemp(prefix="persona-space-recordings-"),  # the shipped one only
    )  # fmt: skip
    log = Path(tempfile.mkdtemp()) / "app.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app" / "main.py"), "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true"],
        cwd=ROOT, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2):
                    break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError(log.read_text()[-3000:]) from None
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        proc.wait(20)


def test_a_recorded_run_replays_with_no_model_and_says_it_is_a_recording(app_alone, browser) -> None:  # type: ignore[no-untyped-def]
    shipped, problems = rec.find(Path(tempfile.mkdtemp()))
    assert shipped and not problems, problems  # the app ships a recording of its own
    recording = shipped[0]
    first_reply = next(e["data"]["text"] for e in recording.events if e["type"] == "token" and e["data"].get("text", "").strip())
    page = browser.new_page()
    page.goto(f"{app_alone}/demo")
    page.get_by_text("Recorded runs").first.wait_for(timeout=60_000)
    page.get_by_role("button", name="Replay").wait_for(timeout=60_000)
    assert page.get_by_role("button", name="Start").first.is_disabled()  # a live run needs the worker
    page.get_by_role("slider", name="Replay speed").focus()
    for _ in range(3):
        page.keyboard.press("ArrowRight")  # 1x -> 8x
    speed = page.locator("[data-testid='stSlider']").filter(has_text="Replay speed")
    wait_until(lambda: "8×" in speed.inner_text(), timeout=30)
    time.sleep(1)  # the page's run for the new speed ends before the click
    page.get_by_role("button", name="Replay").click()
    body = lambda: str(page.inner_text("body"))  # noqa: E731
    wait_until(lambda: "Recording, not live" in body(), timeout=60)
    assert recording.model in body()
    wait_until(lambda: "replay at 8×" in body(), timeout=60)
    wait_until(lambda: first_reply.strip() in body(), timeout=120)  # the recorded replies appear, as they were timed
    screenshot(page, "demo-recording")
    page.close()


def test_the_toolbar_has_no_deploy_and_no_stop(app_alone, browser) -> None:  # type: ignore[no-untyped-def]
    page = browser.new_page()
    page.goto(f"{app_alone}/demo")
    page.get_by_text("Recorded runs").first.wait_for(timeout=60_000)
    header = page.locator("header")
    seen = set()
    for _ in range(20):  # the page's own reruns (its live parts refresh every half second) would show "Stop"
        seen.add(header.inner_text())
        time.sleep(0.25)
    assert not [t for t in seen if "Deploy" in t or "Stop" in t], seen
    assert page.get_by_role("button", name="Deploy").count() == 0
    # the running indicator shows only while a run takes long (under load, it offered "Stop"): the page's rule hides
    # its buttons, checked on an indicator of the same shape
    hidden = page.evaluate(
        """() => { const w = document.createElement('div'); w.setAttribute('data-testid', 'stStatusWidget');
                   const b = document.createElement('button'); b.textContent = 'Stop'; w.appendChild(b);
                   document.querySelector('header').appendChild(w);
                   const d = getComputedStyle(b).display; w.remove(); return d; }"""
    )
    assert hidden == "none"
    page.close()
