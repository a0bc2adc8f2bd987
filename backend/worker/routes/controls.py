"""A session's live controls (cap, steering, sampling): read them, or patch them while a turn runs (the change
applies from the running turn's next token)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from backend.worker.schemas import Controls, ControlsPatch
from backend.worker.state import SessionId, State

router = APIRouter()


@router.patch("/sessions/{sid}/controls")
def patch_controls(state: State, sid: SessionId, body: ControlsPatch) -> dict[str, Any]:
    engine = state.need_engine()
    state.session_or_404(sid)
    controls, version = engine.patch_controls(sid, body)
    return {"controls": controls.model_dump(mode="json"), "controls_version": version}


@router.get("/sessions/{sid}/controls")
def get_controls(state: State, sid: SessionId) -> dict[str, Any]:
    session = state.session_or_404(sid)
    return {
        "controls": Controls(**session["controls"]).model_dump(mode="json"),
        "controls_version": session["controls_version"],
    }
