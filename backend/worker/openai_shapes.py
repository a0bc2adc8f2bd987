"""The OpenAI-compatible chat API's shapes, pure: the request (validated by pydantic, unsupported fields refused),
its mapping onto the worker's :class:`~backend.worker.schemas.Controls`, and the responses (chunks, completions,
errors) built from a turn's stored events.

Interventions and telemetry travel in one extension key, ``persona_space``, at the top level of the request (the
``openai`` client sends it with ``extra_body``) and of every response object (clients that do not know it ignore it)::

    request:  "persona_space": {"cap": {"percentile": 75, "window": [21, 27]} | {"threshold": 3.2} | null | "off",
                                "steer": {"coefficient": 1.0, "window": [20, 21], "trait": "dramatic"}}
    chunk:    "persona_space": {"projections": [...], "cap_deltas": [[...], ...], "token_ids": [...]}
    last:     "persona_space": {..., "turn": {"mean_projection", "layer", "pca", "umap_2d", "umap_3d", "nearest",
                                          "traits" (when the space has traits)},
                                "prompt_projection": p, "session": sid, "turn_id": n}

Windows are half-open ``[start, stop)`` layer ranges, as everywhere in the worker. Without ``cap`` the server's
default applies (``serve --cap``); ``cap: null`` or ``"off"`` turns it off for the request. ``steer.trait`` steers along
one of the space's trait vectors instead of the axis (+ toward expressing the trait; same normalised scale).
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, field_validator, model_validator

from backend.errors import PersonaSpaceError
from backend.worker.schemas import MAX_NEW_TOKENS, MAX_THRESHOLD, MAX_TRAIT_CHARS, MIN_TEMPERATURE, MIN_TOP_P, Controls

MAX_API_MESSAGES = 256
MAX_API_CONTENT_CHARS = 32_000
MAX_STOP_STRINGS = 4  # as OpenAI allows
MAX_STOP_CHARS = 200
DEFAULT_MAX_TOKENS = 512  # when a request names none (clipped to the context left): fits the compiled 1 x 1024 step


class OpenAIError(PersonaSpaceError):
    """An error answered in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
          409: "conflict_error", 413: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error",
          503: "service_unavailable"}  # fmt: skip


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error object for an answer with ``status``."""
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


# request --------------------------------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def _window(window: tuple[int, int] | None, name: str) -> None:
    if window is not None and not (0 <= window[0] < window[1]):
        raise ValueError(f"{name} must be [start, stop) with 0 <= start < stop, got {list(window)}")


class CapSpec(_Strict):
    """A cap for one request: a percentile of the space's pool or an absolute threshold (not both) on a window."""

    percentile: float | None = Field(None, ge=0, le=100)
    threshold: float | None = Field(None, ge=-MAX_THRESHOLD, le=MAX_THRESHOLD)
    window: tuple[int, int] | None = None

    @model_validator(mode="after")
    def _one(self) -> CapSpec:
        if self.percentile is not None and self.threshold is not None:
            raise ValueError("give percentile or threshold, not both")
        _window(self.window, "window")
        return self


class SteerSpec(_Strict):
    """Steering along the axis (or the space's trait ``trait``), in multiples of the layer's mean activation norm, on
    a window."""

    coefficient: float = Field(..., ge=-4, le=4)
    window: tuple[int, int] | None = None
    trait: str | None = Field(None, min_length=1, max_length=MAX_TRAIT_CHARS)

    @model_validator(mode="after")
    def _check(self) -> SteerSpec:
        _window(self.window, "window")
        return self


class PersonaSpaceExt(_Strict):
    cap: CapSpec | Literal["off", "default"] | None = "default"  # absent: the server's default; null or "off": none
    steer: SteerSpec | None = None


class TextPart(_Strict):
    type: Literal["text"]
    text: str = Field(..., max_length=MAX_API_CONTENT_CHARS)


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] = Field(..., max_length=MAX_API_CONTENT_CHARS)
    name: str | None = Field(None, max_length=64)

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(_Strict):
    include_usage: StrictBool = False
    include_obfuscation: StrictBool | None = None  # newer clients send it; there is nothing to obfuscate


