"""Concurrent decoding (#24): every running turn is a row of one batch, and each equals its solo run.

Two chat sessions (one a capped-vs-uncapped comparison) and an OpenAI API request, greedy with different caps and
lengths, submitted together and one joining while the others run, on an engine that decodes them as one batch:
every turn gives the tokens, projections and cap deltas it gives alone (the same engine decoding one row at a time),
their tokens interleave (each has tokens before another ends), and nothing is lost.
Also: stopping one session's turns, or changing its controls mid-turn, touches no other row.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from backend.store.space import load_space

SPECS = (  # (content, controls, compare)
    ("Tell me about the sea.", dict(cap_enabled=True, cap_percentile=50.0, max_new_tokens=14, seed=3), True),
    ("What is a ghost?", dict(cap_enabled=False, max_new_tokens=9, seed=5), False),
    ("Sing me a song.", dict(cap_enabled=True, cap_percentile=90.0, max_new_tokens=11, seed=7), False),
)


def _engine(tiny_world, path, batch_rows, on_token=None):  # type: ignore[no-untyped-def]
    """An engine whose token and turn-end writes are logged in order; ``on_token(turn, n)`` runs on the generation
    thread after a turn's ``n``-th token is written (between two steps)."""
    from backend.models.loading import load_model
    from backend.worker.db import Database
    from backend.worker.engine import Engine

    model, space_path, _ = tiny_world
    engine = Engine(load_model(model), load_space(space_path), Database(path), threads=1, batch_rows=batch_rows)
    log: list[tuple[str, int]] = []  # every token and turn end, in the order the engine wrote them
    append, finish = engine.db.append_token, engine.db.finish_turn

    def append_token(sid: str, turn: int, piece: str, data: dict[str, Any]) -> Any:
        log.append(("token", turn))
        out = append(sid, turn, piece, data)
        if on_token is not None:
            on_token(turn, sum(1 for kind, t in log if kind == "token" and t == turn))
        return out

    def finish_turn(turn: int, *args: Any, **kwargs: Any) -> Any:
        log.append(("end", turn))
        return finish(turn, *args, **kwargs)

    engine.db.append_token, engine.db.finish_turn = append_token, finish_turn  # type: ignore[method-assign]
    engine.start()
    assert engine.ready.wait(60)
    return engine, log


def _submit(engine, content: str, controls: dict[str, Any], compare: bool, api: bool) -> tuple[str, list[int]]:  # type: ignore[no-untyped-def]
    from backend.worker import openai_turns
    from backend.worker.openai_shapes import ChatRequest
    from backend.worker.schemas import Controls

    settings = Controls(greedy=True, **controls)
    if api:
        request = ChatRequest(model="tiny", messages=[{"role": "user", "content": content}], max_tokens=settings.max_new_tokens)  # type: ignore[list-item]
        sid, turn = openai_turns.submit(engine, request, settings)
        return sid, [turn]
    sid = engine.db.create_session(None, settings.model_dump(mode="json"))
    return sid, engine.submit(sid, content, compare)[1]


def _reply(engine, sid: str, turn: int) -> tuple[list[int], list[float], list[Any], str]:  # type: ignore[no-untyped-def]
    events = engine.db.events(sid)
    tokens = [e["data"] for e in events if e["type"] == "token" and e["turn"] == turn]
    return (
        [t["token_id"] for t in tokens],
        [t["projection"] for t in tokens],
        [t.get("cap_delta") for t in tokens],
        engine.db.turn(turn)["status"],
    )


def _wait(engine, sids: list[str]) -> None:  # type: ignore[no-untyped-def]
    deadline = time.time() + 120
    while any(engine.busy(s) for s in sids) and time.time() < deadline:
        time.sleep(0.01)
    assert not any(engine.busy(s) for s in sids)


def _close(engine) -> None:  # type: ignore[no-untyped-def]
    engine.close()
    engine.thread.join(30)


@pytest.fixture(scope="module")
def solo(tiny_world, tmp_path_factory):  # type: ignore[no-untyped-def]
    """Each of SPECS alone, on an engine that decodes one job at a time (the third as an API request)."""
    engine, _ = _engine(tiny_world, tmp_path_factory.mktemp("solo") / "solo.sqlite3", batch_rows=1)
    try:
        assert engine.batch is None
        expected = []
        for i, (content, controls, compare) in enumerate(SPECS):
            sid, turns = _submit(engine, content, controls, compare, api=i == 2)
            _wait(engine, [sid])
            expected.append([_reply(engine, sid, t) for t in turns])
        return expected
    finally:
        _close(engine)


def _same(got, want) -> None:  # type: ignore[no-untyped-def]
    for (tokens, projections, deltas, status), (t0, p0, d0, s0) in zip(got, want, strict=True):
        assert status == s0 == "done"
        assert tokens == t0 and len(tokens) > 0
        assert projections == pytest.approx(p0, abs=1e-4)
        for mine, theirs in zip(deltas, d0, strict=True):
            assert (mine is None) == (theirs is None)
            if mine is not None:
                assert mine == pytest.approx(theirs, abs=1e-4)


