"""Sessions and their turns: create, list, read and delete a session; post a message (a turn, or a capped and an
uncapped one to compare), stop the session's running turn or cancel its queued ones, undo its last exchange."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query

from backend.worker.engine import Engine
from backend.worker.jobs import Job
from backend.worker.schemas import MessageAccepted, NewMessage, NewSession, Problem
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
    session["queue"] = queue_positions(state.engine, sid) if state.engine else {}
    return session


@router.delete("/sessions/{sid}")
def delete_session(state: State, sid: SessionId) -> dict[str, Any]:
    state.session_or_404(sid)
    if state.engine is not None:
        state.engine.stop(sid)
    state.db.delete_session(sid)
    return {"deleted": sid}


@router.post("/sessions/{sid}/messages", status_code=202, responses={400: {"model": Problem, "description": "a blank message"}})
def post_message(state: State, sid: SessionId, body: NewMessage) -> MessageAccepted:
    engine = state.need_engine()
    state.session_or_404(sid)
    if not body.content.strip():  # an empty user turn the model would answer anyway
        raise HTTPException(status_code=400, detail="the message is blank (only spaces or line breaks): nothing was sent")
    user_turn, turns, variants, position = engine.submit(sid, body.content, body.compare)
    return MessageAccepted(user_turn=user_turn, assistant_turns=turns, variants=variants, queue_position=position)


@router.post("/sessions/{sid}/stop")
def stop(
    state: State,
    sid: SessionId,
    turns: Annotated[
        Literal["all", "running", "queued"],
        Query(
            description="what to stop: the running turn and the queued ones (all), only the running one, or only the queued ones"
        ),
    ] = "all",
) -> dict[str, Any]:
    engine = state.need_engine()
    state.session_or_404(sid)
    if turns == "all":
        return {"stopped": engine.stop(sid)}
    return {"stopped": stop_running(engine, sid) if turns == "running" else cancel_queued(engine, sid)}


@router.post("/sessions/{sid}/undo")
def undo(state: State, sid: SessionId) -> dict[str, Any]:
    engine = state.need_engine()
    state.session_or_404(sid)
    return {"undone": engine.undo(sid)}


def _with_partner(job: Job) -> list[Job]:
    return [job] + ([job.partner] if job.partner is not None else [])


def queue_positions(engine: Engine, sid: str) -> dict[str, int]:
    """The session's queued turns (as strings, JSON's keys) -> how many jobs are ahead of each (the running ones
    included), as ``queue_position`` counts them when a message is posted."""
    with engine.cond:
        ahead = len(engine.running_jobs())  # the rows of the running batch, or the one running turn
        return {
            str(j.turn_id): ahead + i for i, job in enumerate(engine.jobs) if job.session_id == sid for j in _with_partner(job)
        }


def stop_running(engine: Engine, sid: str) -> list[int]:
    """Stop the session's running turn (it ends ``stopped`` at its next step, with its tokens); queued ones still run.
    A session has at most one running job (its compare partner beside it), whether it runs alone or as rows of the
    shared batch."""
    with engine.cond:
        jobs = [job for job in engine.running_jobs() if job.session_id == sid]  # partners included
        for job in jobs:
            job.stop.set()
    for job in jobs:  # taken from the queue but not started yet: it would end without a word
        engine.db.finish_turn(job.turn_id, "stopped", {"reason": "stopped before it started", "n_tokens": 0}, only_if="queued")
    return [job.turn_id for job in jobs]


def cancel_queued(engine: Engine, sid: str) -> list[int]:
    """Drop the session's queued turns (each ends ``stopped`` before it started); the running one goes on."""
    with engine.cond:
        dropped = [job for job in engine.jobs if job.session_id == sid]
        for job in dropped:
            engine.jobs.remove(job)
    cancelled = [j.turn_id for job in dropped for j in _with_partner(job)]
    for tid in cancelled:
        engine.db.finish_turn(tid, "stopped", {"reason": "cancelled before it started", "n_tokens": 0}, only_if="queued")
    return cancelled
