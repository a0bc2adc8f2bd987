"""Writing a checked session export (``backend.worker.imports.Prepared``) into the sessions database under a new
id, in one transaction on a connection of its own: the server's :meth:`backend.worker.db.Database.import_session`
and the import child of :mod:`backend.worker.importer` both write through :func:`write_import`. :func:`export_bytes`
bounds the size of the export of what it writes, before it is written."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from typing import Any

from backend.worker.db_json import dumps


def connect(path: str) -> sqlite3.Connection:
    """A connection of its own for one import; a writer waits up to 30 s for another's transaction."""
    return sqlite3.connect(path, timeout=30, isolation_level=None)


def write_import(conn: sqlite3.Connection, prepared: Any) -> tuple[str, int]:
    """Insert a validated export under a new session id in one transaction: all of it, or nothing (rolled back on
    any error). Returns the new id and the sequence number of its last event."""
    sid = uuid.uuid4().hex[:16]
    try:
        conn.execute("BEGIN IMMEDIATE")
        seq = _import_rows(conn, sid, time.time(), prepared)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # SQLite may already have rolled back (an I/O error); never hide the first error
        raise
    return sid, seq


def _import_rows(conn: sqlite3.Connection, sid: str, now: float, prepared: Any) -> int:
    kind = prepared.kind
    conn.execute(
        "INSERT INTO sessions (id, created, title, system, controls, controls_version, kind) VALUES (?, ?, ?, ?, ?, 0, ?)",
        (sid, now, prepared.title, prepared.system, prepared.controls_json, kind),
    )
    created = {"system": prepared.system, "controls": prepared.controls, "controls_version": 0, "imported": True}
    if kind != "chat":  # as the database writes a new session's event
        created["kind"] = kind
    rows: list[tuple[str, int | None, str, str, float]] = [(sid, None, "session_created", dumps(created), now)]
    ids: dict[int, int] = {}
    undone: list[int] = []
    for t in prepared.turns:
        reply_to = ids.get(t.reply_to) if t.reply_to is not None else None
        cur = conn.execute(
            "INSERT INTO turns (session_id, role, variant, reply_to, content, status, seed, created, finished, summary) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (sid, t.role, t.variant, reply_to, t.content, t.status, t.seed, now, now, t.summary_json),
        )
        new = int(cur.lastrowid or 0)
        ids[t.id] = new
        made = {"turn": new, "role": t.role, "variant": t.variant, "reply_to": reply_to,
                "content": t.content if t.role == "user" else "", "status": t.status}  # fmt: skip
        rows.append((sid, new, "turn_created", dumps(made), now))
        rows.extend((sid, new, "token", _with_turn(text, new), now) for text in prepared.tokens.get(t.id, ()))
        if t.role == "assistant":
            rows.append((sid, new, "turn_end", _with_turn(t.end_json, new, status=t.status), now))
        if t.undone:
            undone.append(new)
    if undone:
        conn.executemany("UPDATE turns SET undone=1 WHERE id=?", [(i,) for i in undone])
        rows.append((sid, None, "undo", dumps({"turns": undone}), now))
    conn.executemany("INSERT INTO events (session_id, turn_id, type, data, created) VALUES (?, ?, ?, ?, ?)", rows)
    return int(conn.execute("SELECT MAX(seq) FROM events WHERE session_id=?", (sid,)).fetchone()[0] or 0)


def _with_turn(text: str, turn: int, status: str | None = None) -> str:
    """A JSON object's text (made without ``turn``/``status``) with those keys added, without parsing it again."""
    extra = f'"turn":{turn}' + (f',"status":{json.dumps(status)}' if status is not None else "")
    return text[:-1] + ("," if text != "{}" else "") + extra + "}"


# The size of an export (GET /sessions/{sid}/export: compact JSON, non-ASCII escaped) of what write_import stores,
# bounded from the texts it stores. Ids, sequence numbers and times are counted at their widest, so the bound
# depends on the content only: an export imported again has the same bound, and is accepted again.
_ID = 2**63 - 1  # 19 digits: the largest id or sequence number SQLite gives
_SEED = -(2**63)  # 20 characters: the widest integer SQLite stores
_TIME = -2.2250738585072014e-308  # 24 characters: the widest repr of a float
_SID = "0" * 16


def _size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":")))


_EVENT = _size({"seq": _ID, "turn": _ID, "type": "", "data": None, "time": _TIME}) - 4 + 1  # without data; a comma
_TURN = _size({"id": _ID, "session_id": _SID, "role": "", "variant": "", "reply_to": _ID, "content": None,
               "status": "", "seed": _SEED, "created": _TIME, "finished": _TIME, "summary": None, "undone": False}) - 8 + 1  # fmt: skip
_MADE = _size({"turn": _ID, "role": "", "variant": "", "reply_to": _ID, "content": None, "status": ""}) - 4
_TURN_KEY = len(',"turn":') + len(str(_ID))
_STATUS_KEY = len(',"status":""')


def export_bytes(prepared: Any) -> int:
    """An upper bound on the bytes of the export of the session ``write_import`` stores from ``prepared``, less its
    ``model`` and ``space`` (``backend.worker.imports.EXPORT_HEADROOM`` covers those)."""
    system, title = _size(prepared.system), _size(prepared.title)
    controls = len(prepared.controls_json)
    kind = prepared.kind
    session = _size(
        {"id": _SID, "created": _TIME, "title": None, "system": None, "controls": None, "controls_version": _ID, "kind": kind}
    )
    created = _size({"system": None, "controls": None, "controls_version": 0, "imported": True, "kind": kind})
    total = 200 + session - 12 + title + system + controls  # the header's keys, with room
    total += _EVENT + len('"session_created"') + created - 8 + system + controls
    undone = 0
    for t in prepared.turns:
        content = _size(t.content)
        summary = len(t.summary_json) if t.summary_json is not None else 4
        variant, status = len(t.variant), len(t.status)
        total += _TURN + len(t.role) + variant + status + content + summary
        total += _EVENT + len('"turn_created"') + _MADE + len(t.role) + variant + status + (content if t.role == "user" else 2)
        total += sum(_EVENT + len('"token"') + len(text) + _TURN_KEY for text in prepared.tokens.get(t.id, ()))
        if t.role == "assistant":
            total += _EVENT + len('"turn_end"') + len(t.end_json) + _TURN_KEY + _STATUS_KEY + status
        undone += t.undone
    if undone:
        total += _EVENT + len('"undo"') + _size({"turns": [_ID] * undone})
    return total
