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

SIGINT (Ctrl-C) and SIGTERM stop the worker cleanly, mid-turn too: the engine closes as the signal arrives (the
running turn ends ``incomplete`` at its next step, with its tokens), the server stops, the generation thread is
joined, and ``serve`` returns 130 after SIGINT and 0 after SIGTERM. Should a thread that runs model code still be
running then (a model still loading, a decode step compiling), the process ends with ``os._exit``: the
interpreter's own exit would end that thread inside torch's C++ code and abort ("terminate called without an active
exception"). Everything acknowledged is in the database either way.

This module assembles the app (the guards of :mod:`backend.worker.guards`, the error answers of
:mod:`backend.worker.problems`, the routes of :mod:`backend.worker.routes`), loads the model and serves it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from backend.errors import PersonaSpaceError
from backend.kernels import cpu_threads, int8_linear
from backend.worker.batch import MAX_ROWS
from backend.worker.bodies import JSONBodies
from backend.worker.db import Database
from backend.worker.engine import Engine
from backend.worker.guards import BodyLimit, EventNotifier, Gate, is_loopback
from backend.worker.importer import Importer
from backend.worker.openai_errors import OpenAIErrors
from backend.worker.openai_shapes import parse_cap_flag
from backend.worker.problems import add_error_handlers
from backend.worker.routes import controls, events, openai, sessions, status, traits, transfer
from backend.worker.state import WorkerState

log = logging.getLogger("persona_space.worker")
MAX_BODY = 20 * 2**20
SHUTDOWN_WAIT_S = 5.0  # for the generation thread to end (a decode step or a projection's slice takes far less)
# threads that run model code (torch, numba): the interpreter must not exit while one runs
MODEL_THREADS = frozenset({"loader", "generation", "compile-steps", "compile-step", "umap-warm-up"})


def create_app(state: WorkerState, token: str | None = None) -> FastAPI:
    """The worker's app over ``state``: without ``token``, loopback callers only (see the module docstring)."""
    notifier = EventNotifier()
    state.db.listeners.append(notifier.notify)
    importer = Importer(state.db)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if state.engine is not None:  # the running turn ends incomplete, queued ones are marked so
                await asyncio.to_thread(state.engine.shutdown, SHUTDOWN_WAIT_S)
            importer.close()  # the import child, if one was started

    app = FastAPI(
        title="Persona Space worker",
        version="1",
        description="Streams chat tokens with their projection on the Assistant Axis; live cap and steering controls.",
        lifespan=lifespan,
    )
    app.state.worker, app.state.notifier, app.state.importer = state, notifier, importer  # see backend.worker.state
    # innermost: every JSON body checked once, as it enters; the import checks its own (in a child when large)
    app.add_middleware(JSONBodies, unchecked=("/sessions/import",))
    app.add_middleware(BodyLimit, limit=MAX_BODY)
    app.add_middleware(Gate, token=token)  # nothing is read before the caller is let in
    app.add_middleware(OpenAIErrors)  # outermost: every error of /v1 in OpenAI's shape, the Gate's too
    add_error_handlers(app)
    for group in (status, traits, sessions, controls, transfer, events, openai):
        app.include_router(group.router)
    return app


def load_in_background(
    state: WorkerState,
    model_spec: str,
    space_path: str,
    load: Callable[[], Any],
    threads: int | None = None,
    compile: bool = False,
    api_cap: str = "default",
    batch_rows: int = MAX_ROWS,
) -> threading.Thread:
    """Load the model and space, then start the engine (its generation thread with ``threads`` torch threads);
    failures are reported through ``/health``."""

    def run() -> None:
        try:
            state.status = "loading model"
            loaded, space = load()
            state.status = "warming up"
            engine = Engine(loaded, space, state.db, threads=threads, compile=compile, api_cap=api_cap, batch_rows=batch_rows)
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
        try:  # utf-8-sig: a byte order mark (Notepad writes one) is not part of the token
            text = Path(token_file).read_text(encoding="utf-8-sig").strip().splitlines()
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
    cap: str = "default",
    batch_rows: int = MAX_ROWS,
) -> int:
    """Serve until SIGINT or SIGTERM; returns the exit code (130 after SIGINT, else 0: see the module docstring)."""
    import uvicorn

    from backend.models.loading import cache_dir, load_model, resolve
    from backend.store.space import load_space

    if precision not in int8_linear.PRECISIONS:
        raise PersonaSpaceError(  # argparse checks --precision, not its PERSONA_SPACE_PRECISION default
            f"unknown precision {precision!r} (--precision or PERSONA_SPACE_PRECISION); "
            f"choose one of {', '.join(int8_linear.PRECISIONS)}"
        )
    if precision == "int8":
        if device not in (None, "cpu"):
            raise PersonaSpaceError(f"--precision int8 runs on a CPU only, not on {device}; drop one of the two")
        device = "cpu"  # not a GPU the machine may have
    api_cap = parse_cap_flag(cap)
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
    if db_path is not None and not str(db_path).strip():
        raise PersonaSpaceError("the database path is empty (leave it out for the default in the cache folder)")
    db = Database(db_path if db_path is not None else Path(cache_dir(cache)) / "worker.sqlite3")
    state = WorkerState(model_spec=model_spec, space_path=str(space_path), db=db)

    def load() -> tuple[Any, Any]:
        loaded = load_model(model_spec, cache=cache, device=device, trust_remote_code=trust_remote_code)
        space.check_model(loaded.info.fingerprint, loaded.info.name)  # on the float32 weights, before any int8 copy
        if precision == "int8":
            int8_linear.install(loaded.model)
        return loaded, space

    app = create_app(state, token)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            if state.engine is not None:  # now, not after the graceful shutdown: its followers see the turn end
                state.engine.close()

    server = Server(uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=2))

    def stop() -> None:  # a signal before uvicorn handles them (or after): stop serving, or do not start
        server.should_exit = True
        if state.engine is not None:
            state.engine.close()

    # from here on no signal ends the process while a model thread runs: uvicorn handles them while it serves and
    # raises each again once it has stopped, and they land here
    with _StopSignals(stop) as stops:
        try:
            load_in_background(state, model_spec, str(space_path), load, threads, compile, api_cap, batch_rows)
            server.run()
        finally:
            _leave(state, stops.code())
    return stops.code()


class _StopSignals:
    """Records SIGINT and SIGTERM (and calls ``stop``) instead of ending the process, until ``serve`` returns."""

    def __init__(self, stop: Callable[[], None]) -> None:
        self.stop = stop
        self.seen: list[int] = []

    def __enter__(self) -> _StopSignals:
        self.previous = {sig: signal.signal(sig, self._note) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _note(self, sig: int, frame: Any) -> None:
        self.seen.append(sig)
        self.stop()

    def code(self) -> int:
        return 130 if signal.SIGINT in self.seen else 0


def _leave(state: WorkerState, code: int) -> None:
    """After the server stopped: stop the engine (if the lifespan did not), then close the database, or end the
    process at once when a model thread is still running (see the module docstring)."""
    if state.engine is not None:
        state.engine.shutdown(SHUTDOWN_WAIT_S)
    busy = sorted({t.name for t in threading.enumerate() if t.is_alive() and t.name in MODEL_THREADS})
    if busy:
        log.warning("stopping without waiting for %s; everything acknowledged is stored", ", ".join(busy))
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    state.db.close()