class ChatRequest(_Strict):
    model: str = Field(..., min_length=1, max_length=500)
    messages: list[ChatMessage] = Field(..., min_length=1, max_length=MAX_API_MESSAGES)
    max_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    stop: str | list[str] | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    persona_space: PersonaSpaceExt | None = None
    # accepted because they change nothing here: identifiers, storage hints, neutral values of unsupported features
    user: str | None = Field(None, max_length=500)
    metadata: dict[str, str] | None = None
    store: StrictBool | None = None
    service_tier: str | None = Field(None, max_length=50)
    parallel_tool_calls: StrictBool | None = None

    @field_validator("messages")
    @classmethod
    def _last_is_users(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        if messages and messages[-1].role != "user":
            raise ValueError(f"the last message must be the user's (got {messages[-1].role!r}): the reply follows it")
        return messages

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        stops = [stop] if isinstance(stop, str) else list(stop or ())
        if len(stops) > MAX_STOP_STRINGS or any(not s or len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"stop takes at most {MAX_STOP_STRINGS} non-empty strings of at most {MAX_STOP_CHARS} characters")
        return stop

    @model_validator(mode="after")
    def _one_limit(self) -> ChatRequest:
        if (
            self.max_tokens is not None
            and self.max_completion_tokens is not None
            and self.max_tokens != self.max_completion_tokens
        ):
            raise ValueError("max_tokens and max_completion_tokens differ; give one")
        return self

    def stop_strings(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    def limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def conversation(self) -> tuple[str | None, list[dict[str, str]]]:
        """The system text (every system or developer message, joined) and the user/assistant turns in order."""
        system = [m.text() for m in self.messages if m.role in ("system", "developer")]
        turns = [{"role": m.role, "content": m.text()} for m in self.messages if m.role in ("user", "assistant")]
        return ("\n\n".join(system) if system else None), turns


# field -> whether a value is neutral (accepted and changes nothing); any other value is refused with a 400
_UNSUPPORTED: dict[str, Any] = {
    "n": lambda v: v in (None, 1),
    "tools": lambda v: v in (None, []),
    "tool_choice": lambda v: v in (None, "none"),
    "functions": lambda v: v in (None, []),
    "function_call": lambda v: v in (None, "none"),
    "logprobs": lambda v: v in (None, False),
    "top_logprobs": lambda v: v in (None, 0),
    "logit_bias": lambda v: v in (None, {}),
    "presence_penalty": lambda v: v in (None, 0),
    "frequency_penalty": lambda v: v in (None, 0),
    "response_format": lambda v: v is None or v == {"type": "text"},
    "modalities": lambda v: v in (None, ["text"]),
    "audio": lambda v: v is None,
    "prediction": lambda v: v is None,
    "web_search_options": lambda v: v is None,
    "reasoning_effort": lambda v: v is None,
    "verbosity": lambda v: v is None,
}


def _param(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


_TYPE_NAMES = frozenset({"str", "int", "float", "bool", "dict", "list", "none"})


def _is_name(part: str) -> bool:
    """A field name in a validation error's location (not a union branch such as ``CapSpec`` or ``str``)."""
    return part.isidentifier() and part.islower() and part not in _TYPE_NAMES


def parse_request(body: Any) -> ChatRequest:
    """The validated request, or :class:`OpenAIError` (400) naming the first field at fault."""
    if not isinstance(body, dict):
        raise OpenAIError(400, "the request body must be a JSON object", None, "invalid_request")
    for name, neutral in _UNSUPPORTED.items():
        if name in body and not neutral(body[name]):
            raise OpenAIError(
                400, f"{name}={str(body[name])[:80]} is not supported by this server (it serves one text reply per request)",
                name, "unsupported_parameter",
            )  # fmt: skip
    try:
        return ChatRequest.model_validate({k: v for k, v in body.items() if k not in _UNSUPPORTED})
    except ValidationError as exc:
        err = exc.errors()[0]
        # a union's branches add their names to the location (e.g. "CapSpec"); the request's own names are lower case
        loc = [x for x in err.get("loc", ()) if isinstance(x, int) or _is_name(str(x))]
        param = _param(loc) or None
        if err.get("type") == "extra_forbidden":
            raise OpenAIError(400, f"Unrecognized request argument supplied: {param}", param, "unknown_parameter") from exc
        message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        where = f"Invalid value for '{param}': " if param else "Invalid request: "
        raise OpenAIError(400, (where + message)[:500], param, "invalid_value") from exc


def to_controls(request: ChatRequest, base: Controls) -> Controls:
    """The controls of ``request`` over the server's default ``base`` (its cap; nothing else of it is kept).

    Temperature 0 is greedy; OpenAI's defaults (temperature 1, top_p 1) apply where the request names none; no
    repetition penalty (OpenAI's API has none); without a seed, a random one."""
    ext = request.persona_space or PersonaSpaceExt()
    cap: dict[str, Any] = {
        "cap_enabled": base.cap_enabled, "cap_percentile": base.cap_percentile, "cap_threshold": base.cap_threshold,
        "cap_layers": base.cap_layers,
    }  # fmt: skip
    if ext.cap is None or ext.cap == "off":
        cap["cap_enabled"] = False
    elif isinstance(ext.cap, CapSpec):
        cap = {
            "cap_enabled": True, "cap_threshold": ext.cap.threshold, "cap_layers": ext.cap.window or base.cap_layers,
            "cap_percentile": ext.cap.percentile if ext.cap.percentile is not None else base.cap_percentile,
        }  # fmt: skip
    temperature = 1.0 if request.temperature is None else request.temperature
    return Controls(
        **cap,
        steer_coefficient=ext.steer.coefficient if ext.steer is not None else 0.0,
        steer_layers=ext.steer.window if ext.steer is not None else None,
        steer_trait=ext.steer.trait if ext.steer is not None else None,
        greedy=temperature == 0,
        temperature=max(temperature, MIN_TEMPERATURE) if temperature > 0 else 1.0,
        top_p=max(request.top_p if request.top_p is not None else 1.0, MIN_TOP_P),
        seed=request.seed if request.seed is not None else secrets.randbelow(2**31),
        max_new_tokens=request.limit() or DEFAULT_MAX_TOKENS,
        repetition_penalty=1.0,
    )


def parse_cap_flag(text: str) -> str:
    """``serve --cap``: ``default`` (the space's preset, else p75 on its cap window), ``off``, or ``pN`` (N in 0..100)."""
    value = text.strip().lower()
    if value in ("default", "off"):
        return value
    if value.startswith("p"):
        try:
            n = float(value[1:])
        except ValueError:
            n = -1.0
        if 0 <= n <= 100:
            return value
    raise PersonaSpaceError(f"--cap {text!r}: give default, off, or pN with N a percentile from 0 to 100 (e.g. p75)")


# responses ------------------------------------------------------------------------------------------------------


def completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def now() -> int:
    return int(time.time())


def finish_reason(summary: dict[str, Any]) -> str:
    """``length`` when the turn ran out of tokens (its limit or the context), else ``stop``."""
    return "length" if summary.get("reason") == "max_new_tokens reached" else "stop"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def telemetry(tokens: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """``persona_space`` of a chunk: per token its projection, what the cap moved at each capped layer, its id."""
    events = list(tokens)
    return {
        "projections": [e["projection"] for e in events],
        "cap_deltas": [e.get("cap_deltas", []) for e in events],
        "token_ids": [e["token_id"] for e in events],
    }


TURN_KEYS = ("mean_projection", "layer", "pca", "umap_2d", "umap_3d", "nearest", "placement_error", "traits")


def turn_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """``persona_space.turn``: where the reply's mean activation falls in the space (as the chat's turn summary)."""
    return {k: summary[k] for k in TURN_KEYS if k in summary}


def chunk(
    cid: str, created: int, model: str, delta: dict[str, Any], finish: str | None = None,
    persona_space: dict[str, Any] | None = None,
) -> dict[str, Any]:  # fmt: skip
    out: dict[str, Any] = {
        "id": cid, "object": "chat.completion.chunk", "created": created, "model": model, "system_fingerprint": None,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }  # fmt: skip
    if persona_space is not None:
        out["persona_space"] = persona_space
    return out


def usage_chunk(cid: str, created: int, model: str, counts: dict[str, int]) -> dict[str, Any]:
    return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model, "system_fingerprint": None,
            "choices": [], "usage": counts}  # fmt: skip


def completion(
    cid: str, created: int, model: str, text: str, finish: str, counts: dict[str, int], persona_space: dict[str, Any]
) -> dict[str, Any]:
    return {
        "id": cid, "object": "chat.completion", "created": created, "model": model, "system_fingerprint": None,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                     "logprobs": None, "finish_reason": finish}],
        "usage": counts, "persona_space": persona_space,
    }  # fmt: skip


def models_list(names: Sequence[str], created: int) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"id": n, "object": "model", "created": created, "owned_by": "persona-space"} for n in names],
    }


# stop strings ---------------------------------------------------------------------------------------------------


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the first stop string it holds (excluded), and whether it held one."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


class StopScanner:
    """Releases streamed text only once no stop string can start in it: the tail that is a prefix of a stop string
    is held back until the next piece says whether it was one. What it releases is always a prefix of
    :func:`cut_at_stop` of the whole text."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(stops)
        self.text = ""
        self.released = 0
        self.stopped = False

    def feed(self, piece: str) -> str:
        if self.stopped:
            return ""
        self.text += piece
        cut, self.stopped = cut_at_stop(self.text, self.stops)
        safe = len(cut)
        if not self.stopped:
            for s in self.stops:  # the longest tail that a stop string begins with
                for k in range(min(len(s) - 1, len(cut)), 0, -1):
                    if cut.endswith(s[:k]):
                        safe = min(safe, len(cut) - k)
                        break
        out = cut[self.released : safe]
        self.released = max(self.released, safe)
        return out

    def rest(self, final: str) -> str:
        """What is left to release once the turn ended with the text ``final`` (already cut at its stop string)."""
        return final[self.released :] if final.startswith(self.text[: self.released]) else ""
