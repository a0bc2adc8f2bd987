"""SQLite (WAL) persistence of sessions, turns, events and control changes, written as they happen.

Every token event is committed when it is produced, so a worker killed with ``kill -9`` loses at most the token in
flight. On start, turns still marked ``queued`` or ``running`` are marked ``incomplete``.

Writes go through one connection guarded by a lock, shared by the generation thread and the HTTP handlers; reads
use a second connection (WAL lets them run while a write transaction is open), so a reader never waits for a writer
and sees only committed rows. Listeners hear of new events after their commit. JSON texts are strict
(:mod:`backend.worker.db_json`); an import is written by :mod:`backend.worker.db_import`.

The file must stay the one that was opened. SQLite goes on writing to a file that was deleted (or moved away, or
replaced by another one) through the handle it holds, and a restart opens whatever is at the path, so everything
written in between would be lost. Every write transaction therefore first checks that the database file and its
``-wal`` and ``-shm`` files are still at their paths (same device and inode; SQLite's open handles keep the inode
from being reused); when one is not, the write is refused with :class:`DatabaseLost` and ``/health`` says why. The
worker never opens a new file by itself (the user's sessions would be split between two files without a word): it
stays degraded until it is restarted, or until the same file is moved back. Reads go on from the open file, so
sessions can still be exported first. When it first notices, it checkpoints its WAL into the file it opened (wherever
that is now) and truncates it: a file moved away then holds every commit, and a file put in its place is not rolled
forward with this database's WAL (left beside it under the same name) when the next worker opens it.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

from backend.errors import PersonaSpaceError
from backend.worker.db_import import connect, write_import
from backend.worker.db_json import dumps, loads

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    title TEXT,
    system TEXT,
    controls TEXT NOT NULL,
    controls_version INTEGER NOT NULL DEFAULT 0,
    kind TEXT NOT NULL DEFAULT 'chat'
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

# Columns added after the first release, with their definitions: a database made before them gets them on open (an
# ALTER TABLE that keeps every row; the default is what the rows were). ``kind``: "chat" (the app's sessions) or
# "api" (a request of the OpenAI-compatible API, stored so that it can be read later).
ADDED_COLUMNS = {"sessions": {"kind": "TEXT NOT NULL DEFAULT 'chat'"}}
SESSION_KINDS = ("chat", "api")

ACTIVE = ("queued", "running")
log = logging.getLogger("persona_space.worker")


class DatabaseError(PersonaSpaceError):
    """The sessions database cannot be opened or written; the message names the file and what to do."""


class DatabaseLost(sqlite3.OperationalError):
    """The database file was deleted, moved away or replaced while the worker ran: writes are refused (503)."""


def _identity(path: str) -> tuple[int, int] | None:
    """The file at ``path`` as (device, inode); None when there is none."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return info.st_dev, info.st_ino


