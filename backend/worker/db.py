"""SQLite (WAL) persistence of sessions, turns, events and control changes, written as they happen.

Every token event is committed when it is produced, so a worker killed with ``kill -9`` loses at most the token in
flight. On start, turns still marked ``queued`` or ``running`` are marked ``incomplete``.

One connection, guarded by a lock, is shared by the generation thread and the HTTP handlers.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    title TEXT,
    system TEXT,
    controls TEXT NOT NULL,
    controls_version INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS turns (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    variant TEXT NOT NULL DEFAULT 'single',
    reply_to INTEGER,
    content TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL,
    seed INTEGER,
    created REAL NOT NULL,
    finished REAL,
    summary TEXT,
    undone INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS turns_session ON turns(session_id, id);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    turn_id INTEGER,
    type TEXT NOT NULL,
    data TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_session ON events(session_id, seq);
"""

ACTIVE = ("queued", "running")


class Database:
    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self.conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self.conn.row_factory = sqlite3.Row
        with self.lock:
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.execute("PRAGMA foreign_keys=ON")
            self.conn.executescript(SCHEMA)

    def close(self) -> None:
        with self.lock:
            self.conn.close()

    def recover(self) -> list[int]:
        """Mark turns left queued/running by a dead worker as incomplete; returns their ids."""
        with self.lock:
            rows = self.conn.execute("SELECT id, session_id FROM turns WHERE status IN ('queued', 'running')").fetchall()
            for row in rows:
                self.conn.execute("UPDATE turns SET status='incomplete', finished=? WHERE id=?", (time.time(), row["id"]))
                self._event(
                    row["session_id"],
                    row["id"],
                    "turn_incomplete",
                    {"turn": row["id"], "reason": "the worker stopped during this turn"},
                )
            return [int(r["id"]) for r in rows]

    # sessions -----------------------------------------------------------------------------------------------
    def create_session(self, system: str | None, controls: dict[str, Any], title: str | None = None) -> str:
        sid = uuid.uuid4().hex[:16]
        with self.lock:
            self.conn.execute(
                "INSERT INTO sessions (id, created, title, system, controls, controls_version) VALUES (?, ?, ?, ?, ?, 0)",
                (sid, time.time(), title, system, json.dumps(controls)),
            )
            self._event(sid, None, "session_created", {"system": system, "controls": controls, "controls_version": 0})
        return sid

    def session(self, sid: str) -> dict[str, Any] | None:
        with self.lock:
            row = self.conn.execute("SELECT * FROM sessions WHERE id=?", (sid,)).fetchone()
        if row is None:
            return None
        return {
            "id": row["id"], "created": row["created"], "title": row["title"], "system": row["system"],
            "controls": json.loads(row["controls"]), "controls_version": row["controls_version"],
        }  # fmt: skip

    def sessions(self) -> list[dict[str, Any]]:
        with self.lock:
            rows = self.conn.execute(
                "SELECT s.id, s.created, s.title, (SELECT COUNT(*) FROM turns t WHERE t.session_id=s.id AND t.undone=0) AS n "
                "FROM sessions s ORDER BY s.created DESC"
            ).fetchall()
        return [{"id": r["id"], "created": r["created"], "title": r["title"], "turns": r["n"]} for r in rows]

    def delete_session(self, sid: str) -> bool:
        with self.lock:
            cur = self.conn.execute("DELETE FROM sessions WHERE id=?", (sid,))
            return cur.rowcount > 0

    def set_controls(self, sid: str, controls: dict[str, Any], turn_id: int | None, at_token: int | None) -> int:
        with self.lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                self.conn.execute(
                    "UPDATE sessions SET controls=?, controls_version=controls_version+1 WHERE id=?", (json.dumps(controls), sid)
                )
                row = self.conn.execute("SELECT controls_version FROM sessions WHERE id=?", (sid,)).fetchone()
                if row is None:
                    raise KeyError(sid)
                version = int(row[0])
                self._event(
                    sid,
                    turn_id,
                    "controls",
                    {"controls": controls, "controls_version": version, "turn": turn_id, "from_token": at_token},
                )
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
        return version

    # turns --------------------------------------------------------------------------------------------------
    def add_turn(
        self,
        sid: str,
        role: str,
        content: str,
        status: str,
        variant: str = "single",
        reply_to: int | None = None,
        seed: int | None = None,
    ) -> int:
        with self.lock:
            cur = self.conn.execute(
                "INSERT INTO turns (session_id, role, variant, reply_to, content, status, seed, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (sid, role, variant, reply_to, content, status, seed, time.time()),
            )
            tid = int(cur.lastrowid or 0)
            self._event(
                sid,
                tid,
                "turn_created",
                {"turn": tid, "role": role, "variant": variant, "reply_to": reply_to, "content": content, "status": status},
            )
        return tid

    def turn(self, tid: int) -> dict[str, Any] | None:
        with self.lock:
            row = self.conn.execute("SELECT * FROM turns WHERE id=?", (tid,)).fetchone()
        return None if row is None else _turn(row)

    def turns(self, sid: str, include_undone: bool = False) -> list[dict[str, Any]]:
        query = "SELECT * FROM turns WHERE session_id=?" + ("" if include_undone else " AND undone=0") + " ORDER BY id"
        with self.lock:
            return [_turn(r) for r in self.conn.execute(query, (sid,)).fetchall()]

    def set_status(self, tid: int, status: str, event: str | None = None, data: dict[str, Any] | None = None) -> None:
        with self.lock:
            row = self.conn.execute("SELECT session_id FROM turns WHERE id=?", (tid,)).fetchone()
            if row is None:
                return
            finished = time.time() if status not in ACTIVE else None
            self.conn.execute("UPDATE turns SET status=?, finished=? WHERE id=?", (status, finished, tid))
            if event:
                self._event(row["session_id"], tid, event, dict(data or {}, turn=tid, status=status))

    def start_turn(self, tid: int, data: dict[str, Any]) -> bool:
        """queued -> running (with a ``turn_start`` event); False when the turn is no longer queued."""
        with self.lock:
            cur = self.conn.execute("UPDATE turns SET status='running' WHERE id=? AND status='queued'", (tid,))
            if cur.rowcount == 0:
                return False
            row = self.conn.execute("SELECT session_id FROM turns WHERE id=?", (tid,)).fetchone()
            self._event(row["session_id"], tid, "turn_start", dict(data, turn=tid, status="running"))
            return True

    def append_token(self, sid: str, tid: int, text: str, data: dict[str, Any]) -> int:
        """Add a token's text to its turn and record its event, in one transaction."""
        with self.lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                self.conn.execute("UPDATE turns SET content = content || ? WHERE id=?", (text, tid))
                seq = self._event(sid, tid, "token", data)
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
        return seq

    def finish_turn(
        self, tid: int, status: str, summary: dict[str, Any] | None, content: str | None = None, only_if: str | None = None
    ) -> bool:
        """End a turn with ``status`` and a ``turn_end`` event; with ``only_if``, only when its status is that."""
        with self.lock:
            row = self.conn.execute("SELECT session_id, status FROM turns WHERE id=?", (tid,)).fetchone()
            if row is None or (only_if is not None and row["status"] != only_if):
                return False
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                if content is not None:
                    self.conn.execute("UPDATE turns SET content=? WHERE id=?", (content, tid))
                self.conn.execute(
                    "UPDATE turns SET status=?, finished=?, summary=? WHERE id=?",
                    (status, time.time(), json.dumps(summary) if summary is not None else None, tid),
                )
                self._event(row["session_id"], tid, "turn_end", dict(summary or {}, turn=tid, status=status))
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
        return True

    def import_session(
        self, system: Any, controls: dict[str, Any], title: Any, turns: list[dict[str, Any]], events: list[dict[str, Any]]
    ) -> str:
        """Write an exported session under a new id, all or nothing. Raises ValueError on malformed input."""
        if system is not None and not isinstance(system, str):
            raise ValueError("session.system must be text or null")
        checked = []
        for t in sorted(turns, key=lambda t: int(t["id"])):
            if t["role"] not in ("user", "assistant") or not isinstance(t["content"], str):
                raise ValueError(f"turn {t.get('id')}: role must be user/assistant and content text")
            status = str(t.get("status", "done"))
            checked.append((int(t["id"]), t, "incomplete" if status in ACTIVE else status))
        tokens: dict[int, list[dict[str, Any]]] = {}
        for e in events:
            if e.get("type") == "token" and isinstance(e.get("data"), dict):
                tokens.setdefault(int(e["turn"]), []).append(e["data"])
        sid = uuid.uuid4().hex[:16]
        with self.lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                now = time.time()
                self.conn.execute(
                    "INSERT INTO sessions (id, created, title, system, controls, controls_version) VALUES (?, ?, ?, ?, ?, 0)",
                    (sid, now, str(title) if title else None, system, json.dumps(controls)),
                )
                self._event(
                    sid,
                    None,
                    "session_created",
                    {"system": system, "controls": controls, "controls_version": 0, "imported": True},
                )
                ids: dict[int, int] = {}
                undone: list[int] = []
                for old, t, status in checked:
                    reply_to = ids.get(int(t["reply_to"])) if t.get("reply_to") is not None else None
                    cur = self.conn.execute(
                        "INSERT INTO turns (session_id, role, variant, reply_to, content, status, seed, created, finished, summary) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (sid, t["role"], str(t.get("variant", "single")), reply_to, t["content"], status, t.get("seed"), now, now,
                         json.dumps(t["summary"]) if t.get("summary") else None),
                    )  # fmt: skip
                    new = int(cur.lastrowid or 0)
                    ids[old] = new
                    self._event(sid, new, "turn_created", {"turn": new, "role": t["role"], "variant": t.get("variant", "single"),
                                                            "reply_to": reply_to, "content": t["content"] if t["role"] == "user" else "", "status": status})  # fmt: skip
                    for data in tokens.get(old, []):
                        self._event(sid, new, "token", dict(data, turn=new))
                    if t["role"] == "assistant":
                        self._event(sid, new, "turn_end", dict(t.get("summary") or {}, turn=new, status=status))
                    if t.get("undone"):
                        undone.append(new)
                if undone:
                    self.conn.executemany("UPDATE turns SET undone=1 WHERE id=?", [(i,) for i in undone])
                    self._event(sid, None, "undo", {"turns": undone})
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
        return sid

    def undo(self, sid: str) -> list[int]:
        """Mark the last user turn and every reply to it as undone; returns their ids."""
        with self.lock:
            last = self.conn.execute(
                "SELECT id FROM turns WHERE session_id=? AND role='user' AND undone=0 ORDER BY id DESC LIMIT 1", (sid,)
            ).fetchone()
            if last is None:
                return []
            ids = [last["id"]] + [
                r["id"] for r in self.conn.execute("SELECT id FROM turns WHERE reply_to=? AND undone=0", (last["id"],)).fetchall()
            ]
            self.conn.executemany("UPDATE turns SET undone=1 WHERE id=?", [(i,) for i in ids])
            self._event(sid, None, "undo", {"turns": ids})
            return [int(i) for i in ids]

    def active_turns(self, sid: str | None = None) -> list[dict[str, Any]]:
        query = (
            "SELECT * FROM turns WHERE status IN ('queued', 'running')" + (" AND session_id=?" if sid else "") + " ORDER BY id"
        )
        with self.lock:
            return [_turn(r) for r in self.conn.execute(query, (sid,) if sid else ()).fetchall()]

    # events -------------------------------------------------------------------------------------------------
    def _event(self, sid: str, tid: int | None, kind: str, data: dict[str, Any]) -> int:
        cur = self.conn.execute(
            "INSERT INTO events (session_id, turn_id, type, data, created) VALUES (?, ?, ?, ?, ?)",
            (sid, tid, kind, json.dumps(data), time.time()),
        )
        return int(cur.lastrowid or 0)

    def event(self, sid: str, tid: int | None, kind: str, data: dict[str, Any]) -> int:
        with self.lock:
            return self._event(sid, tid, kind, data)

    def events(self, sid: str, after: int = 0, limit: int = 10_000) -> list[dict[str, Any]]:
        with self.lock:
            rows = self.conn.execute(
                "SELECT * FROM events WHERE session_id=? AND seq>? ORDER BY seq LIMIT ?", (sid, after, limit)
            ).fetchall()
        return [
            {"seq": r["seq"], "turn": r["turn_id"], "type": r["type"], "data": json.loads(r["data"]), "time": r["created"]}
            for r in rows
        ]


def _turn(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "id": row["id"], "session_id": row["session_id"], "role": row["role"], "variant": row["variant"],
        "reply_to": row["reply_to"], "content": row["content"], "status": row["status"], "seed": row["seed"],
        "created": row["created"], "finished": row["finished"],
        "summary": json.loads(row["summary"]) if row["summary"] else None, "undone": bool(row["undone"]),
    }  # fmt: skip
