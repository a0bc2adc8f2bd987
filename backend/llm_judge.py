"""The ``openai`` judge: scores role-play answers on the paper's 0-3 scale with an OpenAI-compatible chat model.

Each answer becomes one ``POST {base_url}/chat/completions`` request (``temperature`` 0, a few output tokens) whose
prompt holds the rubric, the role's name and description, and the answer; the model replies with one digit.

* Any server that speaks the chat-completions protocol works (OpenAI, vLLM, llama.cpp's server, Ollama, ...).
* Requests run on a thread pool (``concurrency`` at a time); scores come back in input order.
* Connection errors, timeouts, HTTP 408/429 and 5xx are retried with exponential backoff and jitter; a
  ``Retry-After`` header (seconds or an HTTP date) is honoured. Other 4xx (bad request, bad key, unknown model, ...)
  fail at once with the status code and the server's own message.
* A reply without a digit 0-3 is retried, reminding the model to answer with one digit; when retries run out the
  error names the role and the last reply seen.
* ``rpm`` caps requests per minute on the client side (one limiter shared by all threads).

Configuration from the environment (:meth:`OpenAIJudge.from_env`):

==================================== ============================================================
``PERSONA_SPACE_JUDGE_BASE_URL``     endpoint root, default ``https://api.openai.com/v1``
``PERSONA_SPACE_JUDGE_MODEL``        judge model, default ``gpt-4.1-mini``
``PERSONA_SPACE_JUDGE_API_KEY``      bearer key; falls back to ``OPENAI_API_KEY``
``PERSONA_SPACE_JUDGE_CONCURRENCY``  requests in flight, default 8
``PERSONA_SPACE_JUDGE_MAX_RETRIES``  retries per answer after the first try, default 5
``PERSONA_SPACE_JUDGE_RPM``          optional requests-per-minute limit
``PERSONA_SPACE_JUDGE_TIMEOUT_S``    optional per-request timeout in seconds, default 60
==================================== ============================================================
"""

from __future__ import annotations

import email.utils
import http.client
import json
import os
import random
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from backend.catalogue import Archetype
from backend.errors import PersonaSpaceError
from backend.judge import Judged

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4.1-mini"
DEFAULT_CONCURRENCY = 8
DEFAULT_MAX_RETRIES = 5
DEFAULT_TIMEOUT_S = 60.0
KEY_VARIABLES = ("PERSONA_SPACE_JUDGE_API_KEY", "OPENAI_API_KEY")

RUBRIC = """\
You grade role-play. A language model was told in its system prompt to take on a role and was then asked a \
question. You are shown the role and the model's answer. Rate how fully the answer stays in the role:

0 - No trace of the role: the answer says it is an AI (or a language model, or an assistant) or refuses to answer.
1 - No trace of the role: the answer simply responds the way a generic AI assistant would.
2 - The answer says it is an AI (or a language model, or an assistant), but it also shows some traits of the role.
3 - The answer fully plays the role: it speaks as the character and never steps out of it.

Reply with a single digit - 0, 1, 2 or 3 - and nothing else."""

NUDGE = "That reply did not contain a score. Reply with a single digit: 0, 1, 2 or 3."

LABELS = {
    0: "no trace of the role, says it is an AI or refuses",
    1: "no trace of the role, answers as an AI assistant",
    2: "says it is an AI, shows some role traits",
    3: "fully plays the role",
}

SCORE = re.compile(r"(?<!\d)[0-3](?!\d)")
RETRYABLE_STATUS = frozenset({408, 429})
MAX_RETRY_AFTER_S = 300.0

Sleep = Callable[[float], None]
Clock = Callable[[], float]


class JudgeError(PersonaSpaceError):
    """The LLM judge is misconfigured, or its endpoint failed or answered something unusable."""


