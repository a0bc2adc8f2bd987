"""The worker's compiled decode step: built in the background while the worker serves, then the same replies.

A turn served by the compiled step (a two-row batch on a shadow of the model, a twin row filling a single turn's
batch) must give the tokens and per-token readings an eager worker gives: greedy, the cap on, for a single turn and
for a compare pair; and so must the rows of the shared batch on its compiled steps.
"""

from __future__ import annotations

import os
import time

import pytest

from backend.store.space import load_space


def _engine(tiny_world, path, compile, batch_rows=1):  # type: ignore[no-untyped-def]
    from backend.models.loading import load_model
    from backend.worker.db import Database
    from backend.worker.engine import Engine

    model, space_path, _ = tiny_world
    engine = Engine(
        load_model(model), load_space(space_path), Database(path), threads=1, compile=compile, batch_rows=batch_rows
    )  # batch_rows=1: compiled steps serve one job at a time
    engine.start()
    assert engine.ready.wait(60)
    return engine


def _turns(engine, compare: bool, prompt: str = "Tell me about the sea.", cap: float = 50.0):  # type: ignore[no-untyped-def]
    """Greedy replies with the cap on: (variant, tokens, projections, cap deltas) per assistant turn."""
    return _together(engine, [(prompt, compare, cap)])[0]


def _together(engine, asks):  # type: ignore[no-untyped-def]
    """Each (prompt, compare, cap percentile) in a session of its own, all submitted before any is awaited (so they
    share the batch): per ask, (variant, tokens, projections, cap deltas) per assistant turn."""
    from backend.worker.schemas import Controls

    sessions = []
    with engine.model_lock:  # nothing starts until all are queued
        for prompt, compare, cap in asks:
            controls = Controls(greedy=True, cap_enabled=True, cap_percentile=cap, max_new_tokens=12, seed=3)
            sid = engine.db.create_session(None, controls.model_dump(mode="json"))
            sessions.append((sid, engine.submit(sid, prompt, compare)[1]))
    deadline = time.time() + 120
    while any(engine.busy(sid) for sid, _ in sessions) and time.time() < deadline:
        time.sleep(0.02)
    return [_read(engine, sid, turns) for sid, turns in sessions]


def _read(engine, sid, turns):  # type: ignore[no-untyped-def]
    events = engine.db.events(sid)
    out = []
    for turn in turns:
        tokens = [e["data"] for e in events if e["type"] == "token" and e["turn"] == turn]
        assert tokens, "the turn produced no tokens"
        out.append(
            (
                tokens[0]["variant"],
                [e["token_id"] for e in tokens],
                [e["projection"] for e in tokens],
                [e.get("cap_delta") for e in tokens],
            )
        )
    return out


@pytest.mark.timeout(600)
def test_compiled_turns_equal_eager_turns(tiny_world, tmp_path) -> None:  # type: ignore[no-untyped-def]
    eager = _engine(tiny_world, tmp_path / "eager.sqlite3", compile=False)
    try:
        expected = {compare: _turns(eager, compare) for compare in (False, True)}
        assert eager.compile_state.startswith("eager")
    finally:
        eager.close()
        eager.thread.join(30)
    engine = _engine(tiny_world, tmp_path / "compiled.sqlite3", compile=True)
    try:
        assert engine.compile_state.startswith("compiling") and not engine.compiled  # ready before any compiled step
        served_while_compiling = _turns(engine, False)  # eager meanwhile: the worker does not wait for the compile
        deadline = time.time() + 540
        while not engine.compile_state.startswith(("compiled", "eager")) and time.time() < deadline:
            time.sleep(0.2)
        assert [(c.rows, c.capacity) for c in engine.compiled] == [(1, 512), (2, 512), (1, 1024), (2, 1024)]
        assert served_while_compiling == expected[False]
        for compare in (False, True):
            for c in engine.compiled:
                c.controls.before.zero_()
            got = _turns(engine, compare)
            used = [c for c in engine.compiled if c.controls.before.abs().sum() > 0]  # whose hooks ran
            assert [(c.rows, c.capacity) for c in used] == [(2 if compare else 1, 512)]
            for (variant, tokens, projections, deltas), (v0, t0, p0, d0) in zip(got, expected[compare], strict=True):
                assert (variant, tokens) == (v0, t0)
                assert projections == pytest.approx(p0, abs=1e-4)
                assert deltas == pytest.approx(d0, abs=1e-4)
    finally:
        while engine.compile_state.startswith("compiling"):  # a daemon thread inside inductor at exit aborts Python
            time.sleep(0.2)
        engine.close()
        engine.thread.join(30)


@pytest.mark.timeout(600)
def test_the_shared_batch_on_compiled_steps_equals_eager_turns(tiny_world, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The default worker (turns share one batch): once its compiled steps are ready, one row and two rows run on the
    step for their count, three eagerly, and every turn still equals the one an eager worker gives it alone."""
    asks = [("Tell me about the sea.", True, 50.0), ("Name a river.", False, 90.0)]
    eager = _engine(tiny_world, tmp_path / "eager.sqlite3", compile=False, batch_rows=4)
    try:
        expected = [_turns(eager, compare, prompt, cap) for prompt, compare, cap in asks]  # each alone
        assert eager.compile_state.startswith("eager")
    finally:
        eager.close()
        eager.thread.join(30)
    engine = _engine(tiny_world, tmp_path / "compiled.sqlite3", compile=True, batch_rows=4)
    try:
        deadline = time.time() + 540
        while not engine.compile_state.startswith(("compiled", "eager")) and time.time() < deadline:
            time.sleep(0.2)
        assert [(c.rows, c.capacity) for c in engine.compiled] == [(1, 512), (2, 512), (1, 1024), (2, 1024)]
        from torch._dynamo.utils import counters

        graphs = counters["stats"]["unique_graphs"]
        for batch, rows in (([asks[1]], 1), ([asks[0]], 2), (asks, None)):
            for c in engine.compiled:
                c.controls.before.zero_()
            got = _together(engine, batch)
            used = [c.rows for c in engine.compiled if c.controls.before.abs().sum() > 0]  # whose hooks ran
            if rows is not None:  # (a pair's row that ends first leaves the other on the one-row step)
                assert rows in used and max(used) == rows
            for mine, theirs in zip(got, [expected[asks.index(a)] for a in batch], strict=True):
                for (variant, tokens, projections, deltas), (v0, t0, p0, d0) in zip(mine, theirs, strict=True):
                    assert (variant, tokens) == (v0, t0)
                    assert projections == pytest.approx(p0, abs=1e-4)
                    assert deltas == pytest.approx(d0, abs=1e-4)
        assert counters["stats"]["unique_graphs"] == graphs  # the batch's steps ran the graphs as compiled: no retrace
    finally:
        while engine.compile_state.startswith("compiling"):  # a daemon thread inside inductor at exit aborts Python
            time.sleep(0.2)
        engine.close()
        engine.thread.join(30)


def test_inductor_cache_goes_to_our_folder_unless_the_user_chose_one(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Loading a model makes torch set its /tmp default; that must not keep the cache out of the persona-space folder."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    from backend.decode.engine import use_inductor_cache

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())
    use_inductor_cache(str(tmp_path / "ours"))
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "ours")
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    use_inductor_cache(str(tmp_path / "ours2"))
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "ours2")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "the user's"))
    use_inductor_cache(str(tmp_path / "ours3"))
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "the user's")
