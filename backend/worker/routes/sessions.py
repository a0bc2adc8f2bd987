"""Sessions and their turns: create, list, read and delete a session; post a message (a turn, or a capped and an
uncapped one to compare), stop the session's turns, undo its last exchange."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from backend.worker.schemas import MessageAccepted, NewMessage, NewSession
from backend.worker.state import SessionId, State

router = APIRouter()


@router.post("/sessions", status_code=201)
def create_session(state: State, body: NewSession | None = None) -> dict[str, Any]:
    engine = state.need_engine()
    body = body or NewSession()
    controls = engine.validate_controls(body.controls or engine.default_controls())
    sid = state.db.create_session(body.system, controls.model_dump(mode="json"), body.title)
    return state.session_or_404(sid)


@router.get("/sessions")
def list_sessions(state: State) -> dict[str, Any]:
    return {"sessions": state.db.sessions()}


@router.get("/sessions/{sid}")
def get_session(state: State, sid: SessionId) -> dict[str, Any]:
    session = state.session_or_404(sid)
    session["turns"] = state.db.turns(sid)
    session["busy"] = state.engine.busy(sid) if state.engine else False
    return session


@router.delete("/sessions/{sid}")
def delete_session(state: State, sid: SessionId) -> dict[str, Any]:
    state.session_or_404(sid)
    if state.engine is not None:
        state.engine.stop(sid)
    state.db.delete_session(sid)
    return {"deleted": sid}


@router.post("/sessions/{sid}/messages", status_code=202)
def post_message(state: State, sid: SessionId, body: NewMessage) -> MessageAccepted:
    engine = state.need_engine()
    state.session_or_404(sid)
    user_turn, turns, variants, position = engine.submit(sid, body.content, body.compare)
    return MessageAccepted(user_turn=user_turn, assistant_turns=turns, variants=variants, queue_position=position)


@router.post("/sessions/{sid}/stop")
def stop(state: State, sid: SessionId) -> dict[str, Any]:
    engine = state.need_engine()
    state.session_or_404(sid)
    return {"stopped": engine.stop(sid)}


@router.post("/sessions/{sid}/undo")
def undo(state: State, sid: SessionId) -> dict[str, Any]:
    engine = state.need_engine()
    state.session_or_404(sid)
    return {"undone": engine.undo(sid)}
