"""Writing a checked session export (``backend.worker.imports.Prepared``) into the sessions database under a new
id, in one transaction on a connection of its own: the server's :meth:`backend.worker.db.Database.import_session`
and the import child of :mod:`backend.worker.importer` both write through :func:`write_import`."""

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
    conn.execute(
        "INSERT INTO sessions (id, created, title, system, controls, controls_version) VALUES (?, ?, ?, ?, ?, 0)",
        (sid, now, prepared.title, prepared.system, prepared.controls_json),
    )
    created = {"system": prepared.system, "controls": prepared.controls, "controls_version": 0, "imported": True}
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
    extra = f'"turn": {turn}' + (f", {json.dumps('status')}: {json.dumps(status)}" if status is not None else "")
    return text[:-1] + (", " if text != "{}" else "") + extra + "}"
