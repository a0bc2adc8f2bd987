"""Where a session import runs (``POST /sessions/import``): large ones in a child process, so the worker never stalls.

Decoding and checking an export is pure Python and holds the interpreter lock: a 19 MB import done in the server
delayed every other request by up to 1.1 s. An import larger than ``IN_PROCESS_BYTES`` is therefore decoded, checked
and written by a child process (spawned on first use and kept for the next), through its own SQLite connection and in
one transaction; WAL lets the server's readers go on meanwhile. The server hands it the raw bytes (already bounded by
the body limit) and gets back only the new session id, or the message of a refused import. A child that dies
mid-import has written nothing (SQLite rolls back a transaction its process never committed); the request answers
503 and the next import starts a new child. Smaller imports run in a thread of the server: they hold the lock for a
few milliseconds, the same code checks them, and no process is started for them.

Errors are those the route gave when FastAPI decoded the body itself: 422 with FastAPI's locations for a body that
is missing, not JSON or not an object; 400 for one that cannot be decoded at all (invalid UTF-8, nesting too deep);
400 naming the place for JSON the worker will not store (:mod:`backend.worker.json_check`: text with an unpaired
surrogate, nesting deeper than its ``MAX_DEPTH``), checked here whether or not a middleware checked the body before;
422 with the field for an export that fails the checks of ``backend.worker.imports``; 413 for one whose session would
export to more than an import accepts.
"""

from __future__ import annotations

import asyncio
import email.message
import json
import multiprocessing
import os
import sqlite3
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import closing
from dataclasses import dataclass
from typing import Any

from backend.worker import json_check
from backend.worker.db import Database
from backend.worker.db_import import connect, write_import
from backend.worker.imports import ExportError, ExportTooLarge, Prepared, check

# Measured on the 2-core machine (shared, load ~9): decoding and checking cost 40-66 ms of CPU per MiB, all of it
# under the interpreter lock when done in the server; a warm child adds nothing measurable (24 ms for a 119 KiB import
# either way, mostly the write); starting the child took 0.8 s, outside the server. At 256 KiB an import done in the
# server holds the lock ~10-15 ms; larger ones go to the child.
IN_PROCESS_BYTES = 256 * 1024


class Refused(Exception):
    """An import refused before anything was written. ``loc`` is set for a body FastAPI would have refused itself
    (missing, not JSON, not an object): the server answers it as a request validation error at that location."""

    def __init__(self, status: int, message: str, loc: tuple[str | int, ...] | None = None, kind: str = "value_error"):
        super().__init__(status, message, loc, kind)
        self.status, self.message, self.loc, self.kind = status, message, loc, kind


class ImportCrashed(Exception):
    """The child process died before it answered (its open transaction, if any, is rolled back by SQLite)."""


@dataclass(frozen=True)
class Outcome:
    """What the child answers: the new session (and its last event's number), a refusal, or a database error."""

    sid: str | None = None
    seq: int = 0
    refused: tuple[int, str, tuple[str | int, ...] | None, str] | None = None
    db_error: str | None = None


def check_body(raw: bytes, content_type: str | None) -> None:
    """Refuse, as FastAPI does, an empty body or one not sent as JSON (``application/json`` or ``*+json``)."""
    if not raw:
        raise Refused(422, "Field required", ("body",), "missing")
    message = email.message.Message()
    message["content-type"] = content_type or ""
    subtype = message.get_content_subtype()
    if (
        not content_type
        or message.get_content_maintype() != "application"
        or not (subtype == "json" or subtype.endswith("+json"))
    ):
        raise Refused(422, "Input should be a valid dictionary", ("body",), "dict_type")


