"""Real-browser helpers: Debian's Chromium driven by Playwright (never `playwright install`), and `make run`'s
servers started on free ports."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from tests.helpers.worker_harness import ROOT, free_port

CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic",
]  # fmt: skip
ARTIFACTS = ROOT / "artifacts" / "screenshots"
BOX = "Say something to the model"  # the live chat's message box (its placeholder)
T = TypeVar("T")


def chromium_path() -> str:
    for candidate in ("/usr/bin/chromium", "/usr/bin/chromium-browser", shutil.which("chromium") or ""):
        if candidate and os.path.exists(candidate):
            return candidate
    raise RuntimeError("Debian's chromium is not installed: `apt-get install chromium` (make test does it)")


def launch_browser(playwright: Any) -> Any:
    profile = tempfile.mkdtemp(prefix="persona-space-chromium-")
    return playwright.chromium.launch_persistent_context(
        profile, executable_path=chromium_path(), args=CHROMIUM_FLAGS, headless=True, viewport={"width": 1400, "height": 1000}
    )


class Servers:
    """`python -m app.launch` (what `make run` starts) on free ports."""

    def __init__(self, model: str = "smollm2-135m", space: Path | None = None, compile: bool = False) -> None:
        self.worker_port, self.app_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.app_port}"
        self.worker_url = f"http://127.0.0.1:{self.worker_port}"
        env = dict(
            os.environ, PERSONA_SPACE_WORKER_PORT=str(self.worker_port), PERSONA_SPACE_APP_PORT=str(self.app_port),
            PERSONA_SPACE_MODEL=model, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1",
            PERSONA_SPACE_COMPILE="1" if compile else "0",  # a background compile would compete with the browser for 2 cores
        )  # fmt: skip
        if space is not None:
            env["PERSONA_SPACE_SPACE"] = str(space)
        self.log = Path(tempfile.mkdtemp()) / "launch.log"
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.launch"], cwd=ROOT, env=env, stdout=open(self.log, "w"), stderr=subprocess.STDOUT
        )

    def wait(self, url: str, predicate: Any = lambda body: True, timeout: float = 240) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"launcher exited: {self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if predicate(response.read()):
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{url} not ready: {self.log.read_text()[-3000:]}")

    def wait_app(self) -> None:
        self.wait(f"{self.url}/_stcore/health")

    def wait_worker(self) -> None:
        self.wait(f"{self.worker_url}/health", lambda body: b'"ready":true' in body)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # the launcher stops both servers
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def plot_points(page: Any, index: int = 0) -> int:
    """Number of points in the first trace of the ``index``-th plotly chart on the page."""
    return int(
        page.evaluate(
            f"() => {{ const g = document.querySelectorAll('.js-plotly-plot')[{index}]; return g && g.data ? g.data[0].x.length : 0; }}"
        )
    )


def screenshot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def trace(page: Any, name: str) -> dict[str, list[Any]] | None:
    """The x and y of the first plotly trace called ``name`` on the page (None when there is none)."""
    found = page.evaluate(
        """(name) => {
            for (const g of document.querySelectorAll('.js-plotly-plot')) {
                for (const t of (g.data || [])) {
                    if (t.name === name) return {x: Array.from(t.x || []), y: Array.from(t.y || [])};
                }
            }
            return null;
        }""",
        name,
    )
    return found if isinstance(found, dict) else None


class NetworkLog:
    """Every address a page contacts (HTTP requests and websockets), recorded from the moment it is attached."""

    def __init__(self, page: Any) -> None:
        self.urls: list[str] = []
        page.on("request", lambda request: self.urls.append(str(request.url)))
        page.on("websocket", lambda ws: self.urls.append(str(ws.url)))

    def hosts(self) -> set[str]:
        from urllib.parse import urlsplit

        return {urlsplit(u).netloc for u in self.urls if urlsplit(u).scheme not in ("data", "blob", "about")}


def wait_until(fn: Callable[[], T], timeout: float = 120, step: float = 0.25) -> T:
    """``fn()`` once it is truthy; TimeoutError after ``timeout`` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(step)
    raise TimeoutError("condition not met")


def open_chat(servers: Servers, browser: Any, path: str = "/chat") -> Any:
    """A new page on the live chat once the worker is ready, its first run done (the message box is live)."""
    servers.wait_worker()
    page = browser.new_page()
    page.goto(f"{servers.url}{path}")
    page.get_by_placeholder(BOX).wait_for(timeout=60_000)
    time.sleep(1)  # let the page's first run finish before typing
    return page


def say(page: Any, text: str) -> None:
    box = page.get_by_placeholder(BOX)
    box.fill(text)
    box.press("Enter")


def reply_text(page: Any) -> str:
    return str(page.locator("[data-testid='stChatMessage']").last.inner_text())


def session_of(page: Any) -> str:
    return str(page.url.split("session=")[1].split("&")[0])


def slider(page: Any, label: str) -> Any:
    return page.locator(f"input[type=range][aria-label^='{label}']")


def slider_value(page: Any, label: str) -> float:
    return float(slider(page, label).input_value())


def cap_toggle(page: Any) -> Any:
    return page.locator("label:has-text('Cap on') input")


def worker_get(servers: Servers, path: str) -> Any:
    with urllib.request.urlopen(f"{servers.worker_url}{path}") as response:
        return json.loads(response.read())


def worker_events(servers: Servers, sid: str) -> list[dict[str, Any]]:
    return list(worker_get(servers, f"/sessions/{sid}/events")["events"])


def worker_controls(servers: Servers, sid: str) -> dict[str, Any]:
    return dict(worker_get(servers, f"/sessions/{sid}/controls")["controls"])
