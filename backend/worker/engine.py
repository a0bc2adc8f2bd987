"""The generation engine: one model, one FIFO queue of turns, per-session controls applied token by token.

Turns from every session run one at a time in a single thread (forward hooks are global to the model object,
so two concurrent generations would see each other's caps). A control change is queued for its session and
picked up by the generation loop at the start of the next step: it applies to the forward pass over the next
token and to everything sampled after it, and the loop records ``controls_applied`` with the token index. Every
token event carries the controls version that was in force for the forward pass over that token.

Generation runs on :class:`backend.decode.Decoder` with :class:`backend.rows.RowControls`: a comparison's capped and
uncapped columns are one job and one batch of two rows (the cap on the capped row only, each row with its own
generator seeded alike), so each column equals what its single-row run would produce.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import ValidationError

from backend import cpu_threads
from backend.axis import steering_vector
from backend.cap_preset import default_cap
from backend.chat import Message, encode_prompt
from backend.compiled_rows import CompiledRows
from backend.decode import Decoder
from backend.errors import PersonaSpaceError
from backend.generate import eos_ids
from backend.interventions import Cap, Live, Steer
from backend.models import LoadedModel
from backend.placement import Placement
from backend.rows import Readouts, RowControls
from backend.sampling import choose_token
from backend.store import Space
from backend.transcripts import max_context
from backend.worker.db import Database
from backend.worker.imports import describe
from backend.worker.schemas import MAX_NEW_TOKENS, Controls, ControlsPatch, WindowError, fit_controls

log = logging.getLogger("persona_space.worker")

# (rows, cache positions) the worker compiles a decode step for, in this order (~10 s each on two cores with inductor's
# disk cache warm): a single turn uses a one-row step, a compare pair a two-row one, each the smallest ready cache its
# prompt plus max_new_tokens fits. A larger cache costs attention time every step (it is read whole), and a one-row
# step ~2 ms less than a two-row one, so the small ones come first.
COMPILED_SHAPES = ((1, 512), (2, 512), (1, 1024), (2, 1024))


class ControlError(PersonaSpaceError, ValueError):
    """Controls that do not fit the loaded model or space."""


class Conflict(PersonaSpaceError):
    """The request conflicts with the session's state (e.g. undo while a turn runs)."""


@dataclass
class Job:
    session_id: str
    turn_id: int
    user_turn: int
    variant: str
    stop: threading.Event = field(default_factory=threading.Event)
    partner: Job | None = None  # a comparison's uncapped column, generated in the same batch as this one


@dataclass
class _Call:
    """Work that needs the model, run on the generation thread for another thread (see :mod:`backend.cpu_threads`)."""

    fn: Callable[[], Any]
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


