"""The ``openai`` judge: scores role-play answers on the paper's 0-3 scale with an OpenAI-compatible chat model.

Each answer becomes one ``POST {base_url}/chat/completions`` request (``temperature`` 0, a few output tokens) whose
prompt holds the rubric, the role's name and description, and the answer; the model replies with one digit.

* Any server that speaks the chat-completions protocol works (OpenAI, vLLM, llama.cpp's server, Ollama, ...).
* Requests go through the project's one OpenAI-compatible client (:mod:`backend.openai_client`, on the
  ``openai`` package): ``concurrency`` at a time, scores in input order. Connection errors, timeouts, HTTP
  408/429 and 5xx are retried by the ``openai`` client with exponential backoff and jitter, honouring
  ``Retry-After``; other 4xx (bad request, bad key, unknown model, ...) fail at once with the status code and the
  server's own message.
* A reply without a digit 0-3 is asked again at once, reminding the model to answer with one digit; when tries
  run out the error names the role and the last reply seen.
* ``rpm`` caps HTTP requests per minute on the client side (one limiter shared by all threads; retries count).

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

import hashlib
import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

from backend.catalogue import Archetype
from backend.errors import PersonaSpaceError
from backend.judges.embedding import Judged
from backend.openai_client import Clock, Endpoint, EndpointError, EndpointPool, EndpointSettings, RateLimiter, Sleep, clip

__all__ = ["LABELS", "RUBRIC", "JudgeError", "OpenAIJudge", "RateLimiter", "parse_score"]

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4.1-mini"
DEFAULT_CONCURRENCY = 8
DEFAULT_MAX_RETRIES = 5
DEFAULT_TIMEOUT_S = 60.0
KEY_VARIABLES = ("PERSONA_SPACE_JUDGE_API_KEY", "OPENAI_API_KEY")
ENV = "PERSONA_SPACE_JUDGE"
NO_KEY = (
    "the openai judge has no API key; set PERSONA_SPACE_JUDGE_API_KEY (or OPENAI_API_KEY) to the key of your "
    "chat-completions endpoint (any non-empty value for a local server that needs none)"
)

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


class JudgeError(PersonaSpaceError):
    """The LLM judge is misconfigured, or its endpoint failed or answered something unusable."""


def parse_score(reply: str) -> int | None:
    """The first stand-alone digit 0-3 in ``reply`` (``"Score: 3"`` -> 3; ``"10"`` and ``"5"`` -> None)."""
    match = SCORE.search(reply)
    return int(match.group()) if match else None


class OpenAIJudge:
    """Scores role-play answers 0-3 with a chat model behind an OpenAI-compatible ``/chat/completions`` endpoint.

    Args:
        archetypes: the roles that may be judged (their names and descriptions go into the prompt).
        api_key: the bearer key sent as ``Authorization: Bearer ...``; required.
        base_url: the endpoint root; ``/chat/completions`` is appended.
        model: the judge model's name, sent as ``model``.
        concurrency: requests in flight at once.
        max_retries: retries per request after the first try (transport errors, 408/429/5xx), and further asks
            per answer after an unparseable reply.
        rpm: optional client-side limit on HTTP requests per minute (retries count too).
        timeout_s: per-request timeout in seconds.
        max_tokens: the reply length asked for (one digit needs very few).
        sleep, clock: injectable for tests (the rate limiter's waiting and clock).
    """

    name = "openai"
    scale = "0-3"  # what a score is, for the refusal below; a subclass judging on another scale sets its own
    asked = "in role"
    nudge = NUDGE

    def parse(self, reply: str) -> int | None:
        """The score in the judge model's reply, or None when it gave none."""
        return parse_score(reply)

    def verdict(self, score: int) -> str:
        return LABELS[score]

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
        sleep: Sleep = time.sleep,
        clock: Clock = time.monotonic,
    ) -> None:
        if not api_key:
            raise JudgeError(NO_KEY)
        if not model:
            raise JudgeError("the judge model name is empty; set PERSONA_SPACE_JUDGE_MODEL (e.g. gpt-4.1-mini)")
        if max_tokens < 1:
            raise JudgeError(f"the judge's max_tokens must be at least 1, got {max_tokens}")
        try:
            settings = EndpointSettings(
                (base_url.rstrip("/"),), api_key, concurrency=concurrency, max_retries=max_retries, timeout_s=timeout_s, rpm=rpm
            )
        except PersonaSpaceError as exc:
            raise JudgeError(f"judge settings: {exc}; see the PERSONA_SPACE_JUDGE_* variables") from None
        self.archetypes = {a.name: a for a in archetypes}
        self.api_key = api_key
        self.base_url = settings.base_urls[0]
        self.url = self.base_url + "/chat/completions"
        self.model = model
        self.identity = f"openai {self.base_url} {model} rubric={hash_text(RUBRIC)}"
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self.max_tokens = max_tokens
        self.pool = EndpointPool(settings, clock=clock, sleep=sleep)
        self.limiter = self.pool.limiter

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
        key = next((env.get(v, "").strip() for v in KEY_VARIABLES if env.get(v, "").strip()), None)
        if key is None:
            raise JudgeError(NO_KEY)
        try:
            s = EndpointSettings.from_env(
                ENV,
                env,
                default_base_url=DEFAULT_BASE_URL,
                default_api_key=key,
                defaults={"concurrency": DEFAULT_CONCURRENCY, "max_retries": DEFAULT_MAX_RETRIES, "timeout_s": DEFAULT_TIMEOUT_S},
            )
        except PersonaSpaceError as exc:
            raise JudgeError(str(exc)) from None
        return cls(
            archetypes,
            s.api_key,
            base_url=s.base_urls[0],
            model=env.get(f"{ENV}_MODEL", "").strip() or DEFAULT_MODEL,
            concurrency=s.concurrency,
            max_retries=s.max_retries,
            rpm=s.rpm,
            timeout_s=s.timeout_s,
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
        return self.pool.map(
            lambda endpoint, pair: self.judge_one(*pair, endpoint=endpoint), list(zip(roles, texts, strict=True))
        )

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

    def judge_one(self, role: str, text: str, endpoint: Endpoint | None = None) -> Judged:
        """Score one answer; an unparseable reply is asked again, up to ``max_retries`` more times."""
        base = self.messages(role, text)
        messages = base
        reply = ""
        tries = self.max_retries + 1
        for _ in range(tries):
            reply = self.complete(messages, endpoint or self.pool.endpoints[0], role)
            score = self.parse(reply)
            if score is not None:
                return Judged(score, f"{self.name} {self.model}: {self.verdict(score)}")
            messages = [*base, {"role": "assistant", "content": reply}, {"role": "user", "content": self.nudge}]
        raise JudgeError(
            f"the judge model {self.model} gave no score {self.scale} for an answer {self.asked} {role!r} after {tries} "
            f"tries; its last reply was {clip(reply)!r}. Choose a model that follows instructions "
            "(PERSONA_SPACE_JUDGE_MODEL) or check what the endpoint returns"
        )

    def complete(self, messages: list[dict[str, str]], endpoint: Endpoint, role: str = "?") -> str:
        """One chat-completions request (retried by the client); returns the reply text."""
        body: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": 0, "max_tokens": self.max_tokens}
        try:
            data = self.pool.post_json(endpoint, "chat/completions", body)
        except EndpointError as exc:
            if exc.retryable:
                raise JudgeError(
                    f"the judge endpoint failed for an answer in role {role!r} after {self.max_retries + 1} tries; the "
                    f"last failure was: {exc}. Check that the server is up and reachable, or allow more retries "
                    "(PERSONA_SPACE_JUDGE_MAX_RETRIES), fewer parallel requests (PERSONA_SPACE_JUDGE_CONCURRENCY) or a "
                    "requests-per-minute limit (PERSONA_SPACE_JUDGE_RPM)"
                ) from None
            if exc.status is None:
                raise JudgeError(_not_chat(self.url, exc.body or "")) from None
            raise JudgeError(f"{exc}. {_advice(exc.status)}") from None
        try:
            content = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise JudgeError(_not_chat(self.url, json.dumps(data))) from None
        return content if isinstance(content, str) else ""


def _not_chat(url: str, raw: str) -> str:
    return (
        f"{url} answered with something other than a chat-completions response: {clip(raw)!r}. Check "
        "PERSONA_SPACE_JUDGE_BASE_URL (it should end where /chat/completions can be appended, e.g. .../v1)"
    )


def _advice(status: int) -> str:
    if status in (401, 403):
        return "Check the API key (PERSONA_SPACE_JUDGE_API_KEY or OPENAI_API_KEY) and that it may use this model"
    if status == 404:
        return "Check the endpoint (PERSONA_SPACE_JUDGE_BASE_URL, e.g. .../v1) and the model name (PERSONA_SPACE_JUDGE_MODEL)"
    return "Check the judge settings (PERSONA_SPACE_JUDGE_BASE_URL, PERSONA_SPACE_JUDGE_MODEL)"


def hash_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]
