"""The generation engine: one model, one FIFO queue of turns, per-session controls applied token by token.

Turns from every session run one at a time in a single thread (forward hooks are global to the model object,
so two concurrent generations would see each other's caps). A control change is queued for its session and
picked up by the generation loop at the start of the next step: it applies to the forward pass over the next
token and to everything sampled after it, and the loop records ``controls_applied`` with the token index. Every
token event carries the controls version that was in force for the forward pass over that token.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import ValidationError

from backend.axis import steering_vector
from backend.chat import Message, encode_prompt
from backend.errors import PersonaSpaceError
from backend.interventions import Cap, CapLog, Capture, Live, Monitor, Steer, intervene
from backend.models import LoadedModel
from backend.placement import Placement
from backend.store import Space
from backend.transcripts import max_context
from backend.worker.db import Database
from backend.worker.imports import ExportError, describe, prepare
from backend.worker.schemas import Controls, ControlsPatch

log = logging.getLogger("persona_space.worker")


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


class Engine:
    def __init__(self, loaded: LoadedModel, space: Space, db: Database) -> None:
        self.loaded = loaded
        self.space = space
        self.db = db
        self.placement = Placement(space)
        info = loaded.info
        self.n_layers = info.n_layers
        self.target = space.target_layer
        self.axis = space.tensors["axis"]
        self.cap_window = tuple(space.manifest.get("cap_window") or info.cap_window)
        self.jobs: deque[Job] = deque()
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
        self.stop_ids = self._stop_ids()
        self.last_logits_only = last_logits_only(loaded.model)
        self.cache_kw = cache_keyword(loaded.model)
        self.thread = threading.Thread(target=self._loop, name="generation", daemon=True)

    # setup ----------------------------------------------------------------------------------------------
    def _stop_ids(self) -> set[int]:
        ids: set[int] = set()
        for source in (self.loaded.model.generation_config, self.loaded.tokenizer):
            value = getattr(source, "eos_token_id", None)
            ids.update([value] if isinstance(value, int) else list(value or []))
        return ids

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
        return Controls(cap_layers=(int(self.cap_window[0]), int(self.cap_window[1])))

    def validate_controls(self, controls: Controls) -> Controls:
        for name in ("cap_layers", "steer_layers"):
            window = getattr(controls, name)
            if window is not None and window[1] > self.n_layers:
                raise ControlError(
                    f"{name} {list(window)} reaches past the model's {self.n_layers} layers (0..{self.n_layers - 1})"
                )
        if controls.cap_layers is None:
            controls = controls.model_copy(update={"cap_layers": (int(self.cap_window[0]), int(self.cap_window[1]))})
        return controls

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
            percentile = 75.0 if controls.cap_percentile is None else controls.cap_percentile
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
        with self.cond:
            position = len(self.jobs) + (1 if self.running is not None else 0)
            self.jobs.extend(jobs)
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
                stopped.append(job.turn_id)
            if self.running is not None and self.running.session_id == sid:
                self.running.stop.set()
                stopped.append(self.running.turn_id)
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
        self.placement.warm_up()  # in the background: tokens stream at once, placement waits for the map if needed
        self.ready.set()
        while True:
            try:
                job = self._next_job()
                if job is None:
                    return
                self._serve(job)
            except Exception:  # nothing may end this thread: log, pause a moment, go on
                log.exception("the generation loop hit an error")
                time.sleep(0.5)

    def _next_job(self) -> Job | None:
        while True:
            self._record_failures()
            with self.cond:
                while not self.jobs and not self.closed:
                    # while failures wait to be recorded (the database was not writable), retry them every second
                    if self.unrecorded:
                        self.cond.wait(1.0)
                        break
                    self.cond.wait()
                if self.closed:
                    return None
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

    def _apply(self, controls: Controls, variant: str) -> None:
        self.cap_live.set(self.cap_record(controls, variant))
        self.steer_live.set(self.steer_record(controls))

    def _sample(self, logits: torch.Tensor, controls: Controls, generator: torch.Generator) -> int:
        if controls.greedy:
            return int(torch.argmax(logits.float()))
        # On the CPU: the seeded generator lives there, and the same seed then draws the same token on any device.
        probs = torch.softmax(logits.float().cpu() / controls.temperature, dim=-1)
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < controls.top_p
        sorted_probs = torch.where(keep, sorted_probs, torch.zeros_like(sorted_probs))
        choice = torch.multinomial(sorted_probs / sorted_probs.sum(), 1, generator=generator)
        return int(order[choice])

    @torch.inference_mode()
    def _run(self, job: Job) -> None:
        with self.cond:  # atomic with patch_controls: the stored controls are the newest, pending ones are older
            self.pending.pop(job.session_id, None)
            session = self.db.session(job.session_id)
        if session is None or job.stop.is_set():  # deleted or stopped while queued
            return
        controls = self.validate_controls(Controls(**session["controls"]))
        version = int(session["controls_version"])
        model, tokenizer = self.loaded.model, self.loaded.tokenizer
        messages = self.history(job)
        prompt = encode_prompt(tokenizer, session["system"], messages)
        if len(prompt) + controls.max_new_tokens > self.max_context:
            self.db.finish_turn(
                job.turn_id, "error",
                {"error": f"the conversation is too long: {len(prompt)} prompt tokens + {controls.max_new_tokens} new "
                 f"exceed the model's context of {self.max_context}; start a new session or undo turns"},
            )  # fmt: skip
            return
        if not self.db.start_turn(
            job.turn_id, {"variant": job.variant, "prompt_tokens": len(prompt), "controls_version": version}
        ):
            return  # stopped in the meantime
        self._apply(controls, job.variant)
        device = next(model.parameters()).device
        # Same seed + same conversation => same sampling, in any session, for both columns of a comparison.
        user_index = sum(1 for m in messages if m["role"] == "user")
        generator = torch.Generator().manual_seed(int(controls.seed) * 1_000_003 + user_index)
        width = len(prompt)
        monitor = Monitor(self.axis[self.target], self.target)
        capture = Capture(layers=[self.target], mask=lambda start, n: (torch.arange(start, start + n) >= width)[None])
        cap_log = CapLog()
        tokens: list[int] = []
        text = ""
        status, reason = "done", "end of turn"
        started = time.time()
        with intervene(
            model, self.cap_live, self.steer_live, monitor, capture, layers_path=self.loaded.info.layers_path, cap_log=cap_log
        ):
            out = model(input_ids=torch.tensor([prompt], device=device), use_cache=True, **self.last_logits_only)
            past, logits = cache_of(out), out.logits[0, -1]
            index = -1
            while True:
                index += 1
                if job.stop.is_set():
                    status, reason = "stopped", "stopped by the user"
                    break
                pending = self._take_pending(job.session_id)
                if pending is not None:
                    controls, version = pending[0], pending[1]
                    self._apply(controls, job.variant)
                    self.db.event(
                        job.session_id,
                        job.turn_id,
                        "controls_applied",
                        {"turn": job.turn_id, "controls_version": version, "from_token": index},
                    )
                if index >= min(controls.max_new_tokens, self.max_context - width):
                    status, reason = "done", "max_new_tokens reached"
                    break
                token = self._sample(logits, controls, generator)
                if token in self.stop_ids:
                    break
                mark = len(cap_log.steps)
                out = model(
                    input_ids=torch.tensor([[token]], device=device),
                    **{self.cache_kw: past},
                    use_cache=True,
                    **self.last_logits_only,
                )
                past, logits = cache_of(out), out.logits[0, -1]
                tokens.append(token)
                full = tokenizer.decode(tokens, skip_special_tokens=True)
                piece = full[len(text) :] if not full.endswith("\ufffd") else ""
                if piece:
                    text = full
                cap = self._cap_event(cap_log, mark)
                data = {
                    "turn": job.turn_id, "index": index, "token_id": token, "text": piece,
                    "projection": round(float(monitor._chunks[-1][0, -1]), 5), "monitor_layer": self.target,
                    "controls_version": version, "variant": job.variant, **cap,
                }  # fmt: skip
                self.db.append_token(job.session_id, job.turn_id, piece, data)
                self.tokens_generated += 1
        final = tokenizer.decode(tokens, skip_special_tokens=True)
        summary: dict[str, Any] = {
            "variant": job.variant, "reason": reason, "n_tokens": len(tokens), "seconds": round(time.time() - started, 3),
            "controls_version": version,
        }  # fmt: skip
        if tokens:
            mean = capture.mean()[0, 0]
            try:
                summary.update(self.placement.place(mean))
                summary["mean_projection"] = summary.pop("projection")
            except Exception as exc:  # the reply stands even if it cannot be placed in the space
                log.exception("placing turn %s failed", job.turn_id)
                axis = self.axis[self.target]
                summary["mean_projection"] = float(mean.double() @ (axis / axis.norm()).double())
                summary["placement_error"] = f"{type(exc).__name__}: {exc}"
        self.db.finish_turn(job.turn_id, status, summary, content=final)

    def project(
        self, data: Any, layer: int | None, *, window: int | None = None, history: float = 0.5, tokens: bool = False
    ) -> dict[str, Any]:
        """Project a transcript (any accepted format) with the loaded model; waits for a running turn."""
        from backend.transcripts import parse_transcript, project_transcript

        transcript = parse_transcript(data)
        with self.model_lock:
            return project_transcript(self.loaded, self.space, transcript, layer, window=window, history=history, tokens=tokens)

    def import_session(self, data: Any) -> str:
        """Recreate an exported session (turns, their token events, undos) under a new id, in one transaction."""
        if not isinstance(data, dict) or data.get("format") != "persona-space-session":
            raise ControlError("not a Persona Space session export (expected format 'persona-space-session')")
        session = data.get("session")
        try:
            controls = self.validate_controls(
                Controls.model_validate(session.get("controls") if isinstance(session, dict) else None)
            )
        except ValidationError as exc:
            raise ControlError("the session export is malformed: " + describe(exc, "session.controls.")) from exc
        try:
            prepared = prepare(data, controls)
        except ExportError as exc:
            raise ControlError(str(exc)) from exc
        return self.db.import_session(prepared)

    def _cap_event(self, cap_log: CapLog, mark: int) -> dict[str, Any]:
        steps = cap_log.steps[mark:]
        if not steps:
            return {"cap_on": False, "tau": None, "cap_delta": 0.0, "cap_layers": None}
        taus = [round(s.tau, 5) for s in steps]
        deltas = [float(s.delta[0, -1]) for s in steps]
        return {
            "cap_on": True,
            "cap_layers": [steps[0].layer, steps[-1].layer + 1],
            "tau": taus,
            "cap_delta": round(max(deltas), 5),
            "cap_deltas": [round(d, 5) for d in deltas],
            "projection_before_cap": round(float(steps[0].before[0, -1]), 5),
            "projection_after_cap": round(float(steps[0].before[0, -1]) + deltas[0], 5),
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
