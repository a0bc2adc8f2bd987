"""The project's one client of OpenAI-compatible servers (the judge, the served generator), on the ``openai`` package.

* One ``openai.OpenAI`` client per base URL. Retries with exponential back-off and jitter are the ``openai``
  client's own (``max_retries``): connection errors, timeouts, HTTP 408/409/429 and 5xx are retried, and a
  ``Retry-After`` / ``retry-after-ms`` header of up to two minutes is honoured; other 4xx fail at once.
* :meth:`EndpointPool.map` runs calls on a thread pool with ``concurrency`` requests in flight *per URL*: worker
  threads share one queue, each bound to one URL, so a faster server takes more of the work. Results come back in
  input order; on the first failure the calls not yet started are cancelled.
* ``rpm`` caps HTTP requests per minute (every attempt, retries too) across all URLs and threads: one
  :class:`RateLimiter`, called from an HTTP request hook.
* Replies are read as raw JSON (:meth:`EndpointPool.post_json`), so servers' extra fields (vLLM's ``token_ids``)
  are kept and a body that is not JSON gives an error quoting what came back.
* Every failure is an :class:`EndpointError` (a :class:`PersonaSpaceError`) naming the URL; callers add the advice
  that fits their settings (which environment variable to change).
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from backend.errors import PersonaSpaceError

T = TypeVar("T")
R = TypeVar("R")
Sleep = Callable[[float], None]
Clock = Callable[[], float]


class EndpointError(PersonaSpaceError):
    """An OpenAI-compatible endpoint is misconfigured, unreachable, or answered something unusable.

    ``url`` is the endpoint root, ``status`` the HTTP status when there was one (None for transport failures and
    unusable bodies), ``retryable`` whether the client gave up after retries (True) or at once (False).
    """

    def __init__(
        self, message: str, *, url: str, status: int | None = None, retryable: bool = False, body: str | None = None
    ) -> None:
        super().__init__(message)
        self.url = url
        self.status = status
        self.retryable = retryable
        self.body = body  # the reply's text, when it was not a JSON object


@dataclass(frozen=True)
class EndpointSettings:
    """Where and how to call: base URLs (each ending where ``/completions`` can be appended, e.g. ``.../v1``)."""

    base_urls: tuple[str, ...]
    api_key: str
    concurrency: int = 8  # requests in flight per URL
    max_retries: int = 5  # retries per request after the first try
    timeout_s: float = 60.0
    rpm: float | None = None  # HTTP requests per minute, all URLs together

    def __post_init__(self) -> None:
        if not self.base_urls:
            raise PersonaSpaceError("no endpoint URL given")
        for url in self.base_urls:
            parsed = urllib.parse.urlparse(url)
            if parsed.scheme not in ("http", "https") or not parsed.netloc:
                raise PersonaSpaceError(f"{url!r} is not an http(s) URL; give something like http://localhost:8000/v1")
        if not self.api_key:
            raise PersonaSpaceError("the endpoint's API key is empty (use any non-empty value for a server that needs none)")
        if isinstance(self.concurrency, bool) or self.concurrency < 1:
            raise PersonaSpaceError(f"concurrency must be at least 1, got {self.concurrency}")
        if isinstance(self.max_retries, bool) or self.max_retries < 0:
            raise PersonaSpaceError(f"max_retries must be 0 or more, got {self.max_retries}")
        if not self.timeout_s > 0:
            raise PersonaSpaceError(f"the timeout must be a positive number of seconds, got {self.timeout_s}")
        if self.rpm is not None and not self.rpm > 0:
            raise PersonaSpaceError(f"the requests-per-minute limit must be a positive number, got {self.rpm}")

    @classmethod
    def from_env(
        cls,
        prefix: str,
        environ: Mapping[str, str] | None = None,
        *,
        base_urls: Sequence[str] | None = None,
        default_base_url: str | None = None,
        default_api_key: str | None = None,
        key_fallbacks: Sequence[str] = (),
        defaults: Mapping[str, Any] | None = None,
    ) -> EndpointSettings:
        """Settings from ``{prefix}_BASE_URL`` (comma-separated), ``_API_KEY``, ``_CONCURRENCY``, ``_MAX_RETRIES``,
        ``_TIMEOUT_S`` and ``_RPM``; ``base_urls`` given here win over the variable."""
        env = os.environ if environ is None else environ
        given = dict(defaults or {})

        def text(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        def number(name: str, kind: type[int] | type[float]) -> Any:
            value = text(name)
            if value is None:
                return None
            try:
                return kind(value)
            except ValueError:
                what = "a whole number" if kind is int else "a number"
                raise PersonaSpaceError(f"{name}={value!r} is not {what}; fix or unset it") from None

        urls = list(base_urls or [])
        if not urls:
            raw = text(f"{prefix}_BASE_URL") or default_base_url
            urls = [u.strip() for u in (raw or "").split(",") if u.strip()]
        if not urls:
            raise PersonaSpaceError(f"no endpoint URL: set {prefix}_BASE_URL")
        key = text(f"{prefix}_API_KEY")
        for name in key_fallbacks:
            key = key or text(name)
        for field_name, var, kind in (
            ("concurrency", "CONCURRENCY", int),
            ("max_retries", "MAX_RETRIES", int),
            ("timeout_s", "TIMEOUT_S", float),
            ("rpm", "RPM", float),
        ):
            value = number(f"{prefix}_{var}", kind)
            if value is not None:
                given[field_name] = value
        try:
            return cls(tuple(u.rstrip("/") for u in urls), key or default_api_key or "", **given)
        except PersonaSpaceError as exc:
            raise PersonaSpaceError(f"{exc} (from the {prefix}_* settings)") from None


class RateLimiter:
    """Spaces calls to :meth:`acquire` at least ``60 / rpm`` seconds apart, across all threads.

    Each caller reserves the next free slot under a lock and then sleeps (outside the lock) until that slot, so
    waiting callers queue up in arrival order without blocking one another's bookkeeping.
    """

    def __init__(self, rpm: float, clock: Clock = time.monotonic, sleep: Sleep = time.sleep) -> None:
        if not rpm > 0:
            raise PersonaSpaceError(f"the requests-per-minute limit must be a positive number, got {rpm}")
        self.interval = 60.0 / rpm
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next: float | None = None

    def acquire(self) -> float:
        """Wait for this caller's slot; returns the seconds waited (0 when a slot was free)."""
        with self._lock:
            now = self._clock()
            slot = now if self._next is None else max(now, self._next)
            self._next = slot + self.interval
        wait = slot - now
        if wait > 0:
            self._sleep(wait)
        return max(wait, 0.0)


