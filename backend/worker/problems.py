"""How the worker answers an error: one JSON shape, ``{"error": <message a person can read>, "detail": ...}``,
and which status each kind of failure gets (422 invalid request or controls, 409 conflict, 400 refused input,
404 unknown session, 503 database unusable, 500 anything unexpected).

Every answer is small whatever the request held: a validation error lists at most :data:`MAX_LISTED` problems
(and says how many more), each location and message cut to :data:`MAX_PART_CHARS`, and the whole message to
:data:`MAX_ERROR_CHARS`."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from backend.errors import PersonaSpaceError
from backend.worker.jobs import Conflict, ControlError
from backend.worker.openai_errors import is_openai_path
from backend.worker.openai_shapes import OpenAIError, error_body

log = logging.getLogger("persona_space.worker")
MAX_LISTED = 5  # as many as an import's errors list (backend.worker.imports.describe)
MAX_PART_CHARS = 200
MAX_ERROR_CHARS = 2000


def _short(text: str, limit: int = MAX_PART_CHARS) -> str:
    """``text`` cut to ``limit`` characters, and writable as UTF-8: the body checks keep unpaired surrogates out of
    requests, and this keeps one out of an answer that quotes a request, whatever raised it."""
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return text.encode("utf-8", "replace").decode("utf-8")


def problem(status: int, error: str, detail: Any = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": _short(error, MAX_ERROR_CHARS), "detail": detail})


def _invalid(errors: Sequence[Any]) -> tuple[str, list[dict[str, Any]]]:
    """The first few of pydantic's ``errors`` as one line (``where: what; ...``) and as ``[{loc, msg}]``, short."""
    parts, detail = [], []
    for err in errors[:MAX_LISTED]:
        loc = [x if isinstance(x, int) else _short(str(x), 80) for x in err.get("loc", ())]
        message = _short(str(err.get("msg", "invalid")).removeprefix("Value error, "))
        parts.append(f"{_short('.'.join(str(x) for x in loc if x != 'body') or 'body', 120)}: {message}")
        detail.append({"loc": loc, "msg": _short(str(err.get("msg", "invalid")))})
    more = f" (and {len(errors) - MAX_LISTED} more)" if len(errors) > MAX_LISTED else ""
    return "invalid request: " + "; ".join(parts) + more, detail


def add_error_handlers(app: FastAPI) -> None:
    """Install the worker's exception handlers on ``app``."""

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return problem(422, *_invalid(exc.errors()))

    @app.exception_handler(OpenAIError)
    async def openai_error(request: Request, exc: OpenAIError) -> JSONResponse:
        body = error_body(exc.status, _short(exc.message, MAX_ERROR_CHARS), exc.param, exc.code)
        return JSONResponse(status_code=exc.status, content=body)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem(exc.status_code, str(exc.detail))

    @app.exception_handler(ControlError)
    async def control_error(request: Request, exc: ControlError) -> JSONResponse:
        return problem(422, str(exc))

    @app.exception_handler(Conflict)
    async def conflict(request: Request, exc: Conflict) -> JSONResponse:
        return problem(409, str(exc))

    @app.exception_handler(PersonaSpaceError)
    async def domain_error(request: Request, exc: PersonaSpaceError) -> JSONResponse:
        return problem(400, str(exc))

    @app.exception_handler(KeyError)
    async def missing(request: Request, exc: KeyError) -> JSONResponse:
        return problem(404, f"no session {exc.args[0] if exc.args else ''} (it may have been deleted)")

    @app.exception_handler(sqlite3.IntegrityError)
    async def changed(request: Request, exc: sqlite3.IntegrityError) -> JSONResponse:
        return problem(409, "the session changed while this request ran (was it deleted?)")

    @app.exception_handler(sqlite3.OperationalError)
    async def unwritable(request: Request, exc: sqlite3.OperationalError) -> JSONResponse:
        log.error("database error on %s: %s", request.url.path, exc)
        return problem(503, f"the sessions database cannot be used right now ({exc}); retry later")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        if is_openai_path(request.url.path):  # answered outside the middleware that reshapes the others
            return JSONResponse(status_code=500, content=error_body(500, f"internal error: {type(exc).__name__}"))
        return problem(500, f"internal error: {type(exc).__name__}")
