"""The worker's lifecycle under the red-team pass of issue #27, on real worker processes with the tiny model: the
database deleted or replaced while serving, Ctrl-C and SIGTERM in the middle of a turn, and long ``/project`` work
against chat (interleaving, a client that gave up, a deadline)."""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.worker_harness import Worker, big_export

SMALL_EXPORT = {
    "format": "persona-space-session",
    "session": {"controls": {}, "title": "t"},
    "turns": [
        {"id": 1, "role": "user", "content": "hi", "status": "done"},
        {"id": 2, "role": "assistant", "content": "hello", "status": "done", "reply_to": 1},
    ],
    "events": [],
}


def _wait(predicate, timeout: float = 60, every: float = 0.05) -> Any:  # type: ignore[no-untyped-def]
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError("condition not reached")


def _is_problem(r: httpx.Response, status: int) -> bool:
    """The worker's error shape, ``{"error": <text>, "detail": ...}``, with ``status``."""
    body = r.json()
    return r.status_code == status and set(body) == {"error", "detail"} and isinstance(body["error"], str) and bool(body["error"])


# the database deleted or replaced while serving ----------------------------------------------------------------


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_database_deleted_or_replaced_while_serving_degrades_and_refuses_every_write(tiny_world, tmp_path, how) -> None:  # type: ignore[no-untyped-def]
    model, space, _ = tiny_world
    db = tmp_path / "served.sqlite3"
    w = Worker(model, space, db)
    try:
        w.wait_ready()
        sid = w.session(controls={"max_new_tokens": 3})
        w.say(sid, "before")
        w.wait_idle(sid)
        before = w.client.get(f"/sessions/{sid}").json()
        if how == "deleted":
            db.unlink()
        else:  # another SQLite file moved into its place (a restored backup, a sync tool)
            other = tmp_path / "other.sqlite3"
            with sqlite3.connect(other) as conn:
                conn.execute("CREATE TABLE unrelated (x INTEGER)")
            other.replace(db)
            replacement = db.read_bytes()
        health = w.client.get("/health").json()  # at once: /health looks at the file on every call
        assert health["status"] == "degraded" and not health["ready"], health
        assert how in health["degraded"] and "restart" in health["degraded"], health["degraded"]
        writes = [
            ("POST", "/sessions", {}),
            ("POST", f"/sessions/{sid}/messages", {"content": "after"}),
            ("PATCH", f"/sessions/{sid}/controls", {"max_new_tokens": 4}),
            ("POST", f"/sessions/{sid}/undo", None),
            ("DELETE", f"/sessions/{sid}", None),
            ("POST", "/sessions/import", SMALL_EXPORT),
            ("POST", "/sessions/import", big_export(n_turns=2)),  # > 256 KiB: the import child's path
        ]
        for method, path, body in writes:
            r = w.client.request(method, path, json=body)
            assert _is_problem(r, 503), (method, path, r.status_code, r.text[:300])
            assert how in r.json()["error"], r.text[:300]
        # reads still come from the file the worker has open: what it holds can be exported before a restart
        assert w.client.get(f"/sessions/{sid}").json() == before
        assert w.client.get(f"/sessions/{sid}/export").status_code == 200
        assert w.client.get("/health").json()["status"] == "degraded"  # no write slipped through and "cured" it
        if how == "deleted":
            assert not db.exists()  # no import, probe or write made a new, empty file there
        else:
            assert db.read_bytes() == replacement  # nothing was written into the other file
    finally:
        w.close()
    # nothing that was acknowledged is missing after a restart: every write after the loss was refused
    w = Worker(model, space, db)
    try:
        w.wait_ready()
        assert w.client.get("/sessions").json()["sessions"] == []
    finally:
        w.close()
    if how == "replaced":  # the file put in its place was not rolled forward with the old database's WAL
        with sqlite3.connect(db) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            assert ("unrelated",) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()


# Ctrl-C and SIGTERM mid-turn --------------------------------------------------------------------------------------