@dataclass(frozen=True)
class Endpoint:
    """One base URL and its ``openai.OpenAI`` client (what a call made by :meth:`EndpointPool.map` receives)."""

    url: str
    client: Any  # openai.OpenAI


class EndpointPool:
    """``openai`` clients for one or more base URLs, with bounded concurrency and an optional rate limit."""

    def __init__(self, settings: EndpointSettings, *, clock: Clock = time.monotonic, sleep: Sleep = time.sleep) -> None:
        try:
            import openai
        except ImportError as exc:  # pragma: no cover - a dependency of the project
            raise PersonaSpaceError("the openai package is missing; run `make setup` (or pip install openai)") from exc
        self.settings = settings
        self.limiter = RateLimiter(settings.rpm, clock=clock, sleep=sleep) if settings.rpm is not None else None
        hooks: dict[str, list[Callable[[Any], None]]] = {"request": [self._before_request]} if self.limiter else {}
        self.endpoints = [
            Endpoint(
                url,
                openai.OpenAI(
                    base_url=url,
                    api_key=settings.api_key,
                    max_retries=settings.max_retries,
                    timeout=settings.timeout_s,
                    http_client=openai.DefaultHttpxClient(event_hooks=hooks, trust_env=True),
                ),
            )
            for url in settings.base_urls
        ]
        self._openai = openai
        self._local = threading.local()

    def _before_request(self, request: Any) -> None:
        if self.limiter is not None:
            self.limiter.acquire()

    def close(self) -> None:
        for endpoint in self.endpoints:
            endpoint.client.close()

    # -- one request -----------------------------------------------------------------------------------------------

    def post_json(self, endpoint: Endpoint, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST ``body`` to ``{url}/{path}`` (retried by the client) and return the reply's JSON object."""
        return self._call(endpoint, path, lambda: endpoint.client.post(path, body=dict(body), cast_to=self._raw()))

    def get_json(self, endpoint: Endpoint, path: str) -> dict[str, Any]:
        """GET ``{url}/{path}`` and return the reply's JSON object."""
        return self._call(endpoint, path, lambda: endpoint.client.get(path, cast_to=self._raw()))

    def _raw(self) -> Any:
        import httpx2

        return httpx2.Response

    def _call(self, endpoint: Endpoint, path: str, send: Callable[[], Any]) -> dict[str, Any]:
        openai = self._openai
        where = f"{endpoint.url}/{path.lstrip('/')}"
        tries = self.settings.max_retries + 1
        try:
            response = send()
        except openai.APITimeoutError:
            raise EndpointError(
                f"{where} did not answer within {self.settings.timeout_s:g} s ({tries} tries)", url=endpoint.url, retryable=True
            ) from None
        except openai.APIConnectionError as exc:
            cause = exc.__cause__
            reason = f"{type(cause).__name__}: {cause}" if cause else str(exc)
            raise EndpointError(
                f"could not connect to {where} ({tries} tries): {reason}", url=endpoint.url, retryable=True
            ) from None
        except openai.APIStatusError as exc:
            status = exc.status_code
            retried = status in (408, 409, 429) or status >= 500
            detail = _server_message(exc.body, exc.response)
            tail = f" (after {tries} tries)" if retried else ""
            raise EndpointError(
                f"HTTP {status} from {where}{tail}: {detail}", url=endpoint.url, status=status, retryable=retried
            ) from None
        text = response.text
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise EndpointError(
                f"{where} answered with something other than a JSON object: {clip(text)!r}", url=endpoint.url, body=text
            )
        return data

    # -- many requests ---------------------------------------------------------------------------------------------

    def executor(self) -> ThreadPoolExecutor:
        """A thread pool whose threads are bound to the URLs in turn (``concurrency`` threads per URL); a call
        running on it finds its thread's endpoint with :meth:`current`."""
        counter = iter(range(1 << 62))
        lock = threading.Lock()

        def bind() -> None:
            with lock:
                self._local.endpoint = self.endpoints[next(counter) % len(self.endpoints)]

        return ThreadPoolExecutor(
            max_workers=self.settings.concurrency * len(self.endpoints), thread_name_prefix="openai", initializer=bind
        )

    def current(self) -> Endpoint:
        """The endpoint of the calling worker thread (inside a call submitted to :meth:`executor`)."""
        endpoint: Endpoint = self._local.endpoint
        return endpoint

    def map(self, call: Callable[[Endpoint, T], R], items: Iterable[T]) -> list[R]:
        """``[call(endpoint, item) for item in items]`` with the pool's concurrency, in input order."""
        items = list(items)
        if not items:
            return []

        def run(item: T) -> R:
            return call(self.current(), item)

        pool = self.executor()
        try:
            futures: list[Future[R]] = [pool.submit(run, item) for item in items]
            return [f.result() for f in futures]
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def clip(text: str, limit: int = 300) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[:limit] + "..."


def _server_message(body: object, response: Any) -> str:
    """The server's own error message (OpenAI's ``{"error": {"message": ...}}`` when present), else its body."""
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return clip(error["message"])
        if isinstance(error, str):
            return clip(error)
        if isinstance(body.get("message"), str):
            return clip(body["message"])
        if isinstance(body.get("detail"), str):
            return clip(body["detail"])
    if isinstance(body, str) and body.strip():
        return clip(body)
    try:
        return clip(response.text) or response.reason_phrase or "no message"
    except Exception:  # a body that cannot be read: the status code still says enough
        return "no message"