class Database:
    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.lock = threading.RLock()
        self.write_error: str | None = None  # set while writes fail (read-only file, full disk), cleared by one that works
        self.listeners: list[Callable[[str, int], None]] = []  # called with (session, seq) after an event is written
        self.last_seq: dict[str, int] = {}
        self._written: list[tuple[str, int]] = []  # events of the open transaction, announced after its commit
        try:
            if self.path != ":memory:":
                file = Path(self.path)
                if file.is_dir():
                    raise DatabaseError(f"--db {self.path} is a folder; give a file path, e.g. {file / 'worker.sqlite3'}")
                file.parent.mkdir(parents=True, exist_ok=True)
            # a writer waits up to 30 s for another connection's transaction (an import) before it fails
            self.conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
            self.conn.row_factory = sqlite3.Row
            with self.lock:
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute("PRAGMA synchronous=NORMAL")
                self.conn.execute("PRAGMA foreign_keys=ON")
                self.conn.executescript(SCHEMA)
                self._migrate()
            self.read_lock = threading.Lock()
            self.reader = (
                self.conn
                if self.path == ":memory:"
                else sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
            )
            self.reader.row_factory = sqlite3.Row
        except (sqlite3.Error, OSError) as exc:
            raise DatabaseError(
                f"cannot open the sessions database {self.path}: {exc} (is it a SQLite file in a folder you can write?)"
            ) from exc
        # the files SQLite holds open, as opened (the probe's write made the -wal and -shm files)
        self._files: dict[str, tuple[int, int] | None] = {}
        self._checkpointed = False  # the WAL was checkpointed since the file was lost
        problem = self.probe()
        if problem is not None:
            raise DatabaseError(
                f"the sessions database {self.path} is not writable: {problem}; fix its permissions or pass another --db"
            )
        if self.path != ":memory:":
            self._files = {f: _identity(f) for f in (self.path, self.path + "-wal", self.path + "-shm")}

    def _migrate(self) -> None:
        """Add the columns of :data:`ADDED_COLUMNS` that an older database lacks."""
        for table, columns in ADDED_COLUMNS.items():
            have = {row[1] for row in self.conn.execute(f"PRAGMA table_info({table})").fetchall()}
            for name, definition in columns.items():
                if name not in have:
                    self.conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {definition}")

    def lost(self) -> str | None:
        """Why the database file (or its -wal or -shm file) is no longer the one opened; None while it is. The first
        time it is not, the WAL is checkpointed into the opened file and truncated (see the module docstring)."""
        for path, opened in self._files.items():
            now = _identity(path)
            if opened is None or now == opened:
                continue
            what = "deleted or moved away" if now is None else "replaced by another file"
            back = ", or move the file back" if now is None else ""
            if not self._checkpointed:
                self._checkpointed = True
                try:
                    with self.lock:  # through SQLite's open handles: only the files it opened are touched
                        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                except sqlite3.Error as exc:
                    log.warning("the WAL of the lost database could not be checkpointed: %s", exc)
            return (
                f"the sessions database file {path} was {what} while the worker ran; nothing more is stored, so that "
                f"nothing is acknowledged that a restart would not find (sessions can still be read and exported): "
                f"restart the worker to start a new database{back}"
            )
        self._checkpointed = False
        return None

    def check_file(self) -> None:
        """Raise :class:`DatabaseLost` (remembered for /health) when the database file is not the one opened."""
        lost = self.lost()
        if lost is not None:
            self.write_error = lost
            raise DatabaseLost(lost)

    def probe(self) -> str | None:
        """Try a real write (rolled back); None when the database is writable, else the reason. Updates write_error."""
        with self.lock:
            try:
                with self._tx():
                    self.conn.execute("CREATE TABLE IF NOT EXISTS probe (x INTEGER)")
                    self.conn.execute("INSERT INTO probe (x) VALUES (1)")
                    self.conn.execute("DELETE FROM probe")
            except sqlite3.Error as exc:
                return self.write_error or str(exc)
        return None

    @contextmanager
    def _tx(self) -> Iterator[None]:
        """One write transaction under the lock. A failed write is remembered in ``write_error`` (for /health);
        the rollback never hides the first error (SQLite may already have rolled back on an I/O error)."""
        with self.lock:
            try:
                self._written.clear()
                self.check_file()  # a write to a file that is gone would be acknowledged and then lost
                self.conn.execute("BEGIN IMMEDIATE")
                yield
                self.conn.execute("COMMIT")
            except BaseException as exc:
                self._written.clear()
                if self.conn.in_transaction:
                    try:
                        self.conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                if isinstance(exc, sqlite3.OperationalError) and not isinstance(exc, DatabaseLost):
                    self.write_error = f"the database cannot be written: {exc}"
                raise
            self.write_error = None
            written, self._written = self._written, []
            for sid, seq in written:
                self._notify(sid, seq)

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        with self.lock if self.reader is self.conn else self.read_lock:
            yield self.reader

    def close(self) -> None:
        with self.lock, self.read_lock:
            if self.reader is not self.conn:
                self.reader.close()
            self.conn.close()

    def recover(self) -> list[int]:
        """Mark turns left queued/running by a dead worker as incomplete; returns their ids."""
        with self._tx():
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
    def create_session(self, system: str | None, controls: dict[str, Any], title: str | None = None, kind: str = "chat") -> str:
        if kind not in SESSION_KINDS:
            raise ValueError(f"unknown session kind {kind!r}; one of {', '.join(SESSION_KINDS)}")
        sid = uuid.uuid4().hex[:16]
        with self._tx():
            self.conn.execute(
                "INSERT INTO sessions (id, created, title, system, controls, controls_version, kind) VALUES (?, ?, ?, ?, ?, 0, ?)",
                (sid, time.time(), title, system, dumps(controls), kind),
            )
            created = {"system": system, "controls": controls, "controls_version": 0}
            self._event(sid, None, "session_created", created if kind == "chat" else dict(created, kind=kind))
        return sid

    def session(self, sid: str) -> dict[str, Any] | None:
        with self._reading() as conn:
            row = conn.execute("SELECT * FROM sessions WHERE id=?", (sid,)).fetchone()
        if row is None:
            return None
        return {
            "id": row["id"], "created": row["created"], "title": row["title"], "system": row["system"],
            "controls": loads(row["controls"]), "controls_version": row["controls_version"], "kind": row["kind"],
        }  # fmt: skip

    def sessions(self) -> list[dict[str, Any]]:
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT s.id, s.created, s.title, s.kind, "
                "(SELECT COUNT(*) FROM turns t WHERE t.session_id=s.id AND t.undone=0) AS n "
                "FROM sessions s ORDER BY s.created DESC"
            ).fetchall()
        return [{"id": r["id"], "created": r["created"], "title": r["title"], "turns": r["n"], "kind": r["kind"]} for r in rows]

    def delete_session(self, sid: str) -> bool:
        with self._tx():
            cur = self.conn.execute("DELETE FROM sessions WHERE id=?", (sid,))
        self._notify(sid, self.last_seq.get(sid, 0))  # followers of a deleted session find out
        return cur.rowcount > 0

    def set_controls(self, sid: str, controls: dict[str, Any], turn_id: int | None, at_token: int | None) -> int:
        with self._tx():
            self.conn.execute(
                "UPDATE sessions SET controls=?, controls_version=controls_version+1 WHERE id=?", (dumps(controls), sid)
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
        with self._tx():
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
        with self._reading() as conn:
            row = conn.execute("SELECT * FROM turns WHERE id=?", (tid,)).fetchone()
        return None if row is None else _turn(row)

    def turns(self, sid: str, include_undone: bool = False) -> list[dict[str, Any]]:
        query = "SELECT * FROM turns WHERE session_id=?" + ("" if include_undone else " AND undone=0") + " ORDER BY id"
        with self._reading() as conn:
            return [_turn(r) for r in conn.execute(query, (sid,)).fetchall()]

    def start_turn(self, tid: int, data: dict[str, Any]) -> bool:
        """queued -> running (with a ``turn_start`` event); False when the turn is no longer queued."""
        with self._tx():
            cur = self.conn.execute("UPDATE turns SET status='running' WHERE id=? AND status='queued'", (tid,))
            if cur.rowcount == 0:
                return False
            row = self.conn.execute("SELECT session_id FROM turns WHERE id=?", (tid,)).fetchone()
            self._event(row["session_id"], tid, "turn_start", dict(data, turn=tid, status="running"))
            return True

    def append_token(self, sid: str, tid: int, text: str, data: dict[str, Any]) -> int:
        """Add a token's text to its turn and record its event, in one transaction."""
        with self._tx():
            self.conn.execute("UPDATE turns SET content = content || ? WHERE id=?", (text, tid))
            return self._event(sid, tid, "token", data)

    def finish_turn(
        self, tid: int, status: str, summary: dict[str, Any] | None, content: str | None = None, only_if: str | None = None
    ) -> bool:
        """End a turn with ``status`` and a ``turn_end`` event; with ``only_if``, only when its status is that."""
        with self._tx():
            row = self.conn.execute("SELECT session_id, status FROM turns WHERE id=?", (tid,)).fetchone()
            if row is None or (only_if is not None and row["status"] != only_if):
                return False
            if content is not None:
                self.conn.execute("UPDATE turns SET content=? WHERE id=?", (content, tid))
            self.conn.execute(
                "UPDATE turns SET status=?, finished=?, summary=? WHERE id=?",
                (status, time.time(), dumps(summary) if summary is not None else None, tid),
            )
            self._event(row["session_id"], tid, "turn_end", dict(summary or {}, turn=tid, status=status))
        return True

    def fail_turn(self, tid: int, reason: str) -> bool:
        """Mark a turn that is still queued or running as failed: a ``turn_error`` then a ``turn_end`` event."""
        with self._tx():
            row = self.conn.execute("SELECT session_id, status FROM turns WHERE id=?", (tid,)).fetchone()
            if row is None or row["status"] not in ACTIVE:
                return False
            summary = {"error": reason, "reason": "error"}
            self.conn.execute(
                "UPDATE turns SET status='error', finished=?, summary=? WHERE id=?", (time.time(), dumps(summary), tid)
            )
            self._event(row["session_id"], tid, "turn_error", {"turn": tid, "error": reason})
            self._event(row["session_id"], tid, "turn_end", dict(summary, turn=tid, status="error"))
        return True

    def import_session(self, prepared: Any) -> str:
        """Write a validated export (``backend.worker.imports.Prepared``) under a new id, all or nothing.

        Every JSON text is made before, and the inserts run on a connection of their own: readers (and the stream
        of events) go on meanwhile; other writers wait for the commit. (Large imports are written by a child process
        with ``write_import``; see ``backend.worker.importer``.)"""
        self.check_file()  # before a connection of its own could make a new, empty file at the path
        try:
            if self.path == ":memory:":
                with self.lock:
                    sid, seq = write_import(self.conn, prepared)
            else:
                with closing(connect(self.path)) as conn:
                    sid, seq = write_import(conn, prepared)
        except sqlite3.OperationalError as exc:
            self.failed(exc)
            raise
        self.announce(sid, seq)
        return sid

    def failed(self, exc: BaseException) -> None:
        """Remember a failed write (for /health) made on another connection or in another process."""
        self.write_error = f"the database cannot be written: {exc}"

    def announce(self, sid: str, seq: int) -> None:
        """Wake the followers of ``sid``: events up to ``seq`` were committed on another connection."""
        self._notify(sid, seq)

    def undo(self, sid: str) -> list[int]:
        """Mark the last user turn and every reply to it as undone; returns their ids."""
        with self._tx():
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
        with self._reading() as conn:
            return [_turn(r) for r in conn.execute(query, (sid,) if sid else ()).fetchall()]

    # events -------------------------------------------------------------------------------------------------
    def _event(self, sid: str, tid: int | None, kind: str, data: dict[str, Any]) -> int:
        cur = self.conn.execute(
            "INSERT INTO events (session_id, turn_id, type, data, created) VALUES (?, ?, ?, ?, ?)",
            (sid, tid, kind, dumps(data), time.time()),
        )
        seq = int(cur.lastrowid or 0)
        self._written.append((sid, seq))
        return seq

    def _notify(self, sid: str, seq: int) -> None:
        self.last_seq[sid] = max(seq, self.last_seq.get(sid, 0))
        for listener in self.listeners:
            listener(sid, seq)

    def event(self, sid: str, tid: int | None, kind: str, data: dict[str, Any]) -> int:
        with self._tx():
            return self._event(sid, tid, kind, data)

    def events(self, sid: str, after: int = 0, limit: int = 10_000) -> list[dict[str, Any]]:
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT * FROM events WHERE session_id=? AND seq>? ORDER BY seq LIMIT ?", (sid, after, limit)
            ).fetchall()
        return [
            {"seq": r["seq"], "turn": r["turn_id"], "type": r["type"], "data": loads(r["data"]), "time": r["created"]}
            for r in rows
        ]


def _turn(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "id": row["id"], "session_id": row["session_id"], "role": row["role"], "variant": row["variant"],
        "reply_to": row["reply_to"], "content": row["content"], "status": row["status"], "seed": row["seed"],
        "created": row["created"], "finished": row["finished"],
        "summary": loads(row["summary"]) if row["summary"] else None, "undone": bool(row["undone"]),
    }  # fmt: skip
