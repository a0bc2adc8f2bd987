"""The OpenAI-compatible chat API: ``GET /v1/models`` and ``POST /v1/chat/completions`` (streamed as server-sent
``data:`` chunks ending with ``data: [DONE]``, or answered whole).

A request becomes an API session and one turn on the engine's queue (:mod:`backend.worker.openai_turns`), read
back through the turn's stored events; the shapes are :mod:`backend.worker.openai_shapes`'. Every error of these
routes is in OpenAI's shape (:mod:`backend.worker.openai_errors`). A client that goes away stops its turn.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse

from backend.worker import openai_shapes as shapes
from backend.worker.engine import Engine
from backend.worker.jobs import ControlError
from backend.worker.openai_shapes import OpenAIError
from backend.worker.openai_turns import TurnFollower, default_controls, stop_turn, submit
from backend.worker.schemas import Controls
from backend.worker.state import Notifier, State, WorkerState

router = APIRouter(prefix="/v1")

CONTROL_KEYS = ("cap_enabled", "cap_percentile", "cap_threshold", "cap_layers", "steer_coefficient", "steer_layers", "steer_trait",
                "seed")  # fmt: skip


def _names(state: WorkerState, engine: Engine) -> list[str]:
    """The names a request may give as ``model``: the loaded model's, then the ``--model`` spec it was served with."""
    return list(dict.fromkeys([engine.loaded.info.name, state.model_spec]))


@router.get("/models")
def models(state: State) -> dict[str, Any]:
    engine = state.need_engine()
    return shapes.models_list(_names(state, engine)[:1], int(state.started))


def _sse(data: Any) -> str:
    return f"data: {json.dumps(data, allow_nan=False)}\n\n"


def _failure(end: dict[str, Any]) -> OpenAIError:
    """The error a turn that did not end ``done`` answers with."""
    if end.get("code") == "context_length_exceeded":
        return OpenAIError(400, str(end.get("error")), "messages", "context_length_exceeded")
    if end.get("status") == "error":
        return OpenAIError(500, f"the reply failed: {end.get('error', 'unknown error')}", None, "turn_failed")
    return OpenAIError(503, f"the reply was {end.get('status')}: {end.get('reason')}", None, "turn_" + str(end.get("status")))


@router.post("/chat/completions", response_model=None)
async def chat_completions(request: Request, state: State, notifier: Notifier) -> Response:
    try:
        body = json.loads(await request.body())
    except ValueError as exc:
        raise OpenAIError(400, f"the request body is not JSON: {exc}", None, "invalid_json") from exc
    req = shapes.parse_request(body)
    engine = state.need_engine()
    names = _names(state, engine)
    if req.model not in names:
        raise OpenAIError(
            404, f"The model {req.model!r} does not exist: this server serves {names[0]!r}", "model", "model_not_found"
        )
    try:
        controls = engine.validate_controls(shapes.to_controls(req, default_controls(engine)))
    except ControlError as exc:
        raise OpenAIError(400, str(exc), "persona_space", "invalid_value") from exc
    sid, turn = await run_in_threadpool(submit, engine, req, controls)
    follower = TurnFollower(state.db, notifier, sid, turn)
    ident, created, model = shapes.completion_id(), shapes.now(), names[0]
    # until the turn starts (it may wait in the queue) or ends before it could
    if not await _follow(request, engine, follower, lambda: follower.start is not None or follower.end is not None):
        return Response(status_code=499)  # nobody reads it: the client went away
    if follower.start is None and follower.end is not None:
        raise _failure(follower.end)
    if req.stream:
        include_usage = req.stream_options is not None and req.stream_options.include_usage
        stream = _stream(request, state, engine, follower, req, (ident, created, model), controls, include_usage)
        return StreamingResponse(
            stream, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
    if not await _follow(request, engine, follower, lambda: follower.end is not None):
        return Response(status_code=499)
    end = follower.end or {}
    if end.get("status") != "done":
        raise _failure(end)
    text = await _content(state, turn)
    extension = dict(shapes.telemetry(follower.tokens), **_closing(end, sid, turn, controls))
    counts = shapes.usage(int(end.get("prompt_tokens", 0)), int(end.get("n_tokens", 0)))
    return JSONResponse(shapes.completion(ident, created, model, text, shapes.finish_reason(end), counts, extension))


async def _follow(request: Request, engine: Engine, follower: TurnFollower, done: Callable[[], bool]) -> bool:
    """Read the turn's events until ``done()``; when the client goes away first (or the request is cancelled), stop
    the turn and return False."""
    try:
        while not done():
            if await request.is_disconnected():
                await stop_turn(engine, follower.sid)
                return False
            await follower.poll()
    except BaseException:
        await stop_turn(engine, follower.sid)
        raise
    return True


async def _content(state: WorkerState, turn: int) -> str:
    stored = await run_in_threadpool(state.db.turn, turn)
    return str(stored["content"]) if stored is not None else ""


def _closing(end: dict[str, Any], sid: str, turn: int, controls: Controls) -> dict[str, Any]:
    """The final ``persona_space`` fields: where the turn landed, the prompt's projection, where it is stored."""
    return {
        "turn": shapes.turn_summary(end), "prompt_projection": end.get("prompt_projection"), "session": sid,
        "turn_id": turn, "controls": {k: getattr(controls, k) for k in CONTROL_KEYS},
    }  # fmt: skip


async def _stream(
    request: Request, state: WorkerState, engine: Engine, follower: TurnFollower, req: shapes.ChatRequest,
    names: tuple[str, int, str], controls: Controls, include_usage: bool,
) -> AsyncIterator[str]:  # fmt: skip
    """The chunks of a streamed reply: the role, the tokens' text with their telemetry as they come, the finish
    reason with where the turn landed, the usage when asked for, ``[DONE]``."""
    ident, created, model = names
    scanner = shapes.StopScanner(req.stop_strings())
    finished = False
    seen = 0
    try:
        where = {"session": follower.sid, "turn_id": follower.turn}  # stored there, for the app's chat list
        yield _sse(shapes.chunk(ident, created, model, {"role": "assistant", "content": ""}, persona_space=where))
        while True:
            tokens = follower.tokens[seen:]
            seen = len(follower.tokens)
            if tokens:
                text = "".join(scanner.feed(t["text"]) for t in tokens)
                yield _sse(shapes.chunk(ident, created, model, {"content": text}, persona_space=shapes.telemetry(tokens)))
            if follower.end is not None:
                break
            if await request.is_disconnected():
                return
            await follower.poll()
        end = follower.end or {}
        if end.get("status") != "done":
            error = _failure(end)
            yield _sse(shapes.error_body(error.status, error.message, error.param, error.code))
        else:
            rest = scanner.rest(await _content(state, follower.turn))
            closing = _closing(end, follower.sid, follower.turn, controls)
            delta = {"content": rest} if rest else {}
            yield _sse(shapes.chunk(ident, created, model, delta, shapes.finish_reason(end), persona_space=closing))
            if include_usage:
                counts = shapes.usage(int(end.get("prompt_tokens", 0)), int(end.get("n_tokens", 0)))
                yield _sse(shapes.usage_chunk(ident, created, model, counts))
        yield "data: [DONE]\n\n"
        finished = True
    finally:
        if not finished and follower.end is None:  # the client went away: its turn stops
            await stop_turn(engine, follower.sid)