class Engine:
    def __init__(
        self, loaded: LoadedModel, space: Space, db: Database, threads: int | None = None, compile: bool = False
    ) -> None:
        self.loaded = loaded
        self.compile = compile  # build compiled decode steps in the background (serving eagerly meanwhile)
        self.compiled: list[CompiledRows] = []  # ready ones, smallest capacity first
        self.compile_state = "compiling" if compile else "eager (compiling is off)"
        self.threads = int(threads or torch.get_num_threads())  # the generation thread's torch threads
        self.space = space
        self.db = db
        self.placement = Placement(space)
        info = loaded.info
        self.n_layers = info.n_layers
        self.target = space.target_layer
        self.axis = space.tensors["axis"]
        self.cap_window = tuple(space.manifest.get("cap_window") or info.cap_window)
        self.jobs: deque[Job] = deque()
        self.calls: deque[_Call] = deque()  # served before queued turns
        self.cond = threading.Condition()
        self.running: Job | None = None
        self.pending: dict[str, tuple[Controls, int]] = {}
        self.cap_live: Live[Cap] = Live(None, kind=Cap)
        self.steer_live: Live[Steer] = Live(None, kind=Steer)
        self.ready = threading.Event()
        self.model_lock = threading.Lock()  # hooks are global to the model: one user of it at a time
        self.closed = False
        self.tokens_generated = 0
        self.unrecorded: dict[int, str] = {}  # failed turns whose failure the database did not take yet
        self.max_context = max_context(loaded.model)
        self.stop_ids = eos_ids(loaded)
        self.steer_vectors = self._steer_vectors()
        pad = loaded.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else min(self.stop_ids or {0}))
        self.thread = threading.Thread(target=self._loop, name="generation", daemon=True)

    # setup ----------------------------------------------------------------------------------------------

    def _steer_vectors(self) -> torch.Tensor:
        """Steering vectors for coefficient 1 at every layer (zero where the space has no usable norm)."""
        norms = self.space.tensors["activation_norm"]
        out = torch.zeros(self.axis.shape, dtype=torch.float32)
        for layer in range(self.axis.shape[0]):
            try:
                out[layer] = steering_vector(self.axis[layer].float(), float(norms[layer]))
            except PersonaSpaceError:
                log.warning("layer %d cannot be steered: no usable activation norm or axis there", layer)
        return out

    def start(self) -> None:
        self.db.recover()
        self.thread.start()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            if self.running is not None:
                self.running.stop.set()
            self.cond.notify_all()

    # controls -------------------------------------------------------------------------------------------
    def default_controls(self) -> Controls:
        """The cap preset measured by ``evaluate-cap`` when the space has one, else p75 on the cap window."""
        percentile, window = default_cap(self.space.manifest, self.cap_window)
        return Controls(cap_percentile=percentile, cap_layers=window)

    def validate_controls(self, controls: Controls) -> Controls:
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
        update = {k: v for k, v in patch.model_dump(exclude_unset=True).items() if k != "clear_cap_threshold" and v is not None}
        data = current.model_dump()
        data.update(update)
        if patch.clear_cap_threshold:
            data["cap_threshold"] = None
        try:
            controls = self.validate_controls(Controls(**data))
        except ValidationError as exc:
            raise ControlError(describe(exc)) from exc
        running = self.running if self.running is not None and self.running.session_id == sid else None
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

    def steer_record(self, controls: Controls) -> Steer | None:
        if controls.steer_coefficient == 0:
            return None
        start, stop = controls.steer_layers or (self.target, self.target + 1)
        norms = self.space.tensors["activation_norm"]
        vectors = {layer: steering_vector(self.axis[layer], float(norms[layer])) for layer in range(start, stop)}
        return Steer(vectors, controls.steer_coefficient)

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
        with self.cond:
            position = len(self.jobs) + (1 if self.running is not None else 0)
            self.jobs.append(jobs[0])
            self.cond.notify_all()
        for job in jobs:
            self.db.event(sid, job.turn_id, "queued", {"turn": job.turn_id, "queue_position": position})
        return user_turn, [j.turn_id for j in jobs], variants, position

    def queue_length(self) -> int:
        with self.cond:
            return len(self.jobs) + (1 if self.running is not None else 0)

    def stop(self, sid: str) -> list[int]:
        """Stop the session's running turn and drop its queued ones; returns the turns stopped."""
        stopped: list[int] = []
        with self.cond:
            for job in [j for j in self.jobs if j.session_id == sid]:
                self.jobs.remove(job)
                stopped += [job.turn_id] + ([job.partner.turn_id] if job.partner is not None else [])
            if self.running is not None and self.running.session_id == sid:
                for job in [self.running] + ([self.running.partner] if self.running.partner is not None else []):
                    job.stop.set()
                    stopped.append(job.turn_id)
        for tid in stopped:  # a turn already running ends itself at its next step
            self.db.finish_turn(tid, "stopped", {"reason": "stopped before it started", "n_tokens": 0}, only_if="queued")
        return stopped

    def busy(self, sid: str) -> bool:
        with self.cond:
            return any(j.session_id == sid for j in self.jobs) or (self.running is not None and self.running.session_id == sid)

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
                if isinstance(job, _Call):
                    self._call(job)
                else:
                    self._serve(job)
            except Exception:  # nothing may end this thread: log, pause a moment, go on
                log.exception("the generation loop hit an error")
                time.sleep(0.5)

    def _next_job(self) -> Job | _Call | None:
        while True:
            self._record_failures()
            with self.cond:
                if self.calls and not self.closed:
                    return self.calls.popleft()
                while not self.jobs and not self.calls and not self.closed:
                    # while failures wait to be recorded (the database was not writable), retry them every second
                    if self.unrecorded:
                        self.cond.wait(1.0)
                        break
                    self.cond.wait()
                if self.closed:
                    for call in self.calls:  # nobody will run them: their callers get an error, not a hang
                        call.error = PersonaSpaceError("the worker is shutting down")
                        call.done.set()
                    self.calls.clear()
                    return None
                if self.calls:
                    return self.calls.popleft()
                if self.jobs:
                    self.running = self.jobs.popleft()
                    return self.running

    def _serve(self, job: Job) -> None:
        try:
            with self.model_lock:
                self._run(job)
        except Exception as exc:  # a failed turn must not take the worker down
            log.exception("turn %s failed", job.turn_id)
            self.unrecorded[job.turn_id] = f"{type(exc).__name__}: {exc}"
            self._record_failures()
        finally:
            with self.cond:
                self.running = None
                self.cap_live.set(None)
                self.steer_live.set(None)

    def _compile_steps(self) -> None:
        """Compile the decode step for each shape in turn; each serves from the moment it is ready."""
        from backend.models import cache_dir

        self.placement.wait()
        try:
            for rows, capacity in COMPILED_SHAPES:
                if self.closed:
                    break
                if capacity > self.max_context:
                    continue
                self.compile_state = f"compiling ({rows} x {capacity})"
                step = CompiledRows(
                    self.loaded.model, self._row_controls, rows=rows, capacity=capacity, pad_id=self.pad_id,
                    layers_path=self.loaded.info.layers_path, cache_dir=str(cache_dir() / "inductor"),
                ).start()  # fmt: skip
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

    def _call(self, call: _Call) -> None:
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
        item = _Call(fn)
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

    def history(self, job: Job) -> list[Message]:
        turns = [t for t in self.db.turns(job.session_id) if t["id"] < job.turn_id]
        # A compared exchange continues each column with its own reply; a single reply after a comparison takes the
        # column that matches the session's cap setting.
        session = self.db.session(job.session_id) or {"controls": {}}
        preferred = (
            job.variant if job.variant != "single" else ("capped" if session["controls"].get("cap_enabled") else "uncapped")
        )
        replies: dict[int, str] = {}
        for t in turns:
            if t["role"] == "assistant" and t["content"] and t["variant"] in ("single", preferred):
                replies.setdefault(t["reply_to"], t["content"])
        messages: list[Message] = []
        for t in turns:
            if t["role"] != "user":
                continue
            if t["id"] == job.user_turn:
                messages.append({"role": "user", "content": t["content"]})
                break
            if t["id"] in replies:  # a user turn without a reply (undone, failed) is left out
                messages.append({"role": "user", "content": t["content"]})
                messages.append({"role": "assistant", "content": replies[t["id"]]})
        return messages

    def _take_pending(self, sid: str) -> tuple[Controls, int] | None:
        with self.cond:
            return self.pending.pop(sid, None)

    def _apply(self, rows: RowControls, turns: list[_Row], controls: Controls) -> None:
        """Overwrite the rows' cap floors and steering in place: applies to the next forward pass."""
        for i, row in enumerate(turns):
            record = self.cap_record(controls, row.job.variant)
            rows.set_cap(i, dict(record.thresholds) if record is not None else None)
            start, stop = controls.steer_layers or (self.target, self.target + 1)
            rows.set_steer(i, float(controls.steer_coefficient), range(start, stop))

    def _row_controls(self, n: int) -> RowControls:
        device = next(self.loaded.model.parameters()).device
        return RowControls(
            n, self.n_layers, int(self.axis.shape[1]), cap_directions=self.axis, steer_vectors=self.steer_vectors,
            monitor=(self.target, self.axis[self.target]), capture_layer=self.target, device=device,
        )  # fmt: skip

    @torch.inference_mode()
    def _run(self, job: Job) -> None:
        """Generate one turn, or both columns of a comparison as one batch (the cap on the capped row only)."""
        jobs = [job] + ([job.partner] if job.partner is not None else [])
        try:
            self._run_rows(job, jobs)
        except Exception as exc:  # the loop marks ``job`` failed; its partner must not stay "running" forever
            for other in jobs[1:]:
                self.db.finish_turn(other.turn_id, "error", {"error": f"{type(exc).__name__}: {exc}"})
            raise

    def _run_rows(self, job: Job, jobs: list[Job]) -> None:
        with self.cond:  # atomic with patch_controls: the stored controls are the newest, pending ones are older
            self.pending.pop(job.session_id, None)
            session = self.db.session(job.session_id)
        if session is None or job.stop.is_set():  # deleted or stopped while queued
            return
        controls = self.validate_controls(Controls(**session["controls"]))
        version = int(session["controls_version"])
        tokenizer = self.loaded.tokenizer
        rows: list[_Row] = []
        for each in jobs:
            messages = self.history(each)
            prompt = encode_prompt(tokenizer, session["system"], messages)
            if len(prompt) + controls.max_new_tokens > self.max_context:
                self.db.finish_turn(
                    each.turn_id, "error",
                    {"error": f"the conversation is too long: {len(prompt)} prompt tokens + {controls.max_new_tokens} "
                     f"new exceed the model's context of {self.max_context}; start a new session or undo turns"},
                )  # fmt: skip
                continue
            if not self.db.start_turn(
                each.turn_id, {"variant": each.variant, "prompt_tokens": len(prompt), "controls_version": version}
            ):
                continue  # stopped in the meantime
            # Same seed + same conversation => same sampling, in any session, for both columns of a comparison.
            user_index = sum(1 for m in messages if m["role"] == "user")
            generator = torch.Generator().manual_seed(int(controls.seed) * 1_000_003 + user_index)
            rows.append(_Row(each, prompt, generator))
        if not rows:
            return
        longest = max(len(r.prompt) for r in rows)
        prompts = [r.prompt for r in rows]
        fitting = [c for c in self.compiled if c.fits(len(rows), longest + controls.max_new_tokens)]
        compiled = min(fitting, key=lambda c: (c.capacity, c.rows)) if fitting else None
        attached: contextlib.AbstractContextManager[Any]
        if compiled is not None:  # a compiled step's fixed batch: twins of the first row fill it (if any), capped nowhere
            live, decoder, attached = compiled.controls, compiled.decoder(), contextlib.nullcontext()
            twins = compiled.rows - len(rows)
            for k in range(len(rows), compiled.rows):
                live.set_cap(k, None)
                live.set_steer(k, 0.0)
            new_tokens = compiled.capacity - longest
        else:
            live = self._row_controls(len(rows))
            decoder = Decoder(self.loaded.model, live, layers_path=self.loaded.info.layers_path, pad_id=self.pad_id)
            attached, twins = live.attach(self.loaded.model, self.loaded.info.layers_path), 0
            new_tokens = min(self.max_context, longest + MAX_NEW_TOKENS) - longest
        self._apply(live, rows, controls)
        started = time.time()
        with attached:
            logits = decoder.start(prompts + [prompts[0]] * twins, new_tokens)
            index = -1
            while any(r.status is None for r in rows):
                index += 1
                if any(j.stop.is_set() for j in jobs):
                    self._end(rows, live, "stopped", "stopped by the user", version, started)
                    break
                pending = self._take_pending(job.session_id)
                if pending is not None:
                    controls, version = pending[0], pending[1]
                    self._apply(live, rows, controls)
                    for r in rows:
                        if r.status is None:
                            self.db.event(
                                r.job.session_id, r.job.turn_id, "controls_applied",
                                {"turn": r.job.turn_id, "controls_version": version, "from_token": index},
                            )  # fmt: skip
                limit = min(controls.max_new_tokens, decoder.capacity - longest)
                fed: list[int] = []
                for i, r in enumerate(rows):
                    if r.status is None and index >= min(limit, self.max_context - len(r.prompt)):
                        self._end([r], live, "done", "max_new_tokens reached", version, started, i)
                    if r.status is None:
                        token = choose_token(
                            logits[i], greedy=controls.greedy, temperature=controls.temperature, top_p=controls.top_p,
                            penalty=controls.repetition_penalty, previous=r.tokens, generator=r.generator,
                        )  # fmt: skip
                        if token in self.stop_ids:
                            self._end([r], live, "done", "end of turn", version, started, i)
                    live.set_active(i, r.status is None)
                    fed.append(token if r.status is None else self.pad_id)
                if all(r.status is not None for r in rows):
                    break
                logits = decoder.step(fed + [fed[0]] * twins)
                readouts = live.readouts()
                for i, r in enumerate(rows):
                    if r.status is None:
                        self._emit(r, i, fed[i], index, live, readouts, version)
        self._end(rows, live, "done", "end of turn", version, started)

    def _emit(self, r: _Row, i: int, token: int, index: int, live: RowControls, readouts: Readouts, version: int) -> None:
        r.tokens.append(token)
        full = self.loaded.tokenizer.decode(r.tokens, skip_special_tokens=True)
        piece = full[len(r.text) :] if not full.endswith("\ufffd") else ""
        if piece:
            r.text = full
        assert readouts.monitor is not None
        data = {
            "turn": r.job.turn_id, "index": index, "token_id": token, "text": piece,
            "projection": round(float(readouts.monitor[i]), 5), "monitor_layer": self.target,
            "controls_version": version, "variant": r.job.variant, **cap_event(live.cap_taus[i], readouts, i),
        }  # fmt: skip
        self.db.append_token(r.job.session_id, r.job.turn_id, piece, data)
        self.tokens_generated += 1

    def _end(
        self, rows: list[_Row], live: RowControls, status: str, reason: str, version: int, started: float,
        index: int | None = None,
    ) -> None:  # fmt: skip
        """Finish the turns of ``rows`` still running (``index``: the row's index in the batch when ``rows`` is one)."""
        for k, r in enumerate(rows):
            if r.status is not None:
                continue
            i = index if index is not None else k
            r.status = status
            live.set_active(i, False)
            summary: dict[str, Any] = {
                "variant": r.job.variant, "reason": reason, "n_tokens": len(r.tokens),
                "seconds": round(time.time() - started, 3), "controls_version": version,
            }  # fmt: skip
            if r.tokens:
                mean = live.capture_mean()[i]
                try:
                    summary.update(self.placement.place(mean))
                    summary["mean_projection"] = summary.pop("projection")
                except Exception as exc:  # the reply stands even if it cannot be placed in the space
                    log.exception("placing turn %s failed", r.job.turn_id)
                    axis = self.axis[self.target]
                    summary["mean_projection"] = float(mean.double() @ (axis / axis.norm()).double())
                    summary["placement_error"] = f"{type(exc).__name__}: {exc}"
            final = self.loaded.tokenizer.decode(r.tokens, skip_special_tokens=True)
            self.db.finish_turn(r.job.turn_id, status, summary, content=final)

    def project(
        self, data: Any, layer: int | None, *, window: int | None = None, history: float = 0.5, tokens: bool = False
    ) -> dict[str, Any]:
        """Project a transcript (any accepted format) with the loaded model; waits for a running turn."""
        from backend.transcripts import parse_transcript, project_transcript

        transcript = parse_transcript(data)  # a malformed transcript is refused here, without queueing
        return self.call(
            lambda: project_transcript(self.loaded, self.space, transcript, layer, window=window, history=history, tokens=tokens)
        )


