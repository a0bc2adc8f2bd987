"""Every JSON request body checked once, where it enters, before FastAPI, pydantic or a route reads it.

:class:`JSONBodies` is an ASGI middleware inside ``BodyLimit`` (so what it buffers is at most the body limit). For a
body FastAPI may decode as JSON it reads the whole body, decodes and checks it with :mod:`backend.worker.json_check`
(no unpaired surrogate in a value or a key, nesting at most ``MAX_DEPTH`` deep), counts each object's keys, and then
hands the same bytes on. A refused body is answered in the worker's error shape: 400 for JSON the worker will not
read, 422 for an object wider than any request (more than :data:`MAX_KEYS` keys). A body that is not JSON at all
goes on unchanged, for FastAPI's own answer.

Why the key count: pydantic lists one error per unknown key, and FastAPI builds every one of them on the event loop.
A 15 MiB body of 1.3 M unknown controls took 40 s and a 158 MiB answer, and /health waited meanwhile (issue #27). No
request schema has more than 13 fields, and a transcript's objects hold a handful, so an object wider than
``MAX_KEYS`` is refused before pydantic sees it (and before the checker walks its keys), and pydantic never lists
more than a few thousand errors (milliseconds). A body over :data:`THREAD_BYTES` is decoded and checked in a
thread, so the loop serves between the checker's steps; decoding itself holds the interpreter lock throughout. That
17 MiB body is now answered in 3-6 s on 2 cores shared with a load of 9-12 (/health waiting as long at worst), where
it had no answer within 120 s.

The cost is a second decoding of an accepted body, by FastAPI. Ordinary bodies are small (a message, controls);
only a ``/project`` transcript can be large, and reading it with the model costs far more. The paths in
``unchecked`` are left alone: the session import's body is decoded and checked once, by the importer, in a child
process when it is large (:mod:`backend.worker.importer`).
"""

from __future__ import annotations

import asyncio
import email.message
import json
from collections.abc import Collection
from typing import Any

from backend.worker import json_check
from backend.worker.guards import ASGIApp, Message, Receive, Scope, Send
from backend.worker.problems import problem

MAX_KEYS = 1000
THREAD_BYTES = 64 * 1024
_METHODS = frozenset({"POST", "PUT", "PATCH"})


def may_be_json(content_type: str | None) -> bool:
    """Whether a body sent with this ``Content-Type`` may be decoded as JSON: ``application/json``, ``*+json``, or
    none given (FastAPI decodes the first two; the third is checked too, in case that changes)."""
    if not content_type:
        return True
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


def _too_wide(value: Any) -> str | None:
    """Where ``value`` holds an object of more than ``MAX_KEYS`` keys, said in a line; None when it does not."""
    stack: list[tuple[Any, str]] = [(value, "body")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, dict):
            if len(node) > MAX_KEYS:
                return f"{path}: an object of {len(node)} keys, more than any request holds (at most {MAX_KEYS})"
            items: Any = node.items()
        elif isinstance(node, list):
            items = enumerate(node)
        else:  # a body that is one number, string, boolean or null
            continue
        for key, item in items:
            if isinstance(item, (dict, list)):
                stack.append((item, f"{path}.{key}" if len(path) < 200 else path))
    return None


def refusal(raw: bytes) -> tuple[int, str] | None:
    """Why a JSON body is refused, as (status, message); None to hand it on."""
    try:
        value = json.loads(raw)
    except RecursionError:  # deeper than the decoder goes: far deeper than the checker's bound
        return 400, f"body: nested deeper than {json_check.MAX_DEPTH} levels"
    except ValueError:  # not JSON or not UTF-8: FastAPI answers it as it always has
        return None
    # the width first: it looks at each container once, where the checker looks at every key (1.3 M keys: ~1 s)
    wide = _too_wide(value)
    if wide is not None:
        return 422, f"invalid request: {wide}"
    try:
        json_check.check(value)
    except json_check.UnacceptableJSON as exc:
        return 400, str(exc)
    return None


class JSONBodies:
    """Check a JSON request body (see the module docstring) before the app reads it; ``unchecked``: paths left alone."""

    def __init__(self, app: ASGIApp, unchecked: Collection[str] = ()) -> None:
        self.app = app
        self.unchecked = frozenset(unchecked)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _METHODS or scope["path"] in self.unchecked:
            await self.app(scope, receive, send)
            return
        content_type = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"content-type"), None)
        if not may_be_json(content_type):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        more = True
        while more:
            message = await receive()  # BodyLimit's: it raises once the body passes the limit
            if message["type"] != "http.request":
                return  # the client went away before it sent the whole body: nobody to answer
            chunks.append(message.get("body", b""))
            more = bool(message.get("more_body", False))
        raw = b"".join(chunks)
        refused = await asyncio.to_thread(refusal, raw) if len(raw) > THREAD_BYTES else refusal(raw)
        if refused is not None:
            await problem(*refused)(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: a disconnect, for a streaming answer to notice
            replayed = True
            return {"type": "http.request", "body": raw, "more_body": False}

        await self.app(scope, replay, send)
