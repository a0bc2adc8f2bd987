"""What the worker's routes share: the model's state while it loads and once it has, the database, the follower
wake-ups and the importer. ``create_app`` keeps them on ``app.state``; a route asks for them as dependencies
(``state: State``), so the routes live in modules of their own (:mod:`backend.worker.routes`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi import Path as PathParam

from backend.worker.db import Database
from backend.worker.engine import Engine
from backend.worker.guards import EventNotifier
from backend.worker.importer import Importer

SessionId = Annotated[str, PathParam(pattern=r"^[0-9a-f]{16}$", description="session id")]


@dataclass
class WorkerState:
    """What the server knows while the model loads, and the engine once it has."""

    model_spec: str
    space_path: str
    db: Database
    engine: Engine | None = None
    status: str = "starting"
    error: str | None = None
    started: float = field(default_factory=time.time)
    space_cache: dict[int, dict[str, Any]] = field(default_factory=dict)
    trait_cache: dict[int, dict[str, Any]] = field(default_factory=dict)  # layer -> summary and archetypes per trait
    probed: float = 0.0

    def need_engine(self) -> Engine:
        if self.engine is None or not self.engine.ready.is_set():
            detail = self.error or f"the worker is still starting ({self.status}); retry in a few seconds"
            raise HTTPException(status_code=503, detail=detail)
        return self.engine

    def session_or_404(self, sid: str) -> dict[str, Any]:
        session = self.db.session(sid)
        if session is None:
            raise HTTPException(status_code=404, detail=f"no session {sid}")
        return session


async def _state(request: Request) -> WorkerState:
    return request.app.state.worker


async def _notifier(request: Request) -> EventNotifier:
    return request.app.state.notifier


async def _importer(request: Request) -> Importer:
    # an import child opens the database by its path: a lost file (Database.lost) is refused before one could make
    # a new, empty file there (503, like every other write)
    request.app.state.worker.db.check_file()
    return request.app.state.importer


State = Annotated[WorkerState, Depends(_state)]
Notifier = Annotated[EventNotifier, Depends(_notifier)]
Imports = Annotated[Importer, Depends(_importer)]
