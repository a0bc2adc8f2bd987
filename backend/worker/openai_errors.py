"""Every error of the ``/v1`` routes in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, whoever
answered it: the routes themselves, the guards (401, 403, 421, 413), the body checks (400, 422), FastAPI (404, 405)
or the exception handlers (503, 500: see :func:`backend.worker.problems.add_error_handlers`).

:class:`OpenAIErrors` is the outermost middleware. On a ``/v1`` path it rewrites an error answer in the worker's
own shape (``{"error": "<message>", "detail": ...}``) into OpenAI's, keeping its status; answers already in OpenAI's
shape, successes and streams pass untouched. Every other path keeps the worker's shape.
"""

from __future__ import annotations

import json
from typing import Any

from backend.worker.guards import ASGIApp, Message, Receive, Scope, Send
from backend.worker.openai_shapes import error_body

PREFIX = "/v1/"
_CODES = {401: "invalid_api_key", 403: "forbidden", 404: "not_found", 405: "method_not_allowed", 413: "request_too_large",
          421: "misdirected_request", 422: "invalid_value", 503: "unavailable"}  # fmt: skip


def is_openai_path(path: str) -> bool:
    return path.startswith(PREFIX) or path == PREFIX.rstrip("/")


def reshape(status: int, body: bytes) -> bytes | None:
    """The OpenAI-shaped body for a worker-shaped error ``body``; None when it is not one (left as it is)."""
    try:
        value: Any = json.loads(body)
    except ValueError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("error"), str):
        return None
    return json.dumps(error_body(status, value["error"], None, _CODES.get(status))).encode()


class OpenAIErrors:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_openai_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        chunks: list[bytes] = []

        async def watched(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start" and message["status"] >= 400:
                start = message  # held until the body is whole
                return
            if start is None:
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = b"".join(chunks)
            status = int(start["status"])
            new = reshape(status, body)
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            if new is not None:
                body = new
                headers = [(k, v) for k, v in headers if k.lower() != b"content-type"] + [(b"content-type", b"application/json")]
            await send(dict(start, headers=[*headers, (b"content-length", str(len(body)).encode())]))
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, watched)
