"""An OpenAI API request as a turn of the engine: stored as a session of kind ``api`` (its messages as done turns, so
the app's chat list can show it), queued like any chat turn (:meth:`backend.worker.engine.Engine.enqueue`), and
followed through the turn's stored events, the same ones a chat's event stream reads.

The request's :class:`~backend.worker.jobs.Job` carries everything its row needs (its messages, controls in its
session, stop strings, a token limit): it is a row of the engine's running batch, beside chat turns and other
requests (:mod:`backend.worker.batch`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import anyio
from fastapi.concurrency import run_in_threadpool

from backend.worker.db import Database
from backend.worker.engine import Engine
from backend.worker.guards import EventNotifier
from backend.worker.jobs import Job
from backend.worker.openai_shapes import ChatRequest
from backend.worker.routes.events import STREAM_INTERVAL_S
from backend.worker.schemas import Controls

TITLE_CHARS = 80


def default_controls(engine: Engine) -> Controls:
    """The cap of a request that names none (``serve --cap``): the chat's default (the space's preset, else p75),
    off, or pN, on the space's cap window."""
    base = engine.default_controls()
    if engine.api_cap == "off":
        return base.model_copy(update={"cap_enabled": False})
    percentile = float(engine.api_cap[1:]) if engine.api_cap.startswith("p") else base.cap_percentile
    return base.model_copy(update={"cap_enabled": True, "cap_percentile": percentile})


def submit(engine: Engine, request: ChatRequest, controls: Controls) -> tuple[str, int]:
    """Store the request as an API session and queue its reply; returns (session id, the reply's turn id)."""
    db = engine.db
    system, turns = request.conversation()
    first = next(t["content"] for t in turns if t["role"] == "user")
    title = "API: " + " ".join(first.split())[:TITLE_CHARS]
    sid = db.create_session(system, controls.model_dump(mode="json"), title, kind="api")
    asked: int | None = None
    for t in turns[:-1]:  # the conversation so far, for reading it later (the job brings its own copy)
        if t["role"] == "user":
            asked = db.add_turn(sid, "user", t["content"], "done")
        else:
            db.add_turn(sid, "assistant", t["content"], "done", reply_to=asked)
    user_turn = db.add_turn(sid, "user", turns[-1]["content"], "done")
    turn = db.add_turn(sid, "assistant", "", "queued", reply_to=user_turn, seed=controls.seed)
    job = Job(
        sid, turn, user_turn, "single", messages=list(turns), stop_strings=request.stop_strings(),
        fit_context=request.limit() is None,
    )  # fmt: skip
    engine.enqueue(job)
    return sid, turn


class TurnFollower:
    """Reads the events of one turn as they are written: :meth:`poll` returns the new ones (waiting up to a second
    for one, reading at most every ``STREAM_INTERVAL_S``); ``start`` and ``end`` hold the data of its ``turn_start``
    and ``turn_end`` once seen."""

    def __init__(self, db: Database, notifier: EventNotifier, sid: str, turn: int) -> None:
        self.db, self.notifier, self.sid, self.turn = db, notifier, sid, turn
        self.last = 0
        self.read_at = 0.0
        self.start: dict[str, Any] | None = None
        self.end: dict[str, Any] | None = None
        self.tokens: list[dict[str, Any]] = []  # the data of every token event seen

    def _newer(self) -> bool:
        return self.db.last_seq.get(self.sid, 0) > self.last

    async def poll(self) -> list[dict[str, Any]]:
        self.notifier.attach(asyncio.get_running_loop())
        if not self._newer() and not await self.notifier.wait(self.sid, 1.0, self._newer):
            if await run_in_threadpool(self.db.turn, self.turn) is None:  # its session was deleted meanwhile
                self.end = {"status": "stopped", "reason": "the session was deleted"}
            return []
        wait = self.read_at + STREAM_INTERVAL_S - time.monotonic()
        if wait > 0:  # tokens in batches of a few, not a wake-up of the server per token
            await asyncio.sleep(wait)
        self.read_at = time.monotonic()
        batch = await run_in_threadpool(self.db.events, self.sid, self.last, 500)
        if batch:
            self.last = int(batch[-1]["seq"])
        mine = [e for e in batch if e["turn"] == self.turn]
        for event in mine:
            if event["type"] == "turn_start":
                self.start = event["data"]
            elif event["type"] == "token":
                self.tokens.append(event["data"])
            elif event["type"] == "turn_end":
                self.end = event["data"]
        return mine


async def stop_turn(engine: Engine, sid: str) -> None:
    """Stop the request's turn (its client went away), even from a task being cancelled."""
    with anyio.CancelScope(shield=True):
        await run_in_threadpool(engine.stop, sid)
