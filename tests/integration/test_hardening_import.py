"""Session import against a real worker (issue #27): what an import stores can always be read, exported and imported
again. Text UTF-8 cannot encode, nesting the serializer cannot write, a session whose export would not fit the import
limit and token events the chat page cannot read are refused with a 4xx that names the place, before anything is
stored; the connection and the worker go on serving."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.helpers.worker_harness import Worker

TOKEN = {"index": 0, "text": "hello", "projection": 1.5}


def _export(tokens: list[dict[str, Any]] | None = None, summary: Any = None, **session: Any) -> dict[str, Any]:
    """A small export: one exchange, its reply's token events (``data`` of each), the reply's ``summary``."""
    turns = [
        {"id": 1, "role": "user", "content": "hi", "status": "done"},
        {"id": 2, "role": "assistant", "content": "hello", "status": "done", "reply_to": 1, "summary": summary},
    ]
    events = [{"seq": i + 5, "type": "token", "turn": 2, "data": d} for i, d in enumerate([TOKEN] if tokens is None else tokens)]
    return {"format": "persona-space-session", "session": {"controls": {}, **session}, "turns": turns, "events": events}


def _post(worker: Worker, body: dict[str, Any] | bytes) -> Any:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return worker.client.post("/sessions/import", content=raw, headers={"content-type": "application/json"})


def _sessions(worker: Worker) -> list[dict[str, Any]]:
    return list(worker.client.get("/sessions").json()["sessions"])


def _reads(worker: Worker, sid: str) -> list[int]:
    return [worker.client.get(p).status_code for p in (f"/sessions/{sid}", f"/sessions/{sid}/export", f"/sessions/{sid}/events")]


def _deep(body: dict[str, Any], depth: int) -> bytes:
    """``body`` as JSON with its ``"DEEP"`` string replaced by lists nested ``depth`` deep (past what json.dumps
    writes)."""
    return json.dumps(body).replace('"DEEP"', "[" * depth + "]" * depth).encode()


# defect 2: lone surrogates --------------------------------------------------------------------------------------
LONE = "\ud800"
SURROGATES = [
    ("token text", _export([dict(TOKEN, text="a" + LONE)])),
    ("token data key", _export([dict(TOKEN, **{LONE: 1})])),
    ("summary value", _export(summary={"n_tokens": 1, "note": LONE})),
    ("summary key", _export(summary={"\udc00": 1})),
    ("turn content", {**_export(), "turns": [{"id": 1, "role": "user", "content": LONE, "status": "done"}]}),
    ("title", _export(title=LONE)),
    ("system prompt", _export(system="be " + LONE)),
]  # fmt: skip


@pytest.mark.parametrize("escaped", [True, False], ids=["escaped", "raw-bytes"])
@pytest.mark.parametrize(("name", "body"), SURROGATES, ids=[s[0] for s in SURROGATES])
def test_lone_surrogates_are_refused_and_the_connection_goes_on(worker, name, body, escaped) -> None:  # type: ignore[no-untyped-def]
    # escaped: "\ud800" in the JSON text; raw bytes: its 3-byte CESU-8 form, which Python's JSON decoder also accepts
    raw = json.dumps(body, ensure_ascii=escaped).encode("utf-8", "surrogatepass")
    before = _sessions(worker)
    r = _post(worker, raw)
    assert r.status_code in (400, 422), r.text[:300]
    assert "surrogate" in r.json()["error"]
    # the same keep-alive connection answers the next requests, and nothing was stored
    assert _sessions(worker) == before
    assert worker.client.get("/health").json()["ready"]


def test_paired_surrogates_and_control_characters_are_kept(worker) -> None:  # type: ignore[no-untyped-def]
    text = "smile \U0001f600 nul \x00 bell \x07 line\u2028sep"
    body = _export([dict(TOKEN, text=text)], summary={"note": text}, title="t\U0001f600", system=text)
    r = _post(worker, body)
    assert r.status_code == 201, r.text[:300]
    sid = r.json()["id"]
    assert _reads(worker, sid) == [200, 200, 200]
    tokens = [e["data"]["text"] for e in worker.events(sid) if e["type"] == "token"]
    assert tokens == [text] and worker.client.get(f"/sessions/{sid}").json()["turns"][1]["summary"] == {"note": text}


# defect 3: deep nesting ------------------------------------------------------------------------------------------
DEEP = [
    ("token data 250 deep", _export([dict(TOKEN, deep="DEEP")]), 250),
    ("token data 600 deep", _export([dict(TOKEN, deep="DEEP")]), 600),
    ("summary 250 deep", _export(summary={"deep": "DEEP"}), 250),
    ("summary 70 deep", _export(summary={"deep": "DEEP"}), 70),
]


@pytest.mark.parametrize(("name", "body", "depth"), DEEP, ids=[d[0] for d in DEEP])
def test_deep_nesting_is_refused_before_it_is_stored(worker, name, body, depth) -> None:  # type: ignore[no-untyped-def]
    before = _sessions(worker)
    r = _post(worker, _deep(body, depth))
    assert r.status_code in (400, 422), r.text[:300]
    assert "nested deeper than" in r.json()["error"]
    assert _sessions(worker) == before


def test_nesting_within_the_limit_is_read_exported_and_imported_again(worker) -> None:  # type: ignore[no-untyped-def]
    r = _post(worker, _deep(_export([dict(TOKEN, deep="DEEP")], summary={"deep": "DEEP"}), 50))
    assert r.status_code == 201, r.text[:300]
    sid = r.json()["id"]
    assert _reads(worker, sid) == [200, 200, 200]
    again = _post(worker, worker.client.get(f"/sessions/{sid}/export").content)
    assert again.status_code == 201, again.text[:300]
    assert _reads(worker, again.json()["id"]) == [200, 200, 200]


# defect 10: token events the chat page cannot read -----------------------------------------------------------------
BAD_TOKENS = [
    ("text a number", [TOKEN, dict(TOKEN, index=1, text=5)], "events.1.data.text"),
    ("index a word", [TOKEN, dict(TOKEN, index="zero")], "events.1.data.index"),
    ("index negative", [dict(TOKEN, index=-1)], "events.0.data.index"),
    ("no index", [{"text": "a", "projection": 1.0}], "events.0.data.index"),
    ("projection null", [TOKEN, dict(TOKEN, index=1, projection=None)], "events.1.data.projection"),
    ("no projection", [{"index": 0, "text": "a"}], "events.0.data.projection"),
    ("projection a boolean", [dict(TOKEN, projection=True)], "events.0.data.projection"),
    ("projection too large for a float", [dict(TOKEN, projection=10**400)], "events.0.data.projection"),
    ("no text", [{"index": 0, "projection": 1.0}], "events.0.data.text"),
    ("cap_on a word", [dict(TOKEN, cap_on="yes")], "events.0.data.cap_on"),
    ("tau of words", [dict(TOKEN, cap_on=True, tau=["a"])], "events.0.data.tau"),
    ("cap_delta a word", [dict(TOKEN, cap_on=True, cap_delta="x")], "events.0.data.cap_delta"),
    ("before cap an object", [dict(TOKEN, cap_on=True, projection_before_cap={"a": 1})], "events.0.data.projection_before_cap"),
    ("cap layers of words", [dict(TOKEN, cap_on=True, cap_layers=["a", "b"])], "events.0.data.cap_layers"),
    ("data not an object", [TOKEN, "token"], "events.1.data"),
    ("tokens out of order", [TOKEN, dict(TOKEN, index=2), dict(TOKEN, index=1)], "events.2"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "tokens", "where"), BAD_TOKENS, ids=[b[0] for b in BAD_TOKENS])
def test_token_events_the_chat_page_cannot_read_are_refused_naming_the_first_bad_one(worker, name, tokens, where) -> None:  # type: ignore[no-untyped-def]
    body = _export(tokens)
    before = _sessions(worker)
    r = _post(worker, body)
    assert r.status_code == 422, r.text[:300]
    error = r.json()["error"]
    assert re.search(re.escape(where) + r"[.: ]", error), error
    assert "Traceback" not in error and "https://errors.pydantic" not in error
    assert _sessions(worker) == before


def test_tokens_of_a_user_turn_and_events_out_of_sequence_are_refused(worker) -> None:  # type: ignore[no-untyped-def]
    on_user = _export()
    on_user["events"].append({"seq": 9, "type": "token", "turn": 1, "data": TOKEN})
    r = _post(worker, on_user)
    assert r.status_code == 422 and "events.1" in r.json()["error"] and "user turn" in r.json()["error"], r.text
    backwards = _export([TOKEN, dict(TOKEN, index=1)])
    backwards["events"][1]["seq"] = 3  # after seq 5
    r = _post(worker, backwards)
    assert r.status_code == 422 and "events.1" in r.json()["error"] and "sequence" in r.json()["error"], r.text


def test_the_token_events_the_worker_writes_import_with_every_field_kept(worker) -> None:  # type: ignore[no-untyped-def]
    sid = worker.session(controls={"max_new_tokens": 4, "cap_enabled": True})
    worker.say(sid, "hello")
    worker.wait_idle(sid)
    exported = worker.client.get(f"/sessions/{sid}/export").json()
    r = _post(worker, exported)
    assert r.status_code == 201, r.text[:300]
    old = [e["data"] for e in exported["events"] if e["type"] == "token"]
    new = [e["data"] for e in worker.events(r.json()["id"]) if e["type"] == "token"]
    assert old and [{k: v for k, v in d.items() if k != "turn"} for d in new] == [
        {k: v for k, v in d.items() if k != "turn"} for d in old
    ]


# defect 8: an export always imports again -------------------------------------------------------------------------
def _many_tokens(n_events: int, text: str, n_turns: int = 100) -> dict[str, Any]:
    turns: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    per_turn = -(-n_events // n_turns)
    for i in range(n_turns):
        user, reply = 2 * i + 1, 2 * i + 2
        turns += [
            {"id": user, "role": "user", "content": "q"},
            {"id": reply, "role": "assistant", "content": "", "reply_to": user},
        ]
        for k in range(min(per_turn, n_events - len(events))):
            events.append({"type": "token", "turn": reply, "data": {"index": k, "text": text, "projection": 0.5}})
    return {"format": "persona-space-session", "session": {"controls": {}}, "turns": turns, "events": events}


def test_an_import_whose_export_would_not_import_again_is_refused(worker) -> None:  # type: ignore[no-untyped-def]
    from backend.worker.imports import MAX_TOKENS
    from backend.worker.server import MAX_BODY

    # the body fits the import limit, the export (each event with its seq, turn and time) would not: before the fix,
    # this import answered 201 and its export of ~21.5 MiB got 413 on the way back
    body = json.dumps(_many_tokens(MAX_TOKENS, "x" * 100), separators=(",", ":")).encode()
    assert len(body) <= MAX_BODY
    before = _sessions(worker)
    r = _post(worker, body)
    assert r.status_code == 413, r.text[:300]
    assert "export" in r.json()["error"] and "MiB" in r.json()["error"]
    assert _sessions(worker) == before


def test_the_most_token_events_an_import_allows_export_and_import_again(worker) -> None:  # type: ignore[no-untyped-def]
    from backend.worker.imports import MAX_TOKENS
    from backend.worker.server import MAX_BODY

    r = _post(worker, json.dumps(_many_tokens(MAX_TOKENS, "")).encode())
    assert r.status_code == 201, r.text[:300]
    exported = worker.client.get(f"/sessions/{r.json()['id']}/export")
    assert exported.status_code == 200 and len(exported.content) <= MAX_BODY, len(exported.content)
    again = _post(worker, exported.content)
    assert again.status_code == 201, again.text[:300]
    events = worker.client.get(f"/sessions/{again.json()['id']}/export").json()["events"]
    assert sum(e["type"] == "token" for e in events) == MAX_TOKENS