class _Retryable(Exception):
    """A failed request that may succeed if tried again (``retry_after``: the server's wish, in seconds)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def parse_score(reply: str) -> int | None:
    """The first stand-alone digit 0-3 in ``reply`` (``"Score: 3"`` -> 3; ``"10"`` and ``"5"`` -> None)."""
    match = SCORE.search(reply)
    return int(match.group()) if match else None


def parse_retry_after(value: str | None, now: Callable[[], float] = time.time) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: a number of seconds or an HTTP date; None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - now()
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


class RateLimiter:
    """Spaces calls to :meth:`acquire` at least ``60 / rpm`` seconds apart, across all threads.

    Each caller reserves the next free slot under a lock and then sleeps (outside the lock) until that slot, so
    waiting callers queue up in arrival order without blocking one another's bookkeeping.
    """

    def __init__(self, rpm: float, clock: Clock = time.monotonic, sleep: Sleep = time.sleep) -> None:
        if not rpm > 0:
            raise JudgeError(f"the requests-per-minute limit must be a positive number, got {rpm}")
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


class OpenAIJudge:
    """Scores role-play answers 0-3 with a chat model behind an OpenAI-compatible ``/chat/completions`` endpoint.

    Args:
        archetypes: the roles that may be judged (their names and descriptions go into the prompt).
        api_key: the bearer key sent as ``Authorization: Bearer ...``; required.
        base_url: the endpoint root; ``/chat/completions`` is appended.
        model: the judge model's name, sent as ``model``.
        concurrency: requests in flight at once.
        max_retries: retries per answer after the first try (transport errors, 408/429/5xx, unparseable replies).
        rpm: optional client-side limit on requests per minute (retries count too).
        timeout_s: per-request timeout in seconds.
        max_tokens: the reply length asked for (one digit needs very few).
        backoff_s: the first backoff delay; it doubles with every retry, up to ``max_backoff_s``, with jitter.
        sleep, clock, rng: injectable for tests (waiting, the rate limiter's clock, the jitter).
    """

    name = "openai"

    def __init__(
        self,
        archetypes: Sequence[Archetype],
        api_key: str | None,
        *,
        base_url: str = DEFAULT_BASE_URL,
        model: str = DEFAULT_MODEL,
        concurrency: int = DEFAULT_CONCURRENCY,
        max_retries: int = DEFAULT_MAX_RETRIES,
        rpm: float | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_tokens: int = 5,
        backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        sleep: Sleep = time.sleep,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if not api_key:
            raise JudgeError(
                "the openai judge has no API key; set PERSONA_SPACE_JUDGE_API_KEY (or OPENAI_API_KEY) to the key of "
                "your chat-completions endpoint (any non-empty value for a local server that needs none)"
            )
        parsed = urllib.parse.urlparse(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise JudgeError(
                f"the judge's base URL {base_url!r} is not an http(s) URL; set PERSONA_SPACE_JUDGE_BASE_URL to "
                "something like https://api.openai.com/v1 or http://localhost:8000/v1"
            )
        if not model:
            raise JudgeError("the judge model name is empty; set PERSONA_SPACE_JUDGE_MODEL (e.g. gpt-4.1-mini)")
        if concurrency < 1:
            raise JudgeError(f"the judge's concurrency must be at least 1, got {concurrency}")
        if max_retries < 0:
            raise JudgeError(f"the judge's max_retries must be 0 or more, got {max_retries}")
        if not timeout_s > 0:
            raise JudgeError(f"the judge's timeout must be a positive number of seconds, got {timeout_s}")
        if max_tokens < 1:
            raise JudgeError(f"the judge's max_tokens must be at least 1, got {max_tokens}")
        self.archetypes = {a.name: a for a in archetypes}
        self.api_key = api_key
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/chat/completions"
        self.model = model
        self.identity = f"openai {self.base_url} {model} rubric={hash_text(RUBRIC)}"
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self.max_tokens = max_tokens
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.limiter = RateLimiter(rpm, clock=clock, sleep=sleep) if rpm is not None else None
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._rng_lock = threading.Lock()
        self._opener = urllib.request.build_opener()

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAIJudge(model={self.model!r}, base_url={self.base_url!r}, concurrency={self.concurrency})"

    @classmethod
    def from_env(
        cls,
        archetypes: Sequence[Archetype],
        environ: Mapping[str, str] | None = None,
        *,
        sleep: Sleep = time.sleep,
        clock: Clock = time.monotonic,
    ) -> OpenAIJudge:
        """A judge configured from the ``PERSONA_SPACE_JUDGE_*`` variables (see the module docstring)."""
        env = os.environ if environ is None else environ

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
                raise JudgeError(f"{name}={value!r} is not {what}; fix or unset it") from None

        concurrency = number("PERSONA_SPACE_JUDGE_CONCURRENCY", int)
        max_retries = number("PERSONA_SPACE_JUDGE_MAX_RETRIES", int)
        timeout_s = number("PERSONA_SPACE_JUDGE_TIMEOUT_S", float)
        return cls(
            archetypes,
            text("PERSONA_SPACE_JUDGE_API_KEY") or text("OPENAI_API_KEY"),
            base_url=text("PERSONA_SPACE_JUDGE_BASE_URL") or DEFAULT_BASE_URL,
            model=text("PERSONA_SPACE_JUDGE_MODEL") or DEFAULT_MODEL,
            concurrency=DEFAULT_CONCURRENCY if concurrency is None else concurrency,
            max_retries=DEFAULT_MAX_RETRIES if max_retries is None else max_retries,
            rpm=number("PERSONA_SPACE_JUDGE_RPM", float),
            timeout_s=DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s,
            sleep=sleep,
            clock=clock,
        )

    # -- scoring -------------------------------------------------------------------------------------------------

    def score(self, roles: Sequence[str], texts: Sequence[str]) -> list[Judged]:
        """Scores of ``texts[i]`` as an answer in role ``roles[i]``, in input order.

        Raises :class:`JudgeError` for an unknown role (before any request) or when an answer cannot be scored;
        on the first failure the answers not yet started are cancelled.
        """
        if len(roles) != len(texts):
            raise JudgeError(f"the judge got {len(roles)} roles but {len(texts)} answers; they must pair up")
        unknown = sorted({r for r in roles if r not in self.archetypes})
        if unknown:
            raise JudgeError(
                f"the openai judge has no description for role(s) {unknown}; pass the archetypes of every role to be judged"
            )
        if not texts:
            return []
        if self.concurrency == 1 or len(texts) == 1:
            return [self.judge_one(r, t) for r, t in zip(roles, texts, strict=True)]
        pool = ThreadPoolExecutor(max_workers=min(self.concurrency, len(texts)), thread_name_prefix="openai-judge")
        try:
            futures: list[Future[Judged]] = [pool.submit(self.judge_one, r, t) for r, t in zip(roles, texts, strict=True)]
            return [f.result() for f in futures]
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def messages(self, role: str, text: str) -> list[dict[str, str]]:
        """The chat messages that ask the judge model to score one answer."""
        archetype = self.archetypes[role]
        user = (
            f"Role: {archetype.name}\n"
            f"Role description: {archetype.description}\n\n"
            f"The model's answer, between the markers:\n<<<ANSWER\n{text}\nANSWER>>>\n\n"
            "Score (0, 1, 2 or 3):"
        )
        return [{"role": "system", "content": RUBRIC}, {"role": "user", "content": user}]

    def judge_one(self, role: str, text: str) -> Judged:
        """Score one answer, retrying transport failures and unparseable replies up to ``max_retries`` times."""
        base = self.messages(role, text)
        messages = base
        last_reply: str | None = None
        last_error = ""
        tries = self.max_retries + 1
        for attempt in range(tries):
            try:
                reply = self.complete(messages)
            except _Retryable as exc:
                last_reply, last_error = None, str(exc)
                if attempt + 1 < tries:
                    self._sleep(exc.retry_after if exc.retry_after is not None else self.backoff(attempt))
                continue
            score = parse_score(reply)
            if score is not None:
                return Judged(score, f"{self.name} {self.model}: {LABELS[score]}")
            last_reply = reply
            messages = [*base, {"role": "assistant", "content": reply}, {"role": "user", "content": NUDGE}]
        if last_reply is not None:
            raise JudgeError(
                f"the judge model {self.model} gave no score 0-3 for an answer in role {role!r} after {tries} "
                f"tries; its last reply was {_clip(last_reply)!r}. Choose a model that follows instructions "
                "(PERSONA_SPACE_JUDGE_MODEL) or check what the endpoint returns"
            )
        raise JudgeError(
            f"the judge endpoint {self.url} failed for an answer in role {role!r} after {tries} tries; the last "
            f"failure was: {last_error}. Check that the server is up and reachable, or allow more retries "
            "(PERSONA_SPACE_JUDGE_MAX_RETRIES), fewer parallel requests (PERSONA_SPACE_JUDGE_CONCURRENCY) or a "
            "requests-per-minute limit (PERSONA_SPACE_JUDGE_RPM)"
        )

    def backoff(self, attempt: int) -> float:
        """Delay before retry ``attempt + 1``: ``backoff_s * 2**attempt`` capped at ``max_backoff_s``, times 0.5-1."""
        with self._rng_lock:
            jitter = 0.5 + 0.5 * self._rng.random()
        return min(self.max_backoff_s, self.backoff_s * 2.0**attempt) * jitter

    def complete(self, messages: list[dict[str, str]]) -> str:
        """One chat-completions request; returns the reply text.

        Raises ``_Retryable`` for failures worth another try and :class:`JudgeError` for the rest.
        """
        body = json.dumps({"model": self.model, "messages": messages, "temperature": 0, "max_tokens": self.max_tokens}).encode(
            "utf-8"
        )
        request = urllib.request.Request(
            self.url,
            data=body,
            method="POST",
            headers={
                "Authorization": f"Bearer {self.api_key}",
                "Content-Type": "application/json",
                "Accept": "application/json",
                "User-Agent": "persona-space-judge",
            },
        )
        if self.limiter is not None:
            self.limiter.acquire()
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            status = exc.code
            detail = _server_message(exc)
            retry_after = parse_retry_after(exc.headers.get("Retry-After") if exc.headers else None)
            exc.close()
            message = f"HTTP {status} from {self.url}: {detail}"
            if status in RETRYABLE_STATUS or status >= 500:
                raise _Retryable(message, retry_after) from None
            raise JudgeError(f"{message}. {_advice(status)}") from None
        except urllib.error.URLError as exc:
            raise _Retryable(f"could not connect to {self.url}: {exc.reason}") from None
        except (TimeoutError, ConnectionError, http.client.HTTPException) as exc:
            raise _Retryable(f"the request to {self.url} failed: {type(exc).__name__}: {exc}") from None
        return self._reply_text(raw)

    def _reply_text(self, raw: bytes) -> str:
        try:
            data = json.loads(raw)
            content = data["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise JudgeError(
                f"{self.url} answered with something other than a chat-completions response: "
                f"{_clip(raw.decode('utf-8', 'replace'))!r}. Check PERSONA_SPACE_JUDGE_BASE_URL (it should end "
                "where /chat/completions can be appended, e.g. .../v1)"
            ) from None
        return content if isinstance(content, str) else ""


def _clip(text: str, limit: int = 300) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[:limit] + "..."


def _server_message(exc: urllib.error.HTTPError) -> str:
    """The server's own error message (OpenAI's ``{"error": {"message": ...}}`` when present), else its body."""
    try:
        raw = exc.read().decode("utf-8", "replace")
    except Exception:  # the body may be unreadable; the status code still says enough
        return exc.reason if isinstance(exc.reason, str) else "no message"
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return _clip(error["message"])
        if isinstance(error, str):
            return _clip(error)
        if isinstance(data.get("message"), str):
            return _clip(data["message"])
    return _clip(raw) or (exc.reason if isinstance(exc.reason, str) else "no message")


def _advice(status: int) -> str:
    if status in (401, 403):
        return "Check the API key (PERSONA_SPACE_JUDGE_API_KEY or OPENAI_API_KEY) and that it may use this model"
    if status == 404:
        return "Check the endpoint (PERSONA_SPACE_JUDGE_BASE_URL, e.g. .../v1) and the model name (PERSONA_SPACE_JUDGE_MODEL)"
    return "Check the judge settings (PERSONA_SPACE_JUDGE_BASE_URL, PERSONA_SPACE_JUDGE_MODEL)"


def hash_text(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:12]
