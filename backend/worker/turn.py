"""One job on the decode engine's loop (:func:`backend.decode.engine.generate_rows`): a turn, or both columns of a comparison as one batch of two rows.

The job's conversation is rebuilt from the database (:func:`history`), or is the job's own (an OpenAI API request,
which may also end at a stop string and take the context left as its limit); each row gets its prompt and a generator
seeded from the session's seed and the user turn's number, and the rows run on a compiled step of the engine when
one fits (its spare rows are twins of the first, capped nowhere) or eagerly on a :class:`backend.decode.engine.Decoder`.
At the start of every step a pending control change of the session is applied in place to the rows' floors and
steering (it acts on the forward pass over the next token) and recorded as ``controls_applied``; every token is
written with its event as it is produced, and each row's turn ends with its summary and its place in the space
(with the projection at the prompt's last token, read from the prompt's pass).
A turn stopped because the worker is stopping (``engine.closed``) ends ``incomplete`` with the tokens it has, placed
without waiting for the map (PCA and nearest archetypes; no UMAP while it may still be building).

Runs on the engine's generation thread only, with the model lock held.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from backend.decode.compiled import CompiledRows
from backend.decode.engine import Decoder, generate_rows
from backend.hooks.interventions import Cap
from backend.hooks.rows import Readouts, RowControls
from backend.maths.sampling import choose_token
from backend.models.chat import Message, encode_prompt
from backend.models.loading import LoadedModel
from backend.reading.placement import Placement
from backend.reading.turn_traits import TurnTraits
from backend.worker.db import Database
from backend.worker.jobs import Job
from backend.worker.schemas import MAX_NEW_TOKENS, Controls
from backend.worker.token_event import token_event


class Engine(Protocol):
    """What a turn needs of the engine that runs it (:class:`backend.worker.engine.Engine`, which imports this module:
    the turn never imports the engine back)."""

    loaded: LoadedModel
    db: Database
    compiled: list[CompiledRows]
    placement: Placement
    turn_traits: TurnTraits | None  # None for a space without traits
    target: int
    axis: torch.Tensor
    cond: threading.Condition
    pending: dict[str, tuple[Controls, int]]
    tokens_generated: int
    max_context: int
    stop_ids: set[int]
    pad_id: int
    closed: bool  # the worker is stopping

    @property
    def batch(self) -> object | None: ...  # the running batch (its ``rows``) when turns share one; else None

    def validate_controls(self, controls: Controls) -> Controls: ...

    def cap_record(self, controls: Controls, variant: str) -> Cap | None: ...

    def take_pending(self, sid: str) -> tuple[Controls, int] | None: ...

    def row_controls(self, n: int) -> RowControls: ...

    def steer_set(self, controls: Controls) -> int: ...


log = logging.getLogger("persona_space.worker")


@dataclass
class _InForce:
    """The controls in force for the running rows and their version (a pending change replaces both)."""

    controls: Controls
    version: int


@dataclass
class Row:
    """One row of a batch: a turn being generated."""

    job: Job
    prompt: list[int]
    generator: torch.Generator
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    status: str | None = None  # None while generating
    prompt_projection: float | None = None  # the monitor's reading at the prompt's last token, before the reply
    state: _InForce | None = None  # the controls in force (shared by a comparison's two rows)
    started: float = 0.0  # time.time() when its decoding started
    index: int = 0  # forward passes over its own tokens so far (the next token's index)


def history(db: Database, job: Job) -> list[Message]:
    """The conversation ``job`` replies to: earlier exchanges that have a reply, then the job's user turn."""
    turns = [t for t in db.turns(job.session_id) if t["id"] < job.turn_id]
    # A compared exchange continues each column with its own reply; a single reply after a comparison takes the
    # column that matches the session's cap setting.
    session = db.session(job.session_id) or {"controls": {}}
    preferred = job.variant if job.variant != "single" else ("capped" if session["controls"].get("cap_enabled") else "uncapped")
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


@torch.inference_mode()
def run_turn(engine: Engine, job: Job) -> None:
    """Generate one turn, or both columns of a comparison as one batch (the cap on the capped row only)."""
    jobs = [job] + ([job.partner] if job.partner is not None else [])
    try:
        _run_rows(engine, job, jobs)
    except Exception as exc:  # the loop marks ``job`` failed; its partner must not stay "running" forever
        for other in jobs[1:]:
            engine.db.finish_turn(other.turn_id, "error", {"error": f"{type(exc).__name__}: {exc}"})
        raise


def _apply(engine: Engine, rows: RowControls, turns: list[tuple[int, Row]], controls: Controls) -> None:
    """Overwrite the cap floors and steering of the batch rows ``i`` of ``turns`` in place: applies to the next forward
    pass."""
    for i, row in turns:
        configure_row(engine, rows, i, row.job.variant, controls)


