"""A session export checked before it enters the database (``POST /sessions/import``).

Every field that is stored is validated here: types without coercion (``"yes"`` is not a boolean, ``1.5`` not an
id), integers SQLite can store, finite numbers, bounded text lengths and counts. Token events must have the shape
the chat page reads (:class:`_TokenData`), belong to an assistant turn and come in order. The session must export
within the import limit (:data:`MAX_IMPORT_BYTES`), so that its export can always be imported again. Every JSON text
is made here, so the database holds its lock only for the inserts. (Text UTF-8 cannot encode and nesting deeper
than :data:`backend.worker.json_check.MAX_DEPTH` are refused where the body is decoded, :mod:`backend.worker.importer`.)
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    field_validator,
)

from backend.worker.db_import import export_bytes
from backend.worker.schemas import MAX_MESSAGE_CHARS, MAX_SYSTEM_CHARS, MAX_TITLE_CHARS, Controls, WindowError, fit_controls

MiB = 2**20
# The body limit of POST /sessions/import, and so the most an export may hold: backend.worker.server.MAX_BODY (the
# limit of every request body) must not be lower. An import is refused when the session it would store could
# export to more than this (less EXPORT_HEADROOM, for the export's model and space names): every export re-imports.
MAX_IMPORT_BYTES = 20 * MiB
EXPORT_HEADROOM = 64 * 1024
MAX_TURNS = 10_000
# The smallest token event the chat page reads ({"index", "text": "", "projection"}) takes at most ~180 bytes of an
# export (every id counted at its widest): 100,000 of them in 100 exchanges export to at most 17.3 MiB, so this
# many can be imported, exported and imported again. The worker's own token events take ~450 bytes: about 46,000
# of them fit (see docs/worker-api.md, Limits).
MAX_TOKENS = 100_000
# Every event of an export, token events and those the import drops (made again from the turns, or only worth
# having live: queued, turn_start, controls, ...): a bound on the work done before the token events are counted.
MAX_EVENTS = MAX_TOKENS + 10 * MAX_TURNS
MAX_REPLY_CHARS = 64_000  # a reply of MAX_NEW_TOKENS tokens, with room
MAX_JSON_CHARS = 20_000  # one event's data or one turn's summary, as JSON
MAX_ID = 2**62
SQLITE_INT = 2**63 - 1

Id = Annotated[StrictInt, Field(ge=0, le=MAX_ID)]


class ExportError(ValueError):
    """An export that cannot be imported; the message names the field."""


class ExportTooLarge(ExportError):
    """An export whose session would export to more than an import accepts (answered 413)."""


class _Lenient(BaseModel):
    # extra keys (seq, time, session_id, created, ...) are exported too and ignored on import
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, strict=True)


class _Session(_Lenient):
    system: StrictStr | None = Field(None, max_length=MAX_SYSTEM_CHARS)
    title: StrictStr | None = Field(None, max_length=MAX_TITLE_CHARS)
    controls: dict[str, Any]
    kind: Literal["chat", "api"] = "chat"  # an OpenAI API request stays one (exports made before kinds: chat)


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
    seq: Id | None = None
    type: StrictStr = Field(max_length=40)
    turn: Id | None = None
    data: dict[str, Any] = Field(default_factory=dict)


def _number(value: Any) -> bool:
    """A finite JSON number a float can hold (what ``float()`` in the chat page reads); not a boolean."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _reading(value: Any) -> Any:
    if value is None or _number(value) or (isinstance(value, list) and all(_number(v) for v in value)):
        return value
    raise ValueError("must be a finite number, a list of them (one per capped layer) or null")


# A reading at each capped layer or at the first one. (Strict floats elsewhere: finite, allow_inf_nan=False; an
# integer a float can hold is accepted, a boolean is not.)
Reading = Annotated[Any, AfterValidator(_reading)]


class _TokenData(_Lenient):
    """A token event's data as the chat page reads it (``app/conversation.py``, ``app/live_charts.py``): the fields
    :func:`backend.worker.token_event.token_event` writes, each of its type; ``index``, ``text`` and ``projection``
    are required. Fields the worker does not write are kept as they are (they are checked as JSON only)."""

    index: Annotated[StrictInt, Field(ge=0, le=MAX_ID)]
    text: StrictStr
    projection: float
    token_id: StrictInt | None = None
    monitor_layer: StrictInt | None = None
    controls_version: StrictInt | None = None
    variant: StrictStr | None = None
    cap_on: StrictBool = False
    cap_layers: list[StrictInt] | None = None
    tau: Reading = None
    cap_delta: float | None = None
    cap_deltas: list[float] | None = None
    projection_before_cap: Reading = None
    projection_after_cap: Reading = None