@dataclass
class _Row:
    """One row of a batch: a turn being generated."""

    job: Job
    prompt: list[int]
    generator: torch.Generator
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    status: str | None = None  # None while generating


def cap_event(taus: dict[int, float], readouts: Readouts, row: int) -> dict[str, Any]:
    """The cap fields of a token event: floors, movement per capped layer, before/after at the first one."""
    if not taus:
        return {"cap_on": False, "tau": None, "cap_delta": 0.0, "cap_layers": None}
    layers = sorted(taus)
    deltas = [float(readouts.delta[row, layer]) for layer in layers]
    before = float(readouts.before[row, layers[0]])
    return {
        "cap_on": True,
        "cap_layers": [layers[0], layers[-1] + 1],
        "tau": [round(taus[layer], 5) for layer in layers],
        "cap_delta": round(max(deltas), 5),
        "cap_deltas": [round(d, 5) for d in deltas],
        "projection_before_cap": round(before, 5),
        "projection_after_cap": round(before + deltas[0], 5),
    }


def last_logits_only(model: Any) -> dict[str, Any]:
    """``{"logits_to_keep": 1}`` where the model's forward takes it: only the last position's logits are needed."""
    import inspect

    try:
        return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    except (TypeError, ValueError):
        return {}


def cache_keyword(model: Any) -> str:
    """The forward argument that takes the KV cache: ``cache`` in newer transformers, ``past_key_values`` before."""
    import inspect

    try:
        return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    except (TypeError, ValueError):
        return "past_key_values"


def cache_of(out: Any) -> Any:
    return out["cache"] if "cache" in out else out.past_key_values
