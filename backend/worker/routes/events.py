"""A session's event log, ``GET /sessions/{sid}/events``: read a page of it, or follow it as server-sent events
(resumable from ``after`` or ``Last-Event-ID``), optionally until the session is idle, optionally stopping the
session's turn when the follower goes away."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from backend.worker.state import Notifier, SessionId, State

# Followers read new events at most this often: tokens arrive in batches of a few, instead of one wake-up of the
# server per token. Measured (bench/worker.py): with a wake-up per token HTTP streamed 15.8 tok/s against 24 in
# process; 50 ms gave 23.7; with the compiled step (30 tok/s) 50 ms gave a ratio of 0.85 and 100 ms 0.94.
STREAM_INTERVAL_S = 0.1
MAX_SEQ = 2**62

router = APIRouter()


@router.get("/sessions/{sid}/events", response_model=None)
async def events(
    request: Request,
    state: State,
    notifier: Notifier,
    sid: SessionId,
    after: Annotated[int, Query(ge=0, le=MAX_SEQ, description="last sequence number seen")] = 0,
    follow: Annotated[bool, Query(description="stream as server-sent events")] = False,
    until_idle: Annotated[bool, Query(description="end the stream once the session has no queued or running turn")] = False,
    cancel_on_disconnect: Annotated[bool, Query(description="stop the session's turn if this stream's client goes away")] = False,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
    last_event_id: Annotated[str | None, Header(max_length=32)] = None,
) -> dict[str, Any] | StreamingResponse:
    state.session_or_404(sid)
    if last_event_id is not None and last_event_id.strip():
        if not (last_event_id.isascii() and last_event_id.strip().isdigit()):
            raise HTTPException(status_code=422, detail="Last-Event-ID must be an event sequence number (ASCII digits)")
        after = max(after, min(int(last_event_id), MAX_SEQ))
    if not follow:
        return {"events": await run_in_threadpool(state.db.events, sid, after, limit)}

    def newer(sid: str, seen: int) -> bool:
        return state.db.last_seq.get(sid, 0) > seen

    async def stream() -> AsyncIterator[str]:
        # An idle follower costs nothing: it sleeps until the database says its session has a new event (or a
        # second passes), and reads the database only then.
        last, seen, quiet, finished, read_at = after, -1, 0, False, 0.0
        notifier.attach(asyncio.get_running_loop())
        try:
            while True:
                if await request.is_disconnected():
                    return
                current = state.db.last_seq.get(sid, 0)
                if seen < 0 or current > seen:
                    # at most one read per STREAM_INTERVAL_S: a stream that woke the server for every token slowed
                    # generation on two cores by a third
                    wait = read_at + STREAM_INTERVAL_S - time.monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    read_at = time.monotonic()
                    seen = state.db.last_seq.get(sid, 0)
                    batch = await run_in_threadpool(state.db.events, sid, last, 500)
                    for event in batch:
                        last = event["seq"]
                        yield f"id: {event['seq']}\nevent: {event['type']}\ndata: {json.dumps(event)}\n\n"
                    if batch:
                        quiet, seen = 0, (-1 if len(batch) == 500 else seen)
                        continue
                engine = state.engine
                if until_idle and not (await run_in_threadpool(engine.busy, sid) if engine is not None else False):
                    if not await run_in_threadpool(state.db.events, sid, last, 1):
                        finished = True
                        yield "event: idle\ndata: {}\n\n"
                        return
                    seen = -1
                    continue
                if await notifier.wait(sid, 1.0, partial(newer, sid, seen)):
                    continue
                quiet += 1
                if quiet >= 15:
                    quiet = 0
                    yield ": keep-alive\n\n"
        finally:
            # the client went away (the server cancels this generator on disconnect)
            if cancel_on_disconnect and not finished and state.engine is not None:
                await run_in_threadpool(state.engine.stop, sid)

    return StreamingResponse(
        stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
