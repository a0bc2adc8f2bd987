"""The Traits page in Chromium: the ranked bar chart draws one bar (and one name) per trait the worker lists, and
the page asks nothing of any machine but ours.

The ``servers`` fixture serves the shipped space (``cached_activations/smollm2-135m``), or the space named by
``PERSONA_SPACE_SPACE`` in the test's environment (the launcher passes it on), e.g. a copy of the shipped space
with traits. The page's message for a space without traits is tested headless (tests/unit/test_traits_app.py)."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.helpers.browser import NetworkLog, screenshot, wait_until

pytestmark = pytest.mark.timeout(900)

BAR_CHART = """() => {
    const g = Array.from(document.querySelectorAll('.js-plotly-plot')).find(
        g => Array.from(g.querySelectorAll('.gtitle')).some(e => e.textContent.includes('by cosine with the Assistant Axis')));
    if (!g) return null;
    return {bars: g.querySelectorAll('.barlayer .point').length, names: g.querySelectorAll('.ytick text').length,
            data: g.data ? g.data.reduce((n, t) => n + (t.x ? t.x.length : 0), 0) : 0};
}"""


def worker_traits(servers: Any) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"{servers.worker_url}/traits") as response:
            return dict(json.loads(response.read()))
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def test_the_traits_page_draws_every_trait_offline(servers, browser) -> None:  # type: ignore[no-untyped-def]
    servers.wait_worker()
    listed = worker_traits(servers)
    assert listed is not None, "the served space has no traits (the shipped one has 240; build-traits adds them)"
    n = len(listed["traits"])
    assert n >= 230 if "PERSONA_SPACE_SPACE" not in os.environ else n >= 1
    page = browser.new_page()
    log = NetworkLog(page)
    page.goto(f"{servers.url}/traits")
    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=120_000)
    drawn = wait_until(lambda: (c := page.evaluate(BAR_CHART)) and c["bars"] == n and c, timeout=120)
    assert drawn == {"bars": n, "names": n, "data": n}, drawn
    page.locator("text=Assistant end →").first.wait_for(timeout=30_000)
    page.locator("text=← role-play end").first.wait_for(timeout=30_000)
    time.sleep(2)  # let late requests (favicons, fonts) happen
    screenshot(page, "traits-page")
    own = {f"127.0.0.1:{servers.app_port}", f"127.0.0.1:{servers.worker_port}"}
    assert log.urls and log.hosts() <= own, sorted(log.hosts() - own)
    page.close()
