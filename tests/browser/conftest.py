"""The browser tests' servers and Chromium, shared by every file of the folder (one start for the whole run)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers.browser import Servers, launch_browser


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    """`make run`'s servers (the embedded model, the shipped space) on free ports, on the suite's scratch cache."""
    s = Servers()
    try:
        s.wait_app()
        yield s
    finally:
        s.close()


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = launch_browser(p)
        yield context
        context.close()