class _Export(_Lenient):
    format: Literal["persona-space-session"]
    session: _Session
    turns: list[_Turn] = Field(max_length=MAX_TURNS)
    events: list[Any] = Field(max_length=MAX_EVENTS)  # checked in batches (see _events)


_EVENTS = TypeAdapter(list[_Event])
_TOKENS = TypeAdapter(list[_TokenData])
BATCH = 500


def _first_error(exc: ValidationError, where: list[Any]) -> ExportError:
    """The first problem of a batch's ``exc`` as an ExportError naming the event: ``where[i]`` is where the batch's
    item ``i`` lies in the export."""
    err = exc.errors(include_url=False, include_input=False)[0]
    loc = list(err.get("loc", ()))
    path = ".".join(str(x) for x in [*where[int(loc[0])], *loc[1:]]) if loc else "events"
    message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    return ExportError(f"the session export is malformed: {path}: {message}")


def _events(raw: list[Any]) -> list[_Event]:
    """Validate events, and the data of token events, a batch at a time: pydantic holds the GIL while it validates,
    and a 19 MB import validated at once would stall every other request for a second or more."""
    out: list[_Event] = []
    for start in range(0, len(raw), BATCH):
        batch = raw[start : start + BATCH]
        try:
            events = _EVENTS.validate_python(batch)
        except ValidationError as exc:
            raise _first_error(exc, [("events", start + i) for i in range(len(batch))]) from exc
        tokens = [i for i, e in enumerate(events) if e.type == "token"]
        try:
            _TOKENS.validate_python([events[i].data for i in tokens])
        except ValidationError as exc:
            raise _first_error(exc, [("events", start + i, "data") for i in tokens]) from exc
        out.extend(events)
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
    kind: str = "chat"  # the session's kind (backend.worker.db.SESSION_KINDS)


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
        text = json.dumps(value, allow_nan=False, separators=(",", ":"))
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
    roles = {t.id: t.role for t in export.turns}
    tokens: dict[int, list[str]] = {}
    last_seq: int | None = None
    last_index: dict[int, int] = {}
    n_tokens = 0
    for i, e in enumerate(_events(export.events)):
        if e.seq is not None:
            if last_seq is not None and e.seq <= last_seq:
                raise ExportError(f"events.{i}: seq {e.seq} after seq {last_seq}: events must be in sequence order")
            last_seq = e.seq
        if e.type != "token":
            continue  # the other events are made again from the turns
        if e.turn is None or e.turn not in seen:
            raise ExportError(f"events.{i}: a token event must name one of the exported turns")
        if roles[e.turn] != "assistant":
            raise ExportError(f"events.{i}: a token event of user turn {e.turn}: tokens belong to assistant turns")
        index = e.data["index"]
        if e.turn in last_index and index <= last_index[e.turn]:
            raise ExportError(
                f"events.{i}: token {index} of turn {e.turn} after token {last_index[e.turn]}: a turn's tokens must be in order"
            )
        last_index[e.turn] = index
        n_tokens += 1
        if n_tokens > MAX_TOKENS:
            raise ExportError(f"events.{i}: more than {MAX_TOKENS} token events")
        tokens.setdefault(e.turn, []).append(_json({k: v for k, v in e.data.items() if k != "turn"}, f"events.{i}.data"))
    plain = controls.model_dump(mode="json")
    return Prepared(
        system=export.session.system, title=export.session.title or None, controls=plain,
        controls_json=_json(plain, "session.controls"), turns=turns, tokens=tokens, kind=export.session.kind,
    )  # fmt: skip


def check(data: Any, n_layers: int, cap_window: tuple[int, int]) -> Prepared:
    """Check an export (already decoded JSON) for a model with ``n_layers`` layers and the space's ``cap_window``,
    controls included, and make every text the import will store. Raises ``ExportError``, or ``ExportTooLarge``
    when the session could export to more than :data:`MAX_IMPORT_BYTES`."""
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
    prepared = prepare(data, controls)
    size = export_bytes(prepared) + EXPORT_HEADROOM
    if size > MAX_IMPORT_BYTES:
        raise ExportTooLarge(
            f"the session would export to up to {size / MiB:.1f} MiB, more than the {MAX_IMPORT_BYTES // MiB} MiB an "
            "import accepts, so its export could not be imported again: import fewer turns or token events"
        )
    return prepared
