"""What the worker is and has loaded: ``GET /health``, ``GET /space``, and ``POST /project`` (a transcript read with
the loaded model, a slice at a time between chat turns: see :mod:`backend.worker.engine`)."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool

from backend.kernels import int8_linear
from backend.worker.jobs import Overdue, ShuttingDown
from backend.worker.state import State

router = APIRouter()

PROJECT_DEADLINE_S = 300.0  # as long as the app's client waits for /project (app/client.py)
MAX_PROJECT_DEADLINE_S = 3600.0


@router.get("/health")
def health(state: State) -> dict[str, Any]:
    engine = state.engine
    # The database file deleted, moved away or replaced: a stat of its files, on every call. Else a failed write
    # marks the database; otherwise look at most every 5 s (a real write, rolled back).
    degraded = state.db.lost()
    if degraded is None and (state.db.write_error or time.time() - state.probed > 5):
        state.probed = time.time()
        degraded = state.db.probe()
    ready = engine is not None and engine.ready.is_set() and state.error is None and degraded is None
    status = "failed" if state.error else "degraded" if degraded else "ready" if ready else state.status
    out: dict[str, Any] = {
        "ready": ready, "status": status, "error": state.error or degraded, "degraded": degraded,
        "model": state.model_spec, "space": state.space_path, "uptime_s": round(time.time() - state.started, 1),
    }  # fmt: skip
    out["phase"] = engine.placement.phase if ready and engine is not None else out["status"]  # "building the map"
    if engine is not None:
        out.update(
            device=engine.loaded.info.device,
            model_name=engine.loaded.info.name,
            queue_length=engine.queue_length(),
            running_turn=jobs[0].turn_id if (jobs := engine.running_jobs()) else None,
            running_turns=[j.turn_id for j in jobs],
            projections=engine.projection_work(),
            tokens_generated=engine.tokens_generated,
            decode_step=engine.compile_state,
            precision="int8" if int8_linear.installed(engine.loaded.model) else engine.loaded.info.dtype,
        )
    return out


def checked_layer(engine: Any, layer: int | None) -> int:
    """The layer a route reads (default: the target layer), or a 422 for a layer the model does not have."""
    chosen = int(engine.target if layer is None else layer)
    if chosen >= engine.n_layers:
        raise HTTPException(
            status_code=422, detail=f"layer {chosen} is out of range: the model has layers 0..{engine.n_layers - 1}"
        )
    return chosen


@router.get("/space")
def space(state: State, layer: Annotated[int | None, Query(ge=0, le=10_000)] = None) -> dict[str, Any]:
    engine = state.need_engine()
    chosen = checked_layer(engine, layer)
    if chosen not in state.space_cache:
        from backend.view.space import SpaceViewError, read_space, summary

        try:
            state.space_cache[chosen] = summary(read_space(engine.space.path), chosen)
        except SpaceViewError as exc:  # the space's files changed on disk since the worker started
            raise HTTPException(status_code=503, detail=str(exc)) from exc
    return state.space_cache[chosen]


@router.post("/project")
async def project(
    request: Request,
    state: State,
    body: Annotated[Any, Body(description="a conversation: an OpenAI-style message list or the paper's transcript JSON")],
    layer: Annotated[int | None, Query(ge=0, le=10_000)] = None,
    window: Annotated[int | None, Query(ge=16, le=1_000_000, description="read in windows of at most N tokens")] = None,
    history: Annotated[float, Query(ge=0, le=1, description="share of a window kept as history when it moves")] = 0.5,
    tokens: Annotated[bool, Query(description="add each assistant token's projection and text")] = False,
    deadline: Annotated[
        float,
        Query(gt=0, le=MAX_PROJECT_DEADLINE_S, description="seconds before the projection is given up (504) and dropped"),
    ] = PROJECT_DEADLINE_S,
) -> dict[str, Any]:
    engine = state.need_engine()
    try:
        projection = await run_in_threadpool(
            engine.submit_projection, body, layer, window=window, history=history, tokens=tokens, deadline=deadline
        )
    except ShuttingDown as exc:
        raise HTTPException(status_code=503, detail=str(exc)) from exc
    try:
        while not projection.done.is_set():  # the generation thread reads it; this only waits, and watches the client
            if await request.is_disconnected():
                projection.cancel("its client went away")
                raise HTTPException(status_code=400, detail="the client went away: the projection was dropped")
            await asyncio.sleep(0.05)
    finally:
        projection.cancel("its request ended")  # nothing once it is done; drops it when this wait was cancelled
    if isinstance(projection.error, Overdue):
        raise HTTPException(status_code=504, detail=str(projection.error)) from projection.error
    if isinstance(projection.error, ShuttingDown):
        raise HTTPException(status_code=503, detail=str(projection.error)) from projection.error
    if projection.error is not None:
        raise projection.error  # a transcript that cannot be read: 400
    assert projection.result is not None
    return projection.result
