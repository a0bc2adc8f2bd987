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
    from backend.space_view import read_space, summary

    return summary(read_space(path), layer)


def load_space(layer: int | None = None) -> dict[str, Any] | None:
    from backend.space_view import SpaceViewError

    try:
        return space_summary(str(space_path()), layer)
    except SpaceViewError as exc:
        st.error(f"Cannot show the persona space: {exc}")
        return None


def worker_status() -> dict[str, Any] | None:
    """Health of the worker, shown in the sidebar; ``None`` when it is down or still loading."""
    try:
        health = client().health()
    except WorkerUnavailable as exc:
        st.sidebar.error(f"Worker down: {exc}")
        return None
    if not health.get("ready"):
        detail = health.get("error") or health.get("status", "starting")
        st.sidebar.warning(f"Worker not ready: {detail}")
        return None
    st.sidebar.success(
        f"Worker ready: {health.get('model_name', health.get('model'))} on {health.get('device')}, queue {health.get('queue_length', 0)}"
    )
    return health


def call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a client call; show the worker's message instead of a traceback when it fails."""
    try:
        return fn(*args, **kwargs)
    except (WorkerUnavailable, WorkerError) as exc:
        st.error(str(exc))
        return None
