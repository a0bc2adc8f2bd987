"""What the engine's queue holds: a turn to generate (:class:`Job`), work run on the generation thread for another
thread (:class:`Call`), and the two errors a request to the engine can meet."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from backend.errors import PersonaSpaceError


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
class Call:
    """Work that needs the model, run on the generation thread for another thread (see :mod:`backend.kernels.cpu_threads`)."""

    fn: Callable[[], Any]
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None