def configure_row(engine: Engine, rows: RowControls, i: int, variant: str, controls: Controls) -> None:
    """Row ``i`` of ``rows`` gets the cap of ``variant`` under ``controls`` and their steering."""
    record = engine.cap_record(controls, variant)
    rows.set_cap(i, dict(record.thresholds) if record is not None else None)
    start, stop = controls.steer_layers or (engine.target, engine.target + 1)
    rows.set_steer(i, float(controls.steer_coefficient), range(start, stop), engine.steer_set(controls))


def take_pending(engine: Engine, sid: str, live: RowControls, turns: list[tuple[int, Row]]) -> None:
    """Apply the session's pending control change, if any, to its rows ``turns`` (batch index, row) from their next
    token, recorded as ``controls_applied`` with each row's token index."""
    pending = engine.take_pending(sid)
    if pending is None or not turns:
        return
    state = turns[0][1].state
    assert state is not None
    state.controls, state.version = pending[0], pending[1]
    _apply(engine, live, turns, pending[0])
    for _, r in turns:
        if r.status is None:
            engine.db.event(
                r.job.session_id, r.job.turn_id, "controls_applied",
                {"turn": r.job.turn_id, "controls_version": pending[1], "from_token": r.index},
            )  # fmt: skip


def pick(engine: Engine, r: Row, i: int, logits: torch.Tensor, live: RowControls, room: int) -> int | None:
    """Row ``r`` (batch row ``i``) at its token ``r.index``: end it at a stop string, at its limit (``room``: the
    tokens its cache has room for) or at an end-of-turn token, else choose its token from ``logits`` ``(vocab,)``."""
    assert r.state is not None
    now, at = r.state.controls, r.state.version
    limit = min(now.max_new_tokens, room)
    if r.status is None and r.job.stop_strings and any(s in r.text for s in r.job.stop_strings):
        _end(engine, [r], live, "done", "stop string", at, r.started, i)
    if r.status is None and r.index >= min(limit, engine.max_context - len(r.prompt)):
        _end(engine, [r], live, "done", "max_new_tokens reached", at, r.started, i)
    if r.status is not None:
        return None
    token = choose_token(
        logits, greedy=now.greedy, temperature=now.temperature, top_p=now.top_p,
        penalty=now.repetition_penalty, previous=r.tokens, generator=r.generator,
    )  # fmt: skip
    if token in engine.stop_ids:
        _end(engine, [r], live, "done", "end of turn", at, r.started, i)
        return None
    return token


def open_rows(engine: Engine, job: Job) -> list[Row]:
    """Start the turns of ``job`` (and its partner): one :class:`Row` each with its prompt, generator and the
    controls in force (shared by both rows of a comparison), its cap and steering not yet applied. A turn whose
    conversation does not fit the context ends ``error`` here; none at all when the session is gone or ``job``
    stopped while queued."""
    jobs = [job] + ([job.partner] if job.partner is not None else [])
    db = engine.db
    with engine.cond:  # atomic with patch_controls: the stored controls are the newest, pending ones are older
        engine.pending.pop(job.session_id, None)
        session = db.session(job.session_id)
    if session is None or job.stop.is_set():  # deleted or stopped while queued
        return []
    controls = engine.validate_controls(Controls(**session["controls"]))
    version = int(session["controls_version"])
    tokenizer = engine.loaded.tokenizer
    rows: list[Row] = []
    for each in jobs:
        messages = each.messages if each.messages is not None else history(db, each)
        prompt = encode_prompt(tokenizer, session["system"], messages)
        if each.fit_context:  # no limit asked for: as many tokens as the context leaves, up to the default
            left = max(1, min(controls.max_new_tokens, engine.max_context - len(prompt)))
            controls = controls.model_copy(update={"max_new_tokens": left})
        if len(prompt) + controls.max_new_tokens > engine.max_context:
            db.finish_turn(
                each.turn_id, "error",
                {"error": f"the conversation is too long: {len(prompt)} prompt tokens + {controls.max_new_tokens} "
                 f"new exceed the model's context of {engine.max_context}; start a new session or undo turns",
                 "code": "context_length_exceeded", "prompt_tokens": len(prompt)},
            )  # fmt: skip
            continue
        if not db.start_turn(each.turn_id, {"variant": each.variant, "prompt_tokens": len(prompt), "controls_version": version}):
            continue  # stopped in the meantime
        # Same seed + same conversation => same sampling, in any session, for both columns of a comparison.
        user_index = sum(1 for m in messages if m["role"] == "user")
        generator = torch.Generator().manual_seed(int(controls.seed) * 1_000_003 + user_index)
        rows.append(Row(each, prompt, generator))
    state = _InForce(controls, version)
    for r in rows:
        r.state, r.started = state, time.time()
    return rows