@pytest.mark.timeout(600)
def test_overlapping_turns_each_equal_their_solo_run(tiny_world, tmp_path, solo) -> None:  # type: ignore[no-untyped-def]
    engine, log = _engine(tiny_world, tmp_path / "batched.sqlite3", batch_rows=4)
    try:
        assert engine.batch is not None
        first = [_submit(engine, *SPECS[i][:3], api=False) for i in (0, 1)]
        while not any(kind == "token" for kind, _ in log):  # the API request joins a running batch
            time.sleep(0.001)
        third = _submit(engine, *SPECS[2][:3], api=True)
        submitted = [*first, third]
        _wait(engine, [sid for sid, _ in submitted])
        for (sid, turns), want in zip(submitted, solo, strict=True):
            _same([_reply(engine, sid, t) for t in turns], want)
        # decoded together: every turn had a token before some other turn ended, and a later one joined mid-way
        turns = [t for _, ts in submitted for t in ts]
        ends = {t: log.index(("end", t)) for t in turns}
        firsts = {t: log.index(("token", t)) for t in turns}
        for t in turns:
            assert any(firsts[t] < ends[o] for o in turns if o != t)
        assert firsts[third[1][0]] > min(firsts.values())
        assert engine.queue_length() == 0 and engine.running_jobs() == []
    finally:
        _close(engine)


@pytest.mark.timeout(600)
def test_a_stop_or_a_control_change_touches_only_its_own_session(tiny_world, tmp_path, solo) -> None:  # type: ignore[no-untyped-def]
    from backend.worker.schemas import ControlsPatch

    ids: dict[str, Any] = {}

    def on_token(turn: int, n: int) -> None:  # after the changed turn's 2nd token, before the next step
        if turn == ids.get("turn") and n == 2:
            engine.stop(ids["stopped"])
            ids["version"] = engine.patch_controls(ids["changed"], ControlsPatch(cap_enabled=True, cap_percentile=60.0))[1]

    engine, _ = _engine(tiny_world, tmp_path / "batched.sqlite3", batch_rows=4, on_token=on_token)
    try:
        with engine.model_lock:  # all three join before the first step
            stopped, pair = _submit(engine, *SPECS[0][:3], api=False)
            changed, [turn] = _submit(
                engine, "What is a ghost?", dict(cap_enabled=False, max_new_tokens=40, seed=5), False, False
            )
            third = _submit(engine, *SPECS[2][:3], api=True)
            ids.update(stopped=stopped, changed=changed, turn=turn)
        _wait(engine, [stopped, changed, third[0]])
        version = ids["version"]
        assert {engine.db.turn(t)["status"] for t in pair} == {"stopped"}
        _same([_reply(engine, third[0], third[1][0])], solo[2])  # the other session's request: as if alone
        events = engine.db.events(changed)
        applied = [e["data"] for e in events if e["type"] == "controls_applied" and e["turn"] == turn]
        assert len(applied) == 1 and applied[0]["controls_version"] == version
        tokens = [e["data"] for e in events if e["type"] == "token" and e["turn"] == turn]
        assert engine.db.turn(turn)["status"] == "done" and len(tokens) == 40
        start = applied[0]["from_token"]
        assert start == 2
        assert [t["controls_version"] == version for t in tokens] == [i >= start for i in range(len(tokens))]
        assert [t["cap_on"] for t in tokens] == [i >= start for i in range(len(tokens))]  # the cap is on from there
    finally:
        _close(engine)


@pytest.mark.timeout(600)
def test_a_limit_raised_mid_turn_gives_the_row_room_for_it(tiny_world, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from backend.worker.schemas import ControlsPatch

    ids: dict[str, Any] = {}

    def on_token(turn: int, n: int) -> None:  # after its 2nd of 4 tokens, before the next step
        if turn == ids.get("turn") and n == 2:
            engine.patch_controls(ids["sid"], ControlsPatch(max_new_tokens=30))

    engine, _ = _engine(tiny_world, tmp_path / "batched.sqlite3", batch_rows=4, on_token=on_token)
    try:
        with engine.model_lock:
            other, _ = _submit(engine, *SPECS[1][:3], api=False)
            sid, [turn] = _submit(engine, "Hello there.", dict(cap_enabled=False, max_new_tokens=4, seed=1), False, False)
            ids.update(sid=sid, turn=turn)
        _wait(engine, [sid, other])
        tokens = [e for e in engine.db.events(sid) if e["type"] == "token" and e["turn"] == turn]
        assert engine.db.turn(turn)["status"] == "done" and len(tokens) == 30
    finally:
        _close(engine)
