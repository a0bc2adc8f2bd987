"""A session out and in: ``GET /sessions/{sid}/export`` (the session, every turn, every event) and
``POST /sessions/import`` (such an export, checked and written under a new id by :mod:`backend.worker.importer`).

The export is written here, as compact JSON with non-ASCII text escaped: the form whose size the import bounds
before it stores a session (:func:`backend.worker.db_import.export_bytes`), so an export always fits the import's
body limit and imports again."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError

from backend.worker.importer import ImportCrashed, Refused
from backend.worker.state import Imports, SessionId, State

router = APIRouter()


EXPORTED: dict[int | str, dict[str, Any]] = {
    200: {"description": "the session export", "content": {"application/json": {"schema": {"type": "object"}}}}
}


@router.get("/sessions/{sid}/export", response_class=Response, responses=EXPORTED)
def export_session(state: State, sid: SessionId) -> Response:
    session = state.session_or_404(sid)
    export = {
        "format": "persona-space-session", "version": 1, "model": state.model_spec, "space": state.space_path,
        "session": session, "turns": state.db.turns(sid, include_undone=True), "events": state.db.events(sid, 0, 10**9),
    }  # fmt: skip
    body = json.dumps(export, allow_nan=False, separators=(",", ":")).encode("ascii")
    return Response(body, media_type="application/json")


@router.post(
    "/sessions/import",
    status_code=201,
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "a session export (GET /sessions/{sid}/export)",
            "content": {"application/json": {"schema": {"type": "object", "additionalProperties": True}}},
        }
    },
)
async def import_session(request: Request, state: State, importer: Imports) -> dict[str, Any]:
    # the raw body (bounded by BodyLimit as it arrives) goes to the importer undecoded: a large one is decoded,
    # checked and written by a child process, so this process never holds the interpreter lock for it
    engine = state.need_engine()
    raw = await request.body()
    window = (int(engine.cap_window[0]), int(engine.cap_window[1]))
    try:
        sid = await importer.run(raw, request.headers.get("content-type"), engine.n_layers, window)
    except Refused as exc:
        if exc.loc is not None:  # what FastAPI answers when it decodes a body itself
            raise RequestValidationError([{"type": exc.kind, "loc": exc.loc, "msg": exc.message, "input": None}]) from exc
        raise HTTPException(status_code=exc.status, detail=exc.message) from exc
    except ImportCrashed as exc:
        raise HTTPException(status_code=503, detail=str(exc)) from exc
    return await run_in_threadpool(state.session_or_404, sid)
