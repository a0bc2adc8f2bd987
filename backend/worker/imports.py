"""A session export checked before it enters the database (``POST /sessions/import``).

Every field that is stored is validated here: types without coercion (``"yes"`` is not a boolean, ``1.5`` not an
id), integers SQLite can store, finite numbers, bounded text lengths and counts. Every JSON text is made here, so
the database holds its lock only for the inserts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, TypeAdapter, ValidationError, field_validator

from backend.worker.schemas import MAX_MESSAGE_CHARS, MAX_SYSTEM_CHARS, MAX_TITLE_CHARS, Controls, WindowError, fit_controls

MAX_TURNS = 10_000
MAX_EVENTS = 200_000
MAX_REPLY_CHARS = 64_000  # a reply of MAX_NEW_TOKENS tokens, with room
MAX_JSON_CHARS = 20_000  # one event's data or one turn's summary, as JSON
MAX_ID = 2**62
SQLITE_INT = 2**63 - 1

Id = Annotated[StrictInt, Field(ge=0, le=MAX_ID)]


class ExportError(ValueError):
    """An export that cannot be imported; the message names the field."""


class _Lenient(BaseModel):
    # extra keys (seq, time, session_id, created, ...) are exported too and ignored on import
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, strict=True)


class _Session(_Lenient):
    system: StrictStr | None = Field(None, max_length=MAX_SYSTEM_CHARS)
    title: StrictStr | None = Field(None, max_length=MAX_TITLE_CHARS)
    controls: dict[str, Any]


class _Turn(_Lenient):
    id: Id
    role: StrictStr
    variant: Literal["single", "capped", "uncapped"] = "single"
    reply_to: Id | None = None
    content: StrictStr = Field(max_length=MAX_REPLY_CHARS)
    status: Literal["done", "stopped", "error", "incomplete", "queued", "running"] = "done"
    seed: Annotated[StrictInt, Field(ge=-SQLITE_INT, le=SQLITE_INT)] | None = None
    summary: dict[str, Any] | None = None
    undone: StrictBool = False

    @field_validator("role")
    @classmethod
    def _role(cls, value: str) -> str:
        if value not in ("user", "assistant"):
            raise ValueError("role must be user/assistant")
        return value


class _Event(_Lenient):
    type: StrictStr = Field(max_length=40)
    turn: Id | None = None
    data: dict[str, Any] = Field(default_factory=dict)


class _Export(_Lenient):
    format: Literal["persona-space-session"]
    session: _Session
    turns: list[_Turn] = Field(max_length=MAX_TURNS)
    events: list[Any] = Field(max_length=MAX_EVENTS)  # checked in batches (see _events)


_EVENTS = TypeAdapter(list[_Event])
BATCH = 500


def _events(raw: list[Any]) -> list[_Event]:
    """Validate events a batch at a time: pydantic holds the GIL while it validates, and a 19 MB import validated at
    once would stall every other request for a second or more."""
    out: list[_Event] = []
    for start in range(0, len(raw), BATCH):
        try:
            out.extend(_EVENTS.validate_python(raw[start : start + BATCH]))
        except ValidationError as exc:
            err = exc.errors(include_url=False, include_input=False)[0]
            loc = list(err.get("loc", ()))
            where = ".".join(str(x) for x in ["events", start + int(loc[0]), *loc[1:]]) if loc else "events"
            raise ExportError(f"the session export is malformed: {where}: {err.get('msg', 'invalid')}") from exc
    return out


@dataclass
class PreparedTurn:
    id: int
    role: str
    variant: str
    reply_to: int | None
    content: str
    status: str
    seed: int | None
    summary_json: str | None
    end_json: str  # the turn_end event's data, without turn and status
    undone: bool


@dataclass
class Prepared:
    system: str | None
    title: str | None
    controls: dict[str, Any]
    controls_json: str
    turns: list[PreparedTurn]
    tokens: dict[int, list[str]] = field(default_factory=dict)  # old turn id -> token event JSON texts (no ``turn``)


def describe(exc: ValidationError, prefix: str = "") -> str:
    """A pydantic error as one readable line: ``where: what`` for each problem, no input repr, no URL."""
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(x) for x in err.get("loc", ())) or "body"
        message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{prefix}{where}: {message}")
    return "; ".join(parts[:5]) + (f" (and {len(parts) - 5} more)" if len(parts) > 5 else "")


def _json(value: Any, where: str) -> str:
    try:
        text = json.dumps(value, allow_nan=False)
    except (ValueError, TypeError, RecursionError) as exc:
        raise ExportError(f"{where}: must be plain JSON with finite numbers ({exc})") from exc
    if len(text) > MAX_JSON_CHARS:
        raise ExportError(f"{where}: {len(text)} characters of JSON, at most {MAX_JSON_CHARS}")
    return text


def prepare(data: Any, controls: Controls) -> Prepared:
    """Check an export (already decoded JSON) and make every text the import will store.

    ``controls`` are the export's controls, already checked against the loaded model by the caller."""
    try:
        export = _Export.model_validate(data)
    except ValidationError as exc:
        raise ExportError("the session export is malformed: " + describe(exc)) from exc
    turns: list[PreparedTurn] = []
    seen: set[int] = set()
    for t in sorted(export.turns, key=lambda t: t.id):
        if t.id in seen:
            raise ExportError(f"turn {t.id} appears twice")
        seen.add(t.id)
        summary = {k: v for k, v in (t.summary or {}).items() if k not in ("turn", "status")}
        status = "incomplete" if t.status in ("queued", "running") else t.status
        if t.role == "user" and len(t.content) > MAX_MESSAGE_CHARS:
            raise ExportError(f"turn {t.id}: a user message has at most {MAX_MESSAGE_CHARS} characters")
        turns.append(
            PreparedTurn(
                id=t.id, role=t.role, variant=t.variant, reply_to=t.reply_to, content=t.content, status=status, seed=t.seed,
                summary_json=_json(t.summary, f"turn {t.id}: summary") if t.summary else None,
                end_json=_json(summary, f"turn {t.id}: summary"), undone=t.undone,
            )
        )  # fmt: skip
    tokens: dict[int, list[str]] = {}
    for i, e in enumerate(_events(export.events)):
        if e.type != "token":
            continue  # the other events are made again from the turns
        if e.turn is None or e.turn not in seen:
            raise ExportError(f"events.{i}: a token event must name one of the exported turns")
        tokens.setdefault(e.turn, []).append(_json({k: v for k, v in e.data.items() if k != "turn"}, f"events.{i}.data"))
    plain = controls.model_dump(mode="json")
    return Prepared(
        system=export.session.system, title=export.session.title or None, controls=plain,
        controls_json=_json(plain, "session.controls"), turns=turns, tokens=tokens,
    )  # fmt: skip


def check(data: Any, n_layers: int, cap_window: tuple[int, int]) -> Prepared:
    """Check an export (already decoded JSON) for a model with ``n_layers`` layers and the space's ``cap_window``,
    controls included, and make every text the import will store. Raises ``ExportError``."""
    if not isinstance(data, dict) or data.get("format") != "persona-space-session":
        raise ExportError("not a Persona Space session export (expected format 'persona-space-session')")
    session = data.get("session")
    try:
        controls = Controls.model_validate(session.get("controls") if isinstance(session, dict) else None)
        controls = fit_controls(controls, n_layers, cap_window)
    except ValidationError as exc:
        raise ExportError("the session export is malformed: " + describe(exc, "session.controls.")) from exc
    except WindowError as exc:
        raise ExportError(str(exc)) from exc
    return prepare(data, controls)