def _run_rows(engine: Engine, job: Job, jobs: list[Job]) -> None:
    rows = open_rows(engine, job)
    if not rows:
        return
    assert rows[0].state is not None
    state = rows[0].state
    controls = state.controls
    longest = max(len(r.prompt) for r in rows)
    prompts = [r.prompt for r in rows]
    fitting = [c for c in engine.compiled if c.fits(len(rows), longest + controls.max_new_tokens)]
    compiled = min(fitting, key=lambda c: (c.capacity, c.rows)) if fitting else None
    loaded = engine.loaded
    if compiled is not None:  # a compiled step's fixed batch: twins of the first row fill it (if any), capped nowhere
        live, decoder = compiled.controls, compiled.decoder()
        twins = compiled.rows - len(rows)
        for k in range(len(rows), compiled.rows):
            live.set_cap(k, None)
            live.set_steer(k, 0.0)
        new_tokens = compiled.capacity - longest
    else:
        live = engine.row_controls(len(rows))
        decoder = Decoder(loaded.model, live, layers_path=loaded.info.layers_path, pad_id=engine.pad_id)
        twins = 0
        new_tokens = min(engine.max_context, longest + MAX_NEW_TOKENS) - longest
    _apply(engine, live, list(enumerate(rows)), controls)
    started = rows[0].started

    def choose(index: int, logits: torch.Tensor) -> list[int | None]:
        """Apply a pending control change (from this token on), end rows at their limit, pick each row's token."""
        take_pending(engine, job.session_id, live, list(enumerate(rows)))
        if index == 0:  # the prompt's pass: its last position is the prompt's last token
            first = live.readouts()
            for i, r in enumerate(rows):
                r.prompt_projection = round(float(first.monitor[i]), 5) if first.monitor is not None else None
        limit = decoder.capacity - longest
        picked: list[int | None] = []
        for i, r in enumerate(rows):
            r.index = index
            picked.append(pick(engine, r, i, logits[i], live, limit))
        # a compiled step's spare rows are fed the first row's token (padding once it is done) until every real row
        # is done; then they end too, and so does the loop
        running = any(r.status is None for r in rows)
        twin = (picked[0] if picked[0] is not None else engine.pad_id) if running else None
        return picked + [twin] * twins

    def emit(index: int, fed: list[int | None], readouts: Readouts | None) -> None:
        assert readouts is not None
        for i, r in enumerate(rows):
            token = fed[i]
            if r.status is None and token is not None:
                _emit(engine, r, i, token, index, live, readouts, state.version)

    generate_rows(
        decoder, prompts + [prompts[0]] * twins, new_tokens, choose=choose, on_step=emit,
        layers_path=loaded.info.layers_path, stop=lambda: any(j.stop.is_set() for j in jobs), attach=compiled is None,
    )  # fmt: skip
    if engine.closed:
        _end(engine, rows, live, "incomplete", "the worker stopped during this turn", state.version, started)
    elif any(j.stop.is_set() for j in jobs):
        _end(engine, rows, live, "stopped", "stopped by the user", state.version, started)
    _end(engine, rows, live, "done", "end of turn", state.version, started)


def _emit(engine: Engine, r: Row, i: int, token: int, index: int, live: RowControls, readouts: Readouts, version: int) -> None:
    r.tokens.append(token)
    full = engine.loaded.tokenizer.decode(r.tokens, skip_special_tokens=True)
    piece = full[len(r.text) :] if not full.endswith("\ufffd") else ""
    if piece:
        r.text = full
    data = token_event(r.job.turn_id, index, token, piece, readouts, i, live.cap_taus[i], engine.target, version, r.job.variant)
    engine.db.append_token(r.job.session_id, r.job.turn_id, piece, data)
    engine.tokens_generated += 1


def _end(
    engine: Engine, rows: list[Row], live: RowControls, status: str, reason: str, version: int, started: float,
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
            "prompt_tokens": len(r.prompt), "prompt_projection": r.prompt_projection,
        }  # fmt: skip
        if r.tokens:
            mean = live.capture_mean()[i]
            axis = engine.axis[engine.target]
            try:
                # the worker is stopping, or other rows of the batch would wait too: no waiting for the map (no UMAP)
                others = len(getattr(engine.batch, "rows", ())) > 1  # this row is still one of them
                if status == "incomplete" or (others and engine.placement.phase != "ready"):
                    summary.update(pca=engine.placement.pca(mean), nearest=engine.placement.nearest(mean))
                    summary["mean_projection"] = float(mean.double() @ (axis / axis.norm()).double())
                    if status != "incomplete":
                        summary["placement_note"] = "placed without UMAP: the map was still being built"
                else:
                    summary.update(engine.placement.place(mean))
                    summary["mean_projection"] = summary.pop("projection")
            except Exception as exc:  # the reply stands even if it cannot be placed in the space
                log.exception("placing turn %s failed", r.job.turn_id)
                summary["mean_projection"] = float(mean.double() @ (axis / axis.norm()).double())
                summary["placement_error"] = f"{type(exc).__name__}: {exc}"
            if engine.turn_traits is not None:  # the turn's top traits (the statistics were computed once, at load)
                summary["traits"] = engine.turn_traits.read(mean)
        final = engine.loaded.tokenizer.decode(r.tokens, skip_special_tokens=True)
        hits = [k for k in (final.find(s) for s in r.job.stop_strings) if k >= 0]
        if hits:  # the reply ends before its stop string, as OpenAI's do
            final = final[: min(hits)]
        engine.db.finish_turn(r.job.turn_id, status, summary, content=final)
