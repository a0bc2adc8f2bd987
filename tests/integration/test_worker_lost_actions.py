"""The worker's side of issue #23, on a real worker process (the tiny model): a blank message is refused with a 400
in the worker's error shape and stores nothing; Stop can stop only the running turn, or only cancel the queued ones;
a session says how many jobs run before each of its queued turns."""

from __future__ import annotations

import time
from typing import Any


def turns(worker, sid: str) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    return list(worker.client.get(f"/sessions/{sid}").json()["turns"])


def status(worker, sid: str, turn: int) -> str:  # type: ignore[no-untyped-def]
    return str(next(t["status"] for t in turns(worker, sid) if t["id"] == turn))


def wait_for(fn, timeout: float = 60):  # type: ignore[no-untyped-def]
    deadline = time.time() + timeout
    while time.time() < deadline:
        if value := fn():
            return value
        time.sleep(0.05)
    raise TimeoutError("condition not met")


def test_a_blank_message_is_refused_with_400_and_stores_nothing(worker) -> None:  # type: ignore[no-untyped-def]
    sid = worker.session(controls={"max_new_tokens": 4})
    before = worker.client.get(f"/sessions/{sid}/events").json()["events"]
    for blank in (" ", "\n\n", " \t\u3000\n"):
        r = worker.client.post(f"/sessions/{sid}/messages", json={"content": blank})
        assert r.status_code == 400, r.text
        assert r.json() == {"error": "the message is blank (only spaces or line breaks): nothing was sent", "detail": None}
    assert turns(worker, sid) == [] and worker.client.get(f"/sessions/{sid}/events").json()["events"] == before
    assert worker.client.post(f"/sessions/{sid}/messages", json={"content": " hi "}).status_code == 202  # text around spaces


def test_stop_running_keeps_the_queued_turn_and_cancel_queued_keeps_the_running_one(worker) -> None:  # type: ignore[no-untyped-def]
    sid = worker.session(controls={"max_new_tokens": 1024})
    first = worker.say(sid, "Tell me a very long story.")["assistant_turns"][0]
    worker.wait_tokens(sid, first, 3)
    accepted = worker.say(sid, "And another one.")
    second = accepted["assistant_turns"][0]
    assert accepted["queue_position"] >= 1
    positions = worker.client.get(f"/sessions/{sid}").json()["queue"]
    assert positions.get(str(second), -1) >= 1  # behind the running turn
    r = worker.client.post(f"/sessions/{sid}/stop", params={"turns": "running"})
    assert r.status_code == 200 and r.json() == {"stopped": [first]}
    wait_for(lambda: status(worker, sid, first) == "stopped")
    wait_for(lambda: status(worker, sid, second) in ("running", "done"))  # the queued one was not dropped
    worker.client.post(f"/sessions/{sid}/stop", params={"turns": "running"})
    wait_for(lambda: status(worker, sid, second) in ("stopped", "done"))

    third = worker.say(sid, "A third story, a long one.")["assistant_turns"][0]
    worker.wait_tokens(sid, third, 3)
    fourth = worker.say(sid, "A fourth.")["assistant_turns"][0]
    fifth = worker.say(sid, "A fifth.")["assistant_turns"][0]
    r = worker.client.post(f"/sessions/{sid}/stop", params={"turns": "queued"})
    assert r.status_code == 200 and sorted(r.json()["stopped"]) == [fourth, fifth]
    ends = {e["turn"]: e["data"] for e in worker.events(sid) if e["type"] == "turn_end"}
    assert ends[fourth]["reason"] == "cancelled before it started" and ends[fifth]["n_tokens"] == 0
    assert status(worker, sid, third) == "running"  # the running one goes on
    assert worker.client.get(f"/sessions/{sid}").json()["queue"] == {}
    worker.client.post(f"/sessions/{sid}/stop")  # all (the default, as before)
    worker.wait_idle(sid)
    assert status(worker, sid, third) == "stopped"


def test_stop_names_what_it_stops(worker) -> None:  # type: ignore[no-untyped-def]
    sid = worker.session(controls={"max_new_tokens": 4})
    assert worker.client.post(f"/sessions/{sid}/stop", params={"turns": "everything"}).status_code == 422
    for what in ("running", "queued", "all"):
        r = worker.client.post(f"/sessions/{sid}/stop", params={"turns": what})
        assert r.status_code == 200 and r.json() == {"stopped": []}  # nothing to stop: said so, not an error
