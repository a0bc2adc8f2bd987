"""The worker's model work happens on its generation thread, with the CPUs; the main thread stays at one torch thread.

Why (see backend/kernels/cpu_threads.py): libgomp throttles every OpenMP team once a process holds more OpenMP threads than
CPUs, and the main thread's team lives as long as the process; the generation thread's decode step then takes
about twice as long.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import pytest

from backend.store.space import load_space


def test_reserve_keeps_the_main_thread_single_and_own_gives_the_generation_thread_its_count() -> None:
    # in a fresh interpreter: the test process's own threads must not be changed
    code = textwrap.dedent(
        """
        import threading, torch
        torch.set_num_threads(2)
        from backend.kernels import cpu_threads
        threads = cpu_threads.reserve()
        seen = {}
        def generation():
            cpu_threads.own(threads)
            seen["generation"] = torch.get_num_threads()
            t = threading.Thread(target=lambda: seen.setdefault("helper", torch.get_num_threads()))
            t.start(); t.join()
        t = threading.Thread(target=generation); t.start(); t.join()
        print(threads, torch.get_num_threads(), seen["generation"], seen["helper"], cpu_threads.reserve())
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["2", "1", "2", "2", "1"]  # reserved 2; main 1; generation 2; a helper thread 2; main still 1


@pytest.fixture
def engine(tiny_world, tmp_path):  # type: ignore[no-untyped-def]
    from backend.models.loading import load_model
    from backend.worker.db import Database
    from backend.worker.engine import Engine

    model, space_path, _ = tiny_world
    engine = Engine(load_model(model), load_space(space_path), Database(tmp_path / "w.sqlite3"), threads=1)
    engine.start()
    assert engine.ready.wait(60)
    yield engine
    engine.close()
    engine.thread.join(30)


def test_model_work_from_another_thread_runs_on_the_generation_thread(engine) -> None:  # type: ignore[no-untyped-def]
    assert engine.call(lambda: threading.current_thread().name) == "generation"
    projected = engine.project([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}], None)
    assert projected["turns"]  # a transcript projected through the call queue


def test_a_failing_call_raises_on_the_caller_and_the_engine_goes_on(engine) -> None:  # type: ignore[no-untyped-def]
    def boom() -> None:
        raise ValueError("bad transcript")

    with pytest.raises(ValueError, match="bad transcript"):
        engine.call(boom)
    assert engine.call(lambda: 41 + 1) == 42


def test_a_call_queued_at_shutdown_is_refused_not_left_waiting(engine) -> None:  # type: ignore[no-untyped-def]
    from backend.errors import PersonaSpaceError

    running, release = threading.Event(), threading.Event()
    first = threading.Thread(target=engine.call, args=(lambda: (running.set(), release.wait(30)),))
    first.start()
    assert running.wait(30)  # the generation thread is busy with the first call
    outcome: list[BaseException | str] = []

    def second() -> None:
        try:
            outcome.append(engine.call(lambda: "ran"))
        except BaseException as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=second)
    waiter.start()
    while not engine.calls:  # queued behind the first
        threading.Event().wait(0.01)
    engine.close()
    release.set()
    waiter.join(30)
    first.join(30)
    assert len(outcome) == 1 and isinstance(outcome[0], PersonaSpaceError)
    engine.thread.join(30)
    assert engine.call(lambda: threading.current_thread().name) == threading.current_thread().name  # no thread: inline
