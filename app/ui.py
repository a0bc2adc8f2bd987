"""Widgets and state shared by every page: the worker client, the space, the status line, safe text."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import streamlit as st

from app.client import WorkerClient, WorkerError, WorkerUnavailable

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SPACE = ROOT / "cached_activations" / "smollm2-135m"
SCENARIOS = ROOT / "assets" / "scenarios"
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$])")


def plain(text: str) -> str:
    """Model text for ``st.markdown``: every markdown character escaped, so it shows as typed, never as markup."""
    return _MD_SPECIAL.sub(r"\\\1", text or "")


def client() -> Any:
    """The worker client (tests put a scripted one in ``st.session_state['_client']``)."""
    if "_client" not in st.session_state:
        st.session_state["_client"] = _shared_client()
    return st.session_state["_client"]


@st.cache_resource
def _shared_client() -> WorkerClient:
    return WorkerClient()


def space_path() -> Path:
    return Path(os.environ.get("PERSONA_SPACE_SPACE") or DEFAULT_SPACE)


@st.cache_data(show_spinner=False)
def space_summary(path: str, layer: int | None = None) -> dict[str, Any]:
    """The space, read from disk (works while the worker is down)."""
    from backend.view.space import read_space, summary

    return summary(read_space(path), layer)


def load_space(layer: int | None = None) -> dict[str, Any] | None:
    from backend.view.space import SpaceViewError

    try:
        return space_summary(str(space_path()), layer)
    except SpaceViewError as exc:
        st.error(f"Cannot show the persona space: {exc}")
        return None


def read_health() -> dict[str, Any] | str:
    """The worker's ``/health``, or why it cannot be read."""
    try:
        return dict(client().health())
    except WorkerUnavailable as exc:
        return str(exc)


def status_line(health: dict[str, Any] | str) -> tuple[str, str]:
    """(level, text) of the sidebar's worker line: ``success``, ``warning`` or ``error``."""
    if isinstance(health, str):
        return "warning", f"Worker not reachable yet (`make run` starts it; this line updates by itself): {health}"
    if health.get("error"):
        return "error", f"Worker failed: {health['error']}"
    if not health.get("ready"):
        return "warning", f"Worker starting: {health.get('phase') or health.get('status') or 'starting'}…"
    queue = int(health.get("queue_length") or 0)
    busy = f"busy: {queue} turn{'s' if queue != 1 else ''} running or queued" if queue else "idle"
    phase = f" · {health['phase']}" if health.get("phase") not in (None, "ready") else ""
    step = str(health.get("decode_step") or "")
    if step.startswith("compiling"):  # tokens already stream, eagerly; they speed up once the step is compiled
        phase += " · compiling the decode step (faster tokens soon)"
    if health.get("precision") == "int8":
        phase += " · int8 weights (a faster decode step; projections approximate float32's)"
    return "success", f"Worker ready: {health.get('model_name', health.get('model'))} on {health.get('device')} · {busy}{phase}"


@st.fragment(run_every=2.0)
def _status_panel(was_ready: bool) -> None:
    health = read_health()
    level, text = status_line(health)
    getattr(st, level)(text)
    ready = isinstance(health, dict) and bool(health.get("ready"))
    if ready != was_ready:  # the worker came up (or went away): redraw the whole page
        st.rerun()


def worker_status() -> dict[str, Any] | None:
    """Health of the worker, shown in the sidebar and refreshed every 2 s by itself; ``None`` until it is ready."""
    health = read_health()
    ready = isinstance(health, dict) and bool(health.get("ready"))
    with st.sidebar:
        _status_panel(ready)
    return health if ready and isinstance(health, dict) else None


def call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a client call; show the worker's message instead of a traceback when it fails."""
    try:
        return fn(*args, **kwargs)
    except (WorkerUnavailable, WorkerError) as exc:
        st.error(str(exc))
        return None
