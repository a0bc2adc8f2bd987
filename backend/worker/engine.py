"""The generation engine: one model, one FIFO queue of turns, per-session controls applied token by token.

Turns from every session (chat sessions and the OpenAI API's requests, :mod:`backend.worker.openai_turns`, alike)
are decoded together in a single thread (forward hooks are global to the model object): every running turn is a row
of one batch (:mod:`backend.worker.batch`), each row with its own cap, steering, generator and stop condition, so each
equals its single-row run. A queued job joins between two steps once its rows fit (up to ``batch_rows``) and its
session has no running job (its next turn replies to this one); rows leave as they end. A model whose cache cannot
take rows that join mid-way (a sliding window shorter than its context), or ``batch_rows=1``, runs one job at a time
(:func:`backend.worker.turn.run_turn`, on a compiled step when one is ready; a comparison's two columns still one
batch). A control change is queued for its session and picked up at the start of the next step: it applies to the
forward pass over the next token and to everything sampled after it, and the loop records ``controls_applied`` with
the token index. Every token event carries the controls version that was in force for the forward pass over that
token. The queue's items are in :mod:`backend.worker.jobs`.

A transcript projection (``POST /project``, :mod:`backend.worker.projection_queue`) is queued as a
:class:`backend.worker.jobs.Projection` and read a slice at a time (``PROJECTION_SLICE_TOKENS`` positions, a fraction
of a second for the embedded model on two cores) between steps: a slice runs once the batch's steps since the last slice took as long as that slice did (one job at a
time: after each slice a queued turn runs first, and after each turn the next slice), so neither starves the other.
Before each slice a projection whose client went away or whose deadline passed is dropped.

:meth:`Engine.shutdown` stops the engine for good: the running turns end ``incomplete`` at their next step (with the
tokens they have), queued turns are marked ``incomplete``, queued calls and projections fail, and the generation
thread ends, so that the interpreter never exits while it runs torch code.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import torch
from pydantic import ValidationError

from backend.decode.batch import unjoinable
from backend.decode.compiled import CompiledRows
from backend.decode.generate import eos_ids
from backend.errors import PersonaSpaceError
from backend.hooks.interventions import Cap, Steer
from backend.hooks.rows import RowControls
from backend.kernels import cpu_threads
from backend.models.loading import LoadedModel
from backend.reading.placement import Placement
from backend.reading.transcripts import max_context
from backend.reading.turn_traits import TurnTraits
from backend.store.space import Space
from backend.view.cap_preset import default_cap
from backend.worker.batch import MAX_ROWS, Running
from backend.worker.db import Database
from backend.worker.imports import describe
from backend.worker.jobs import Call, Conflict, ControlError, Job, Projection, ShuttingDown
from backend.worker.projection_queue import ProjectionQueue
from backend.worker.schemas import Controls, ControlsPatch, WindowError, fit_controls
from backend.worker.steering import Steering
from backend.worker.turn import run_turn

log = logging.getLogger("persona_space.worker")

# (rows, cache positions) the worker compiles a decode step for, in this order (~10 s each on two cores with inductor's
# disk cache warm): a single turn uses a one-row step, a compare pair a two-row one, each the smallest ready cache its
# prompt plus max_new_tokens fits. A larger cache costs attention time every step (it is read whole), and a one-row
# step ~2 ms less than a two-row one, so the small ones come first. The shared batch (backend.decode.batch) runs on
# the same shapes: one row or two (one turn, a pair, two turns) gain 1.2-1.3x from compiling, while three or four
# rows on a compiled four-row step gain nothing over the eager step (bench/batch_steps.py: 1.00 and 0.95-0.99), so
# they stay eager.
COMPILED_SHAPES = ((1, 512), (2, 512), (1, 1024), (2, 1024))

STEP = object()  # _next_job's answer when the running batch should take one step


class Engine(ProjectionQueue):
    def __init__(
        self, loaded: LoadedModel, space: Space, db: Database, threads: int | None = None, compile: bool = False,
        api_cap: str = "default", batch_rows: int = MAX_ROWS,
    ) -> None:  # fmt: skip
        self.loaded = loaded
        self.api_cap = api_cap  # the OpenAI API's cap when a request names none: default, off or pN (serve --cap)
        self.compile = compile  # build compiled decode steps in the background (serving eagerly meanwhile)
        self.compiled: list[CompiledRows] = []  # ready ones, smallest capacity first
        self.compile_state = "compiling" if compile else "eager (compiling is off)"
        self.threads = int(threads or torch.get_num_threads())  # the generation thread's torch threads
        self.space = space
        self.db = db
        self.placement = Placement(space)
        self.turn_traits = TurnTraits.of(space)  # None for a space without traits: turns then carry none
        info = loaded.info
        self.n_layers = info.n_layers
        self.target = space.target_layer
        self.axis = space.tensors["axis"]
        self.cap_window = tuple(space.manifest.get("cap_window") or info.cap_window)
        self.jobs: deque[Job] = deque()
        self.calls: deque[Call] = deque()  # served before queued turns
        self.projections: deque[Projection] = deque()  # a slice at a time, taking turns with the queued turns
        self.projecting: Projection | None = None  # the one whose slice runs now
        self.turn_next = True  # after a slice a queued turn goes first; after a turn, a slice
        self.cond = threading.Condition()
        self.running: Job | None = None
        self.pending: dict[str, tuple[Controls, int]] = {}
        self.ready = threading.Event()
        self.model_lock = threading.Lock()  # hooks are global to the model: one user of it at a time
        self.closed = False
        self.tokens_generated = 0
        self.unrecorded: dict[int, str] = {}  # failed turns whose failure the database did not take yet
        self.max_context = max_context(loaded.model)
        self.stop_ids = eos_ids(loaded)
        self.steering = Steering(space, self.turn_traits)  # the axis's and the traits' steering vectors
        self.steer_vectors = self.steering.vectors
        pad = loaded.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else min(self.stop_ids or {0}))
        self.thread = threading.Thread(target=self._loop, name="generation", daemon=True)
        # every running turn a row of one batch (backend.worker.batch), unless the model's cache cannot take rows
        # that join mid-way or one row at a time was asked for: then one job at a time (backend.worker.turn)
        why = "one row at a time was asked for" if batch_rows < 2 else unjoinable(loaded.model, self.max_context)
        if why is not None:
            log.info("turns are decoded one at a time: %s", why)
        self.batch: Running | None = Running(self, batch_rows) if why is None else None
        self.step_s = 0.0  # seconds spent on batch steps since the last projection slice
        self.slice_s = 0.0  # how long the last slice took (a slice is due once the steps took as long)

    # setup ----------------------------------------------------------------------------------------------

    def start(self) -> None:
        self.db.recover()
        self.thread.start()

    def close(self) -> None:
        """Stop taking work: the running turn ends ``incomplete`` at its next step; the loop then ends."""
        with self.cond:
            self.closed = True
            for job in self.running_jobs():
                job.stop.set()
            self.cond.notify_all()

    def shutdown(self, timeout: float) -> bool:
        """Close, wait up to ``timeout`` s for the generation thread to end, and mark the turns still queued
        ``incomplete``. True when the thread has ended (or never started)."""
        self.close()
        if self.thread.is_alive() and threading.current_thread() is not self.thread:
            self.thread.join(timeout)
        with self.cond:
            left, self.jobs = list(self.jobs), deque()
        for job in left:
            for each in [job] + ([job.partner] if job.partner is not None else []):
                try:
                    self.db.finish_turn(
                        each.turn_id, "incomplete", {"reason": "the worker stopped before this turn started", "n_tokens": 0},
                        only_if="queued",
                    )  # fmt: skip
                except Exception as exc:  # the database may be gone too: the next start marks them
                    log.warning("turn %s was left queued: %s", each.turn_id, exc)
        stopped = not self.thread.is_alive()
        if stopped:  # anything still marked queued or running (a turn taken just as the engine closed) is not
            try:
                self.db.recover()
            except Exception as exc:
                log.warning("turns left running are marked incomplete at the next start: %s", exc)
        return stopped

    # controls -------------------------------------------------------------------------------------------
    def default_controls(self) -> Controls:
        """The cap preset measured by ``evaluate-cap`` when the space has one, else p75 on the cap window."""
        percentile, window = default_cap(self.space.manifest, self.cap_window)
        return Controls(cap_percentile=percentile, cap_layers=window)

    def validate_controls(self, controls: Controls) -> Controls:
        self.steering.check(controls)
        try:
            return fit_controls(controls, self.n_layers, (int(self.cap_window[0]), int(self.cap_window[1])))
        except WindowError as exc:
            raise ControlError(str(exc)) from exc

    def patch_controls(self, sid: str, patch: ControlsPatch) -> tuple[Controls, int]:
        with self.cond:  # read, merge and write as one step: concurrent patches never overwrite each other
            return self._patch_controls(sid, patch)

    def _patch_controls(self, sid: str, patch: ControlsPatch) -> tuple[Controls, int]:
        session = self.db.session(sid)
        if session is None:
            raise KeyError(sid)
        current = Controls(**session["controls"])
        flags = ("clear_cap_threshold", "clear_steer_trait")
        update = {k: v for k, v in patch.model_dump(exclude_unset=True).items() if k not in flags and v is not None}
        data = current.model_dump()
        data.update(update)
        if patch.clear_cap_threshold:
            data["cap_threshold"] = None
        if patch.clear_steer_trait:  # back to the Assistant Axis
            data["steer_trait"] = None
        try:
            controls = self.validate_controls(Controls(**data))
        except ValidationError as exc:
            raise ControlError(describe(exc)) from exc
        running = next((j for j in self.running_jobs() if j.session_id == sid), None)
        version = self.db.set_controls(sid, controls.model_dump(mode="json"), running.turn_id if running else None, None)
        self.pending[sid] = (controls, version)
        return controls, version

    def cap_record(self, controls: Controls, variant: str) -> Cap | None:
        enabled = controls.cap_enabled if variant == "single" else variant == "capped"
        if not enabled:
            return None
        start, stop = controls.cap_layers or self.cap_window
        layers = list(range(start, stop))
        if controls.cap_threshold is not None:
            taus = {layer: float(controls.cap_threshold) for layer in layers}
        else:
            percentile = (
                default_cap(self.space.manifest, self.cap_window)[0]
                if controls.cap_percentile is None
                else controls.cap_percentile
            )
            per_layer = self.space.threshold(percentile)
            taus = {layer: float(per_layer[layer]) for layer in layers}
        return Cap({layer: self.axis[layer] for layer in layers}, taus)

    # queue ----------------------------------------------------------------------------------------------
    def submit(self, sid: str, content: str, compare: bool) -> tuple[int, list[int], list[str], int]:
        session = self.db.session(sid)
        if session is None:
            raise KeyError(sid)
        controls = Controls(**session["controls"])
        user_turn = self.db.add_turn(sid, "user", content, "done")
        variants = ["capped", "uncapped"] if compare else ["single"]
        jobs = []
        for variant in variants:
            turn = self.db.add_turn(sid, "assistant", "", "queued", variant=variant, reply_to=user_turn, seed=controls.seed)
            jobs.append(Job(sid, turn, user_turn, variant))
        if compare:  # one batch: the uncapped column rides along with the capped one
            jobs[0].partner = jobs[1]
        return user_turn, [j.turn_id for j in jobs], variants, self.enqueue(jobs[0])

    def enqueue(self, job: Job) -> int:
        """Queue ``job`` (its turns stored as ``queued`` already) and return its place in the queue."""
        with self.cond:
            position = len(self.jobs) + len(self.running_jobs())
            self.jobs.append(job)
            self.cond.notify_all()
        for each in [job] + ([job.partner] if job.partner is not None else []):
            self.db.event(each.session_id, each.turn_id, "queued", {"turn": each.turn_id, "queue_position": position})
        return position

    def queue_length(self) -> int:
        with self.cond:
            return len(self.jobs) + len(self.running_jobs())

    def running_jobs(self) -> list[Job]:
        """Every job being decoded now (a comparison's partner with it); read under ``cond``."""
        jobs = ([self.running] if self.running is not None else []) + (list(self.batch.jobs) if self.batch else [])
        every = [each for job in jobs for each in [job] + ([job.partner] if job.partner is not None else [])]
        return list({id(j): j for j in every}.values())  # a job being admitted is in both for a moment

    def stop(self, sid: str) -> list[int]:
        """Stop the session's running turn and drop its queued ones; returns the turns stopped."""
        stopped: list[int] = []
        with self.cond:
            for job in [j for j in self.jobs if j.session_id == sid]:
                self.jobs.remove(job)
                stopped += [job.turn_id] + ([job.partner.turn_id] if job.partner is not None else [])
            for job in self.running_jobs():
                if job.session_id == sid:
                    job.stop.set()
                    stopped.append(job.turn_id)
        for tid in stopped:  # a turn already running ends itself at its next step
            self.db.finish_turn(tid, "stopped", {"reason": "stopped before it started", "n_tokens": 0}, only_if="queued")
        return stopped

    def busy(self, sid: str) -> bool:
        with self.cond:
            return any(j.session_id == sid for j in [*self.jobs, *self.running_jobs()])

    def undo(self, sid: str) -> list[int]:
        if self.busy(sid):
            raise Conflict("a turn of this session is queued or running: stop it before undoing")
        return self.db.undo(sid)

    # generation -----------------------------------------------------------------------------------------
    def _loop(self) -> None:
        cpu_threads.own(self.threads)
        self.placement.warm_up()  # in the background: tokens stream at once, placement waits for the map if needed
        self.ready.set()
        if self.compile:  # after the map: compiling alongside the refit made the map take 75 s instead of 17
            threading.Thread(target=self._compile_steps, name="compile-steps", daemon=True).start()
        while True:
            try:
                job = self._next_job()
                if job is None:
                    return
                if job is STEP:
                    self._step()
                elif isinstance(job, Call):
                    self._call(job)
                elif isinstance(job, Projection):
                    t0 = time.monotonic()
                    self._slice(job)
                    self.step_s, self.slice_s = 0.0, time.monotonic() - t0
                elif isinstance(job, Job):
                    self._serve(job)
            except Exception:  # nothing may end this thread: log, pause a moment, go on
                log.exception("the generation loop hit an error")
                time.sleep(0.5)

    def _next_job(self) -> Job | Call | Projection | object | None:
        """The next thing to do: a call, a job to start (it joins the batch), a projection's slice, or :data:`STEP`
        (one step of the running batch); ``None`` once closed with nothing left running. With a batch, a queued job
        joins as soon as it fits, and a slice runs once the steps since the last one took as long as it did."""
        while True:
            self._record_failures()
            with self.cond:
                stepping = self.batch is not None and bool(self.batch.rows)
                if self.calls and not self.closed:
                    return self.calls.popleft()
                if stepping:
                    if not self.closed:
                        job = next((j for j in self.jobs if self.batch is not None and self.batch.takes(j)), None)
                        if job is not None:
                            self.jobs.remove(job)
                            self.running = job
                            return job
                        if self.projections and self.step_s >= self.slice_s:
                            self.projecting = self.projections.popleft()
                            return self.projecting
                    return STEP  # closed: its rows end incomplete at this step
                while not self.jobs and not self.calls and not self.projections and not self.closed:
                    # while failures wait to be recorded (the database was not writable), retry them every second
                    if self.unrecorded:
                        self.cond.wait(1.0)
                        break
                    self.cond.wait()
                if self.closed:
                    for call in self.calls:  # nobody will run them: their callers get an error, not a hang
                        call.error = ShuttingDown("the worker is shutting down")
                        call.done.set()
                    self.calls.clear()
                    for projection in self.projections:
                        self._drop(projection, ShuttingDown("the worker is shutting down; nothing was kept"))
                    self.projections.clear()
                    return None
                if self.calls:
                    return self.calls.popleft()
                if self.jobs and (self.turn_next or not self.projections):
                    self.turn_next = False
                    self.running = self.jobs.popleft()
                    return self.running
                if self.projections:
                    self.turn_next = True
                    self.projecting = self.projections.popleft()
                    return self.projecting

    def _step(self) -> None:
        assert self.batch is not None
        t0 = time.monotonic()
        with self.model_lock:
            self.unrecorded.update(self.batch.step())
        self.step_s += time.monotonic() - t0
        self._record_failures()

    def _serve(self, job: Job) -> None:
        if self.batch is not None:  # the job joins the running batch
            try:
                with self.model_lock:
                    self.unrecorded.update(self.batch.admit(job))
                self._record_failures()
            finally:
                with self.cond:
                    self.running = None
            return
        try:
            with self.model_lock:
                run_turn(self, job)
        except Exception as exc:  # a failed turn must not take the worker down
            log.exception("turn %s failed", job.turn_id)
            self.unrecorded[job.turn_id] = f"{type(exc).__name__}: {exc}"
            self._record_failures()
        finally:
            with self.cond:
                self.running = None

    def _compile_steps(self) -> None:
        """Compile the decode step for each shape in turn; each serves from the moment it is ready."""
        from backend.models.loading import cache_dir

        self.placement.wait()
        try:
            for rows, capacity in COMPILED_SHAPES:
                if self.batch is not None and rows > self.batch.max_rows:
                    continue
                if self.closed:
                    break
                if capacity > self.max_context:
                    continue
                self.compile_state = f"compiling ({rows} x {capacity})"
                with self.model_lock:  # the shadow copies the model's modules: not while the generation thread hooks them
                    step = CompiledRows(
                        self.loaded.model, self.row_controls, rows=rows, capacity=capacity, pad_id=self.pad_id,
                        layers_path=self.loaded.info.layers_path, cache_dir=str(cache_dir() / "inductor"),
                    )  # fmt: skip
                step.start()
                step.step.ready.wait()
                if step.error is not None:
                    self.compile_state = f"eager: compiling failed ({step.error})"
                    return
                with self.cond:
                    self.compiled.append(step)
                log.info(
                    "compiled decode step for %d rows x %d positions ready after %.1f s", rows, capacity, step.seconds or 0.0
                )
            shapes = ", ".join(f"{c.rows} x {c.capacity}" for c in self.compiled)
            self.compile_state = f"compiled ({shapes})" if self.compiled else "eager (no compiled shape fits the model)"
        except Exception as exc:  # serve eagerly: slower, never wrong
            log.exception("compiling the decode step failed")
            self.compile_state = f"eager: compiling failed ({type(exc).__name__}: {exc})"

    def _call(self, call: Call) -> None:
        try:
            with self.model_lock, torch.inference_mode():
                call.result = call.fn()
        except BaseException as exc:  # the caller re-raises it on its own thread
            call.error = exc
        finally:
            call.done.set()

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the generation thread, before queued turns (after the running one); returns its result."""
        if threading.current_thread() is self.thread or not self.thread.is_alive():
            with self.model_lock, torch.inference_mode():  # not started (or already closed): run it here
                return fn()
        item = Call(fn)
        with self.cond:
            if self.closed:
                raise PersonaSpaceError("the worker is shutting down")
            self.calls.append(item)
            self.cond.notify_all()
        item.done.wait()
        if item.error is not None:
            raise item.error
        return item.result

    def _record_failures(self) -> None:
        """Mark failed turns as such (``turn_error`` + ``turn_end``) once the database takes the write."""
        for turn_id, reason in list(self.unrecorded.items()):
            try:
                self.db.fail_turn(turn_id, reason)
            except Exception as exc:
                log.warning("turn %s failed and cannot be recorded yet: %s", turn_id, exc)
                return
            self.unrecorded.pop(turn_id, None)

    def take_pending(self, sid: str) -> tuple[Controls, int] | None:
        with self.cond:
            return self.pending.pop(sid, None)

    def steer_set(self, controls: Controls) -> int:
        """The steering set of ``controls``: 0 for the axis, ``1 + i`` for the space's kept trait ``i``."""
        return self.steering.set_of(controls)

    def steer_record(self, controls: Controls) -> Steer | None:
        return self.steering.record(controls)

    def row_controls(self, n: int) -> RowControls:
        device = next(self.loaded.model.parameters()).device
        return RowControls(
            n, self.n_layers, int(self.axis.shape[1]), cap_directions=self.axis, steer_vectors=self.steer_vectors,
            monitor=(self.target, self.axis[self.target]), capture_layer=self.target, device=device,
        )  # fmt: skip
