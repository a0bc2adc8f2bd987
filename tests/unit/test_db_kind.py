"""Sessions have a kind (chat or api); a database made before the column existed opens with its sessions kept."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from backend.worker.db import Database

OLD_SCHEMA = """
CREATE TABLE sessions (id TEXT PRIMARY KEY, created REAL NOT NULL, title TEXT, system TEXT, controls TEXT NOT NULL,
                       controls_version INTEGER NOT NULL DEFAULT 0);
INSERT INTO sessions VALUES ('0123456789abcdef', 1.0, 'old chat', 'sys', '{}', 3);
"""


def test_an_older_database_gains_the_kind_column(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.executescript(OLD_SCHEMA)
    db = Database(path)
    try:
        old = db.session("0123456789abcdef")
        assert old is not None and old["kind"] == "chat" and old["title"] == "old chat" and old["controls_version"] == 3
        sid = db.create_session(None, {}, "API: hi", kind="api")
        kinds = {s["id"]: s["kind"] for s in db.sessions()}
        assert kinds == {"0123456789abcdef": "chat", sid: "api"}
        with pytest.raises(ValueError):
            db.create_session(None, {}, kind="robot")
    finally:
        db.close()
    again = Database(path)  # opening it again changes nothing
    try:
        assert {s["id"]: s["kind"] for s in again.sessions()} == kinds
    finally:
        again.close()
