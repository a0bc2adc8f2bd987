"""Streamlit pages run headless (AppTest), with an optional scripted worker client."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest

from tests.helpers.worker_harness import ROOT

VIEWS = ROOT / "app" / "views"


def page(name: str, client: object | None = None) -> AppTest:
    at = AppTest.from_file(str(VIEWS / f"{name}.py"), default_timeout=60)
    if client is not None:
        at.session_state["_client"] = client
    return at


def texts(at: AppTest) -> str:
    return "\n".join(m.value for m in at.markdown) + "\n".join(c.value for c in at.caption)
