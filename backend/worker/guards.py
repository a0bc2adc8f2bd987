"""What stands between the network and the worker's routes: which hosts are loopback, the bearer token, the strict
Host and Origin checks of a token-free worker, the streamed body limit, and the wake-up of idle event followers."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import re
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.exceptions import HTTPException

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def is_loopback(host: str) -> bool:
    """True for an address that only this machine can reach. An empty host or a wildcard binds every interface."""
    host = host.strip().strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_NAME = re.compile(r"[A-Za-z0-9._-]+")
_PORT = re.compile(r"[0-9]{1,5}")


def host_of(value: str) -> str | None:
    """The host of a ``Host`` value: ``name[:port]`` or ``[v6-address][:port]`` and nothing else (no userinfo,
    path, backslash, whitespace or text after the brackets); None when it is anything else."""
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        host, rest = value[1:end], value[end + 1 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return None
        if "%" in host:  # a zone id: text the address does not need
            return None
    else:
        host, colon, port = value.partition(":")
        rest = colon + port
        if not _NAME.fullmatch(host):
            return None
    if rest and not (rest[0] == ":" and _PORT.fullmatch(rest[1:]) and int(rest[1:]) <= 65535):
        return None
    return host


def loopback_host(header: str) -> bool:
    """A request addressed to this machine by a loopback name (a DNS-rebound name like evil.example is not)."""
    name = (host_of(header) or "").lower()
    return name == "localhost" or name.endswith(".localhost") or (bool(name) and is_loopback(name))


def allowed_origin(origin: str | None, fetch_site: str | None) -> bool:
    """Requests without an Origin come from programs (the app, curl); a browser's must come from this machine,
    named exactly as browsers send it: ``http(s)://host[:port]`` (a host as :func:`host_of` reads it)."""
    if fetch_site is not None and fetch_site.strip().lower() == "cross-site":
        return False
    if origin is None:
        return True
    scheme, sep, authority = origin.partition("://")
    return bool(sep) and scheme.lower() in ("http", "https") and loopback_host(authority)


async def _answer(send: Send, status: int, error: str) -> None:
    body = json.dumps({"error": error, "detail": None}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


ONCE = (b"host", b"origin", b"sec-fetch-site", b"authorization")  # what the Gate decides on: one of each at most


class Gate:
    """Who may talk to the worker: with a token, whoever sends ``Authorization: Bearer <token>`` (the scheme in any
    case, RFC 7235); without one (loopback only), requests addressed to a loopback name and not sent by another web
    site. A request naming one of :data:`ONCE` twice is refused: which of the two a proxy or a browser meant is
    unknowable, and the first is not the safe guess."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token.encode() if token is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: dict[bytes, bytes] = {}
        for name, value in scope.get("headers", ()):
            name = name.lower()
            if name in headers and name in ONCE:
                await _answer(send, 400, f"the {name.decode().title()} header is sent more than once; send it once")
                return
            headers[name] = value
        if self.token is not None:
            scheme, _, credentials = headers.get(b"authorization", b"").partition(b" ")
            if not (scheme.lower() == b"bearer" and hmac.compare_digest(credentials.lstrip(b" "), self.token)):
                await _answer(send, 401, "missing or wrong bearer token (Authorization: Bearer <token>)")
                return
        else:
            host = headers.get(b"host", b"").decode("latin-1")
            if not loopback_host(host):
                await _answer(send, 421, "this worker only answers requests addressed to 127.0.0.1, [::1] or localhost")
                return
            origin = headers.get(b"origin")
            site = headers.get(b"sec-fetch-site")
            if not allowed_origin(
                origin.decode("latin-1") if origin is not None else None, site.decode("latin-1") if site is not None else None
            ):
                await _answer(send, 403, "cross-site requests are refused (the Origin is not this machine)")
                return
        await self.app(scope, receive, send)


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413, whether declared (Content-Length) or streamed (chunked):
    the bytes are counted as they arrive, so a body is never read whole before it is refused."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def _refuse(self, send: Send) -> None:
        body = json.dumps({"error": f"request body too large: at most {self.limit // 2**20} MiB", "detail": None}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                if not value.isdigit() or int(value) > self.limit:
                    await self._refuse(send)
                    return
        received = 0
        started = tripped = False

        async def counted() -> Message:
            nonlocal received, tripped
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    tripped = True
                    raise _TooLarge(413, f"request body too large: at most {self.limit // 2**20} MiB")
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if tripped:  # close the connection: the server then stops reading the rest of the body
                    message = dict(message, headers=[*message.get("headers", []), (b"connection", b"close")])
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except _TooLarge:
            if started:
                raise
            await self._refuse(send)


class _TooLarge(HTTPException):
    """Raised from a route's body read: FastAPI turns it into the 413 answer (BodyLimit does, if it gets here)."""


class EventNotifier:
    """Wakes the event followers of a session when one of its events is written (from any thread)."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.waiters: dict[str, set[asyncio.Future[None]]] = {}
        self.lock = threading.Lock()

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def notify(self, sid: str, seq: int) -> None:
        loop = self.loop
        with self.lock:
            wanted = sid in self.waiters
        if loop is not None and wanted:
            try:
                loop.call_soon_threadsafe(self._wake, sid)
            except RuntimeError:  # the loop is closed: the server is stopping
                pass

    def _wake(self, sid: str) -> None:
        with self.lock:
            futures = self.waiters.pop(sid, set())
        for future in futures:
            if not future.done():
                future.set_result(None)

    async def wait(self, sid: str, timeout: float, ready: Callable[[], bool]) -> bool:
        """Sleep until ``sid`` gets an event or ``timeout`` passes; True when woken. ``ready`` is checked once the
        waiter is registered, so an event written just before cannot be missed."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self.lock:
            self.waiters.setdefault(sid, set()).add(future)
        try:
            if ready():
                return True
            await asyncio.wait_for(future, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            with self.lock:
                waiting = self.waiters.get(sid)
                if waiting is not None:
                    waiting.discard(future)
                    if not waiting:
                        self.waiters.pop(sid, None)
