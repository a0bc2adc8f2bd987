"""The worker's HTTP API (FastAPI under uvicorn): sessions, messages, resumable event streams, live controls.

Binds to loopback by default. Binding anywhere else (an empty or wildcard host included) needs a bearer token
(``--token-file``, ``PERSONA_SPACE_TOKEN`` or ``--token``), and then every request must carry
``Authorization: Bearer <token>``. Without a token, only requests addressed to a loopback name (``Host``) and not
sent by another web site (``Origin``, ``Sec-Fetch-Site``) are served: a web page cannot reach the worker through DNS
rebinding or a cross-site form. Request bodies are limited to ``MAX_BODY`` bytes as they arrive (chunked ones too).
The model loads in the background after the server starts: ``/health`` says ``ready: false`` until then, and
routes that need the model answer 503. While the database cannot be written, ``/health`` says
``status: "degraded"`` with the reason, writes answer 503, and the worker recovers by itself once it can write.
A large session import is decoded, checked and written by a child process (``backend.worker.importer``), so it never
stalls the other requests.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Annotated, Any

from fastapi import Body, FastAPI, Header, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from backend import cpu_threads, int8_linear
from backend.errors import PersonaSpaceError
from backend.worker.db import Database
from backend.worker.engine import Conflict, ControlError, Engine
from backend.worker.guards import BodyLimit, EventNotifier, Gate, is_loopback
from backend.worker.importer import ImportCrashed, Importer, Refused
from backend.worker.schemas import Controls, ControlsPatch, MessageAccepted, NewMessage, NewSession

# Followers read new events at most this often: tokens arrive in batches of a few, instead of one wake-up of the
# server per token. Measured (bench/worker.py): with a wake-up per token HTTP streamed 15.8 tok/s against 24 in
# process; 50 ms gave 23.7; with the compiled step (30 tok/s) 50 ms gave a ratio of 0.85 and 100 ms 0.94.
STREAM_INTERVAL_S = 0.1

log = logging.getLogger("persona_space.worker")
SessionId = Annotated[str, PathParam(pattern=r"^[0-9a-f]{16}$", description="session id")]
MAX_SEQ = 2**62
MAX_BODY = 20 * 2**20


@dataclass
class WorkerState:
    """What the server knows while the model loads, and the engine once it has."""

    model_spec: str
    space_path: str
    db: Database
    engine: Engine | None = None
    status: str = "starting"
    error: str | None = None
    started: float = field(default_factory=time.time)
    space_cache: dict[int, dict[str, Any]] = field(default_factory=dict)
    probed: float = 0.0

    def need_engine(self) -> Engine:
        if self.engine is None or not self.engine.ready.is_set():
            detail = self.error or f"the worker is still starting ({self.status}); retry in a few seconds"
            raise HTTPException(status_code=503, detail=detail)
        return self.engine


def _problem(status: int, error: str, detail: Any = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": error, "detail": detail})


def create_app(state: WorkerState, token: str | None = None) -> FastAPI:
    notifier = EventNotifier()
    state.db.listeners.append(notifier.notify)
    importer = Importer(state.db)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            importer.close()  # the import child, if one was started

    app = FastAPI(
        title="Persona Space worker",
        version="1",
        description="Streams chat tokens with their projection on the Assistant Axis; live cap and steering controls.",
        lifespan=lifespan,
    )

    app.add_middleware(BodyLimit, limit=MAX_BODY)
    app.add_middleware(Gate, token=token)  # outermost: nothing is read before the caller is let in

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            where = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
            parts.append(f"{where}: {str(err.get('msg', 'invalid')).removeprefix('Value error, ')}")
        return _problem(
            422,
            "invalid request: " + "; ".join(parts),
            [{"loc": list(e.get("loc", ())), "msg": e.get("msg")} for e in exc.errors()],
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _problem(exc.status_code, str(exc.detail))

    @app.exception_handler(ControlError)
    async def control_error(request: Request, exc: ControlError) -> JSONResponse:
        return _problem(422, str(exc))

    @app.exception_handler(Conflict)
    async def conflict(request: Request, exc: Conflict) -> JSONResponse:
        return _problem(409, str(exc))

    @app.exception_handler(PersonaSpaceError)
    async def domain_error(request: Request, exc: PersonaSpaceError) -> JSONResponse:
        return _problem(400, str(exc))

    @app.exception_handler(KeyError)
    async def missing(request: Request, exc: KeyError) -> JSONResponse:
        return _problem(404, f"no session {exc.args[0] if exc.args else ''} (it may have been deleted)")

    @app.exception_handler(sqlite3.IntegrityError)
    async def changed(request: Request, exc: sqlite3.IntegrityError) -> JSONResponse:
        return _problem(409, "the session changed while this request ran (was it deleted?)")

    @app.exception_handler(sqlite3.OperationalError)
    async def unwritable(request: Request, exc: sqlite3.OperationalError) -> JSONResponse:
        log.error("database error on %s: %s", request.url.path, exc)
        return _problem(503, f"the sessions database cannot be used right now ({exc}); retry later")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return _problem(500, f"internal error: {type(exc).__name__}")

    def session_or_404(sid: str) -> dict[str, Any]:
        session = state.db.session(sid)
        if session is None:
            raise HTTPException(status_code=404, detail=f"no session {sid}")
        return session

    @app.get("/health")
    def health() -> dict[str, Any]:
        engine = state.engine
        # a failed write marks the database; otherwise look at most every 5 s (a real write, rolled back)
        if state.db.write_error or time.time() - state.probed > 5:
            state.probed = time.time()
            degraded = state.db.probe()
        else:
            degraded = None
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
                running_turn=job.turn_id if (job := engine.running) is not None else None,
                tokens_generated=engine.tokens_generated,
                decode_step=engine.compile_state,
                precision="int8" if int8_linear.installed(engine.loaded.model) else engine.loaded.info.dtype,
            )
        return out

    @app.get("/space")
    def space(layer: Annotated[int | None, Query(ge=0, le=10_000)] = None) -> dict[str, Any]:
        engine = state.need_engine()
        chosen = engine.target if layer is None else layer
        if chosen >= engine.n_layers:
            raise HTTPException(
                status_code=422, detail=f"layer {chosen} is out of range: the model has layers 0..{engine.n_layers - 1}"
            )
        if chosen not in state.space_cache:
            from backend.space_view import SpaceViewError, read_space, summary

            try:
                state.space_cache[chosen] = summary(read_space(engine.space.path), chosen)
            except SpaceViewError as exc:  # the space's files changed on disk since the worker started
                raise HTTPException(status_code=503, detail=str(exc)) from exc
        return state.space_cache[chosen]

    @app.post("/sessions", status_code=201)
    def create_session(body: NewSession | None = None) -> dict[str, Any]:
        engine = state.need_engine()
        body = body or NewSession()
        controls = engine.validate_controls(body.controls or engine.default_controls())
        sid = state.db.create_session(body.system, controls.model_dump(mode="json"), body.title)
        return session_or_404(sid)

    @app.get("/sessions")
    def list_sessions() -> dict[str, Any]:
        return {"sessions": state.db.sessions()}

    @app.get("/sessions/{sid}")
    def get_session(sid: SessionId) -> dict[str, Any]:
        session = session_or_404(sid)
        session["turns"] = state.db.turns(sid)
        session["busy"] = state.engine.busy(sid) if state.engine else False
        return session

    @app.get("/sessions/{sid}/export")
    def export_session(sid: SessionId) -> dict[str, Any]:
        session = session_or_404(sid)
        return {
            "format": "persona-space-session", "version": 1, "model": state.model_spec, "space": state.space_path,
            "session": session, "turns": state.db.turns(sid, include_undone=True), "events": state.db.events(sid, 0, 10**9),
        }  # fmt: skip

    @app.delete("/sessions/{sid}")
    def delete_session(sid: SessionId) -> dict[str, Any]:
        session_or_404(sid)
        if state.engine is not None:
            state.engine.stop(sid)
        state.db.delete_session(sid)
        return {"deleted": sid}

    @app.post("/sessions/{sid}/messages", status_code=202)
    def post_message(sid: SessionId, body: NewMessage) -> MessageAccepted:
        engine = state.need_engine()
        session_or_404(sid)
        user_turn, turns, variants, position = engine.submit(sid, body.content, body.compare)
        return MessageAccepted(user_turn=user_turn, assistant_turns=turns, variants=variants, queue_position=position)

    @app.patch("/sessions/{sid}/controls")
    def patch_controls(sid: SessionId, body: ControlsPatch) -> dict[str, Any]:
        engine = state.need_engine()
        session_or_404(sid)
        controls, version = engine.patch_controls(sid, body)
        return {"controls": controls.model_dump(mode="json"), "controls_version": version}

    @app.get("/sessions/{sid}/controls")
    def get_controls(sid: SessionId) -> dict[str, Any]:
        session = session_or_404(sid)
        return {
            "controls": Controls(**session["controls"]).model_dump(mode="json"),
            "controls_version": session["controls_version"],
        }

    @app.post("/sessions/{sid}/stop")
    def stop(sid: SessionId) -> dict[str, Any]:
        engine = state.need_engine()
        session_or_404(sid)
        return {"stopped": engine.stop(sid)}

    @app.post("/sessions/{sid}/undo")
    def undo(sid: SessionId) -> dict[str, Any]:
        engine = state.need_engine()
        session_or_404(sid)
        return {"undone": engine.undo(sid)}

    @app.post(
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
    async def import_session(request: Request) -> dict[str, Any]:
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
        return await run_in_threadpool(session_or_404, sid)

    @app.post("/project")
    def project(
        body: Annotated[Any, Body(description="a conversation: an OpenAI-style message list or the paper's transcript JSON")],
        layer: Annotated[int | None, Query(ge=0, le=10_000)] = None,
        window: Annotated[int | None, Query(ge=16, le=1_000_000, description="read in windows of at most N tokens")] = None,
        history: Annotated[float, Query(ge=0, le=1, description="share of a window kept as history when it moves")] = 0.5,
        tokens: Annotated[bool, Query(description="add each assistant token's projection and text")] = False,
    ) -> dict[str, Any]:
        engine = state.need_engine()
        return engine.project(body, layer, window=window, history=history, tokens=tokens)

    @app.get("/sessions/{sid}/events", response_model=None)
    async def events(
        request: Request,
        sid: SessionId,
        after: Annotated[int, Query(ge=0, le=MAX_SEQ, description="last sequence number seen")] = 0,
        follow: Annotated[bool, Query(description="stream as server-sent events")] = False,
        until_idle: Annotated[bool, Query(description="end the stream once the session has no queued or running turn")] = False,
        cancel_on_disconnect: Annotated[
            bool, Query(description="stop the session's turn if this stream's client goes away")
        ] = False,
        limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
        last_event_id: Annotated[str | None, Header(max_length=32)] = None,
    ) -> dict[str, Any] | StreamingResponse:
        session_or_404(sid)
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

    return app


def load_in_background(
    state: WorkerState,
    model_spec: str,
    space_path: str,
    load: Callable[[], Any],
    threads: int | None = None,
    compile: bool = False,
) -> threading.Thread:
    """Load the model and space, then start the engine (its generation thread with ``threads`` torch threads);
    failures are reported through ``/health``."""

    def run() -> None:
        try:
            state.status = "loading model"
            loaded, space = load()
            state.status = "warming up"
            engine = Engine(loaded, space, state.db, threads=threads, compile=compile)
            state.engine = engine
            engine.start()
            engine.ready.wait()
            state.status = "ready"
        except Exception as exc:
            log.exception("the worker failed to start")
            state.error = f"{type(exc).__name__}: {exc}"

    thread = threading.Thread(target=run, name="loader", daemon=True)
    thread.start()
    return thread


def read_token(token: str | None, token_file: str | None) -> str | None:
    """The bearer token: from ``token_file`` (its first line), else ``--token``, else ``PERSONA_SPACE_TOKEN``."""
    if token_file:
        try:
            text = Path(token_file).read_text(encoding="utf-8").strip().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise PersonaSpaceError(f"cannot read the token file {token_file}: {exc}") from exc
        if not text or not text[0].strip():
            raise PersonaSpaceError(f"the token file {token_file} is empty")
        return text[0].strip()
    if token:
        log.warning("--token is visible to every user of this machine in `ps`; prefer --token-file or PERSONA_SPACE_TOKEN")
        return token
    return os.environ.get("PERSONA_SPACE_TOKEN") or None


def serve(
    model_spec: str,
    space_path: str,
    host: str = "127.0.0.1",
    port: int = 8765,
    db_path: str | None = None,
    token: str | None = None,
    device: str | None = None,
    cache: str | None = None,
    trust_remote_code: bool = False,
    compile: bool = True,
    precision: str = "default",
) -> None:
    import uvicorn

    from backend.models import cache_dir, load_model, resolve
    from backend.store import load_space

    if precision not in int8_linear.PRECISIONS:
        raise PersonaSpaceError(  # argparse checks --precision, not its PERSONA_SPACE_PRECISION default
            f"unknown precision {precision!r} (--precision or PERSONA_SPACE_PRECISION); "
            f"choose one of {', '.join(int8_linear.PRECISIONS)}"
        )
    if precision == "int8":
        if device not in (None, "cpu"):
            raise PersonaSpaceError(f"--precision int8 runs on a CPU only, not on {device}; drop one of the two")
        device = "cpu"  # not a GPU the machine may have
    threads = cpu_threads.reserve()  # before any torch work: the main thread never builds an OpenMP team
    token = token or os.environ.get("PERSONA_SPACE_TOKEN") or None
    if not is_loopback(host) and not token:
        where = repr(host) + (" (every interface)" if host.strip() in ("", "0.0.0.0", "::", "[::]") else "")
        raise PersonaSpaceError(
            f"binding to {where} exposes the worker beyond this machine: pass --token-file FILE or set "
            "PERSONA_SPACE_TOKEN (or --token, visible to other users in `ps`)"
        )
    space = load_space(space_path)
    _, name, fingerprint = resolve(model_spec, cache_dir(cache))
    space.check_model(fingerprint, name)  # refuse a mismatched space before anything starts
    db = Database(db_path or Path(cache_dir(cache)) / "worker.sqlite3")
    state = WorkerState(model_spec=model_spec, space_path=str(space_path), db=db)

    def load() -> tuple[Any, Any]:
        loaded = load_model(model_spec, cache=cache, device=device, trust_remote_code=trust_remote_code)
        space.check_model(loaded.info.fingerprint, loaded.info.name)  # on the float32 weights, before any int8 copy
        if precision == "int8":
            int8_linear.install(loaded.model)
        return loaded, space

    load_in_background(state, model_spec, str(space_path), load, threads, compile)
    app = create_app(state, token)
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=2)