def decode(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object (NaN and Infinity decode as floats: the checks refuse them by field), holding only
    text UTF-8 can encode and nested at most ``json_check.MAX_DEPTH`` deep: what every answer can write out again."""
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise Refused(422, "JSON decode error", ("body", exc.pos), "json_invalid") from exc
    except Exception as exc:  # invalid UTF-8, nesting too deep for the decoder
        raise Refused(400, "There was an error parsing the body") from exc
    if not isinstance(data, dict):
        raise Refused(422, "Input should be a valid dictionary", ("body",), "dict_type")
    try:
        json_check.check(data)
    except json_check.UnacceptableJSON as exc:
        raise Refused(400, f"the session export cannot be stored: {exc}") from exc
    return data


def prepare_raw(raw: bytes, n_layers: int, cap_window: tuple[int, int]) -> Prepared:
    """Decode and check an import for a model with ``n_layers`` layers and the space's ``cap_window``."""
    try:
        return check(decode(raw), n_layers, cap_window)
    except ExportTooLarge as exc:
        raise Refused(413, str(exc)) from exc
    except ExportError as exc:
        raise Refused(422, str(exc)) from exc


def _follow_parent() -> None:
    """The child's initializer: exit as soon as the server process is gone (killed with ``kill -9``, say). The pool's
    queue keeps both ends of its pipe open in the child, so without this an orphaned child would wait forever."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        parent.join()  # returns when the parent's sentinel closes: the parent is gone
        os._exit(0)

    threading.Thread(target=watch, name="follow-parent", daemon=True).start()


def in_child(raw: bytes, n_layers: int, cap_window: tuple[int, int], path: str) -> Outcome:
    """The child's whole job: decode, check, write in one transaction on a connection of its own."""
    try:
        prepared = prepare_raw(raw, n_layers, cap_window)
        with closing(connect(path)) as conn:
            sid, seq = write_import(conn, prepared)
    except Refused as exc:
        return Outcome(refused=(exc.status, exc.message, exc.loc, exc.kind))
    except sqlite3.OperationalError as exc:
        return Outcome(db_error=str(exc))
    return Outcome(sid=sid, seq=seq)


class Importer:
    """Runs imports for one database: small ones in a thread, large ones in a kept child process."""

    def __init__(self, db: Database, in_process_bytes: int = IN_PROCESS_BYTES) -> None:
        self.db = db
        self.in_process_bytes = in_process_bytes
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    async def run(self, raw: bytes, content_type: str | None, n_layers: int, cap_window: tuple[int, int]) -> str:
        """Import a request body; returns the new session's id. Raises ``Refused``, ``ImportCrashed``, or
        ``sqlite3.OperationalError`` when the database cannot be written (remembered for /health)."""
        check_body(raw, content_type)
        if len(raw) <= self.in_process_bytes or self.db.path == ":memory:":
            return await asyncio.to_thread(self._here, raw, n_layers, cap_window)
        pool = self._executor()
        try:
            outcome = await asyncio.wrap_future(pool.submit(in_child, raw, n_layers, cap_window, self.db.path))
        except BrokenProcessPool as exc:
            self._discard(pool)
            raise ImportCrashed(
                "the import process stopped before it answered; retry the import (an unfinished import stores nothing)"
            ) from exc
        if outcome.refused is not None:
            raise Refused(*outcome.refused)
        if outcome.db_error is not None or outcome.sid is None:
            error = sqlite3.OperationalError(outcome.db_error or "no session was written")
            self.db.failed(error)
            raise error
        self.db.announce(outcome.sid, outcome.seq)
        return outcome.sid

    def _here(self, raw: bytes, n_layers: int, cap_window: tuple[int, int]) -> str:
        return self.db.import_session(prepare_raw(raw, n_layers, cap_window))

    def _executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                # spawn: a fresh interpreter that imports only this module's few dependencies (no torch, no model)
                self._pool = ProcessPoolExecutor(
                    max_workers=1, mp_context=multiprocessing.get_context("spawn"), initializer=_follow_parent
                )
            return self._pool

    def _discard(self, pool: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is pool:
                self._pool = None
        pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        """Stop the child (after the import it may be writing): called once, when the server stops."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
