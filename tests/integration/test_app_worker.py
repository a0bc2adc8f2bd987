"""A Streamlit page headless (AppTest) against the real worker in a subprocess."""

from __future__ import annotations

import time

from tests.helpers.app_pages import page


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
