"""What the engine's queues hold: a turn to generate (:class:`Job`), work run on the generation thread for another
thread (:class:`Call`), a transcript read a slice at a time between turns (:class:`Projection`), and the errors a
request to the engine can meet."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from backend.errors import PersonaSpaceError
from backend.models.chat import Message


class ControlError(PersonaSpaceError, ValueError):
    """Controls that do not fit the loaded model or space."""


class Conflict(PersonaSpaceError):
    """The request conflicts with the session's state (e.g. undo while a turn runs)."""


class Overdue(PersonaSpaceError):
    """Queued work (a projection) that ran past its deadline: dropped, nothing kept (the route answers 504)."""


class ShuttingDown(PersonaSpaceError):
    """The worker is stopping: queued work is not run (the route answers 503)."""


@dataclass
class Job:
    """One row's worth of work: a turn of a session, with everything its row needs to be decoded.

    A chat turn rebuilds its conversation from the database; an API request (``POST /v1/chat/completions``)
    brings its own ``messages`` (stored in its session too, for inspection), may end at ``stop_strings`` and, when it
    named no token limit, takes what the context leaves (``fit_context``). Its controls are its session's."""

    session_id: str
    turn_id: int
    user_turn: int
    variant: str
    stop: threading.Event = field(default_factory=threading.Event)
    partner: Job | None = None  # a comparison's uncapped column, generated in the same batch as this one
    messages: list[Message] | None = None  # the conversation as given (API); None: rebuilt from the database
    stop_strings: tuple[str, ...] = ()  # the row ends once its text holds one (API)
    fit_context: bool = False  # max_new_tokens is at most what the context leaves after the prompt (API)


@dataclass
class Call:
    """Work that needs the model, run on the generation thread for another thread (see :mod:`backend.kernels.cpu_threads`)."""

    fn: Callable[[], Any]
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


@dataclass
class Projection:
    """A transcript projection, run on the generation thread one slice at a time, taking turns with the chat turns.

    Its first slice calls ``begin``, which encodes the conversation and plans its passes (a
    :class:`backend.reading.transcripts.Reading`); each later slice is one :meth:`~backend.reading.transcripts.Reading.step`.
    Before each slice the engine drops it, with ``error`` set, once :meth:`cancel` was called (its client went away)
    or ``deadline`` (``time.monotonic()``) has passed; ``done`` is set when it is finished either way.
    """

    begin: Callable[[], Any]
    deadline: float
    seconds: float  # the deadline as asked for, for the messages
    reading: Any = None
    cancelled: str | None = None
    done: threading.Event = field(default_factory=threading.Event)
    result: dict[str, Any] | None = None
    error: BaseException | None = None

    def cancel(self, why: str) -> None:
        """Drop it before its next slice (nothing is waiting for it any more)."""
        self.cancelled = self.cancelled or why

    @property
    def tokens_left(self) -> int:
        """Tokens still to read (0 until the conversation is planned, by the first slice)."""
        return int(self.reading.tokens_left) if self.reading is not None else 0

    def progress(self) -> str:
        if self.reading is None:
            return "before the conversation was even encoded"
        return f"after reading {self.reading.tokens_total - self.tokens_left} of its {self.reading.tokens_total} tokens"