# The exit codes after a clean shutdown (docs/worker-api.md, "Stopping"): 130 for Ctrl-C, like every other command of
# the CLI, and 0 for SIGTERM, the ordinary way a supervisor stops a service.
CLEAN_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 0}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_mid_turn_stops_the_worker_cleanly_and_the_turn_reads_incomplete(tiny_world, tmp_path, sig) -> None:  # type: ignore[no-untyped-def]
    model, space, _ = tiny_world
    db = tmp_path / "stopped.sqlite3"
    w = Worker(model, space, db)
    try:
        w.wait_ready()
        sid = w.session(controls={"max_new_tokens": 1000, "greedy": False})
        turn = w.say(sid, "Tell me everything.")["assistant_turns"][0]
        other = w.session(controls={"max_new_tokens": 5})
        queued = w.say(other, "Me next.")["assistant_turns"][0]
        w.wait_tokens(sid, turn, 10)
        w.proc.send_signal(sig)
        rc = w.proc.wait(30)
        log = w.log.read_text()
        assert "terminate called" not in log and "Traceback" not in log, log[-2000:]
        assert rc == CLEAN_EXIT[sig], (rc, log[-2000:])
    finally:
        w.close()
    w = Worker(model, space, db)
    try:
        w.wait_ready()
        reply = w.client.get(f"/sessions/{sid}").json()["turns"][-1]
        assert reply["id"] == turn and reply["status"] == "incomplete"
        events = w.events(sid)
        tokens = [e["data"] for e in events if e["type"] == "token" and e["turn"] == turn]
        assert len(tokens) >= 10 and [t["index"] for t in tokens] == list(range(len(tokens)))
        assert reply["content"] == "".join(t["text"] for t in tokens)
        # ended by the worker itself as it stopped (not found running by the next start): a turn_end with its tokens
        ends = [e["data"] for e in events if e["type"] == "turn_end" and e["turn"] == turn]
        assert [(e["status"], e["n_tokens"]) for e in ends] == [("incomplete", len(tokens))], ends
        assert not any(e["type"] == "turn_incomplete" for e in events)
        # decoded in the same batch (#24), without waiting for the map: done before the signal
        beside = w.client.get(f"/sessions/{other}").json()["turns"][-1]
        assert beside["id"] == queued and beside["status"] == "done"
    finally:
        w.close()


# long /project work against chat ------------------------------------------------------------------------------------


def _long_transcript(exchanges: int = 80, words: int = 100) -> list[dict[str, str]]:
    """A conversation the tiny model reads in ~80 windows of ~2,000 tokens (``LONG``): ~10 s of model work here."""
    messages = []
    for i in range(exchanges):
        messages.append({"role": "user", "content": f"question {i} " + "why " * words})
        messages.append({"role": "assistant", "content": f"answer {i} " + "because " * words})
    return messages


LONG = {"window": 2048, "history": 1}


@pytest.fixture(scope="module")
def busy(tiny_world) -> Iterator[Worker]:  # type: ignore[no-untyped-def]
    """A worker of its own: these tests leave projections running (or not) that the shared one must not see."""
    model, space, root = tiny_world
    w = Worker(model, space, root / "lifecycle-project.sqlite3")
    w.wait_ready()
    # a turn that ends while the map is still being built waits for it on the generation thread (tens of seconds on a
    # busy machine): these tests time what a projection costs chat, not that
    _wait(lambda: w.client.get("/health").json()["phase"] == "ready", 300, every=0.5)
    yield w
    w.close()


def _first_token(w: Worker, sid: str, content: str) -> float:
    """Seconds from posting a message to its reply's first token event."""
    t0 = time.perf_counter()
    turn = w.say(sid, content)["assistant_turns"][0]
    w.wait_tokens(sid, turn, 1, timeout=300)
    return time.perf_counter() - t0


def _projection_work(w: Worker) -> dict[str, Any]:
    return dict(w.client.get("/health").json().get("projections") or {})


def _post_project(w: Worker, body: Any, params: dict[str, Any], out: dict[str, Any], timeout: float = 300) -> threading.Thread:
    def send() -> None:
        t0 = time.perf_counter()
        try:
            with httpx.Client(base_url=w.url, timeout=timeout) as client:
                out["response"] = client.post("/project", json=body, params=params)
        except httpx.TimeoutException as exc:
            out["gave_up"] = exc
        out["seconds"] = time.perf_counter() - t0

    thread = threading.Thread(target=send)
    thread.start()
    return thread


def _wait_for_projection(w: Worker, out: dict[str, Any]) -> None:
    """Until /health reports the projection as queued work (it must, while it runs)."""
    try:
        _wait(lambda: _projection_work(w).get("queued", 0) >= 1 and _projection_work(w).get("tokens_left", 0) > 0, 30)
    except TimeoutError:
        pytest.fail(f"/health never reported the projection as queued work: {w.client.get('/health').json()}; {out}")


def test_chat_turns_interleave_with_a_long_projection_and_health_reports_it(busy) -> None:  # type: ignore[no-untyped-def]
    alone = _first_token(busy, busy.session(controls={"max_new_tokens": 3}), "hello")
    out: dict[str, Any] = {}
    thread = _post_project(busy, _long_transcript(), LONG, out)
    try:
        _wait_for_projection(busy, out)
        _first_token(busy, busy.session(controls={"max_new_tokens": 3}), "and me?")
        still_reading = "response" not in out and _projection_work(busy).get("tokens_left", 0) > 0
    finally:
        thread.join(300)
    assert out["response"].status_code == 200, out["response"].text[:300]
    result = out["response"].json()
    assert result["windowed"] and len(result["turns"]) == 80 and all(t["projection"] is not None for t in result["turns"])
    # Before the slicing, the turn waited for the whole projection; now its first token comes while the projection
    # still has work left (an order of events, not a timing)
    assert alone > 0 and still_reading, out.get("seconds")
    assert _projection_work(busy).get("queued") == 0


def test_a_projection_whose_client_gave_up_is_dropped(busy) -> None:  # type: ignore[no-untyped-def]
    sid = busy.session(controls={"max_new_tokens": 3})
    alone = _first_token(busy, sid, "hello")
    out: dict[str, Any] = {}
    thread = _post_project(busy, _long_transcript(), LONG, out, timeout=1.5)
    _wait_for_projection(busy, out)
    total = _projection_work(busy)["tokens_left"]
    left: list[int] = []
    thread.join(60)
    assert "gave_up" in out, out

    def dropped() -> bool:
        work = _projection_work(busy)
        if work.get("queued"):
            left.append(int(work.get("tokens_left", 0)))
        return not work.get("queued")

    _wait(dropped, 120)
    # dropped with most of its work unread, not read to its end for nobody (an order of events, not a timing)
    assert left and left[-1] > total / 2, (total, left[-3:])
    assert _first_token(busy, sid, "still there?") > 0 and alone > 0


def test_a_projection_past_its_deadline_answers_504_and_is_dropped(busy) -> None:  # type: ignore[no-untyped-def]
    r = busy.client.post("/project", json=_long_transcript(), params={**LONG, "deadline": 2})
    assert _is_problem(r, 504) and "deadline" in r.json()["error"], r.text[:300]
    assert _projection_work(busy).get("queued") == 0
    ok = busy.client.post("/project", json=_long_transcript(exchanges=2, words=5))
    assert ok.status_code == 200 and len(ok.json()["turns"]) == 2


# slices read what one pass reads -------------------------------------------------------------------------------------


@pytest.mark.parametrize("window", [None, 64])
@pytest.mark.parametrize("slice_tokens", [1, 7, 50])
def test_a_reading_in_slices_equals_the_reading_in_one_go(tiny_world, window, slice_tokens) -> None:  # type: ignore[no-untyped-def]
    from backend.models.loading import load_model
    from backend.reading.transcripts import Reading, parse_transcript, project_transcript
    from backend.store.space import load_space

    model, space_path, _ = tiny_world
    loaded, space = _loaded(model, space_path, load_model, load_space)
    transcript = parse_transcript(_long_transcript(exchanges=4, words=9))
    whole = project_transcript(loaded, space, transcript, layer=2, window=window, tokens=True)
    reading = Reading(loaded, space, transcript, layer=2, window=window, tokens=True, slice_tokens=slice_tokens)
    total, steps = reading.tokens_left, 0
    assert total == whole["tokens_read"]
    while not reading.step():
        steps += 1
        assert 0 < reading.tokens_left < total
    assert reading.tokens_left == 0 and steps >= total // slice_tokens - 1
    sliced = reading.result()
    json.dumps(sliced, allow_nan=False)  # plain JSON values, as the route answers them
    assert sliced.keys() == whole.keys()
    for a, b in zip(sliced["turns"], whole["turns"], strict=True):
        assert a.keys() == b.keys() and a["n_tokens"] == b["n_tokens"] and a["nearest"][0]["name"] == b["nearest"][0]["name"]
        assert a["projection"] == pytest.approx(b["projection"], rel=1e-5, abs=1e-5)
        assert a["token_projections"] == pytest.approx(b["token_projections"], rel=1e-4, abs=1e-4)
        assert a["pca"] == pytest.approx(b["pca"], rel=1e-4, abs=1e-4)
    assert {k: v for k, v in sliced.items() if k != "turns"} == {k: v for k, v in whole.items() if k != "turns"}


_MODELS: dict[str, Any] = {}


def _loaded(model: str, space_path: Path, load_model: Any, load_space: Any) -> tuple[Any, Any]:
    if model not in _MODELS:
        _MODELS[model] = (load_model(model), load_space(space_path))
    return _MODELS[model]
