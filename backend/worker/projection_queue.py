"""The engine's transcript projections (``POST /project``): queued as :class:`backend.worker.jobs.Projection`s and
read a slice at a time between the engine's steps (:class:`ProjectionQueue`, a part of
:class:`backend.worker.engine.Engine`, which decides when a slice runs). Before each slice a projection whose client
went away or whose deadline passed is dropped."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

import torch

from backend.errors import PersonaSpaceError
from backend.models.loading import LoadedModel
from backend.store.space import Space
from backend.worker.jobs import Overdue, Projection, ShuttingDown

log = logging.getLogger("persona_space.worker")

# Positions of a transcript read per slice of a projection: the embedded model reads 128 in ~0.3-1 s on one busy core
# (up to its target layer, later slices attending to more cached positions), against ~15 s for a 4,096-token pass in
# one go; read in pieces, a pass costs 10-25% more in all.
PROJECTION_SLICE_TOKENS = 128


class ProjectionQueue:
    """The projection half of the engine: what it queues, reads a slice at a time, and drops."""

    cond: threading.Condition
    model_lock: threading.Lock
    thread: threading.Thread
    closed: bool
    loaded: LoadedModel
    space: Space
    projections: deque[Projection]
    projecting: Projection | None

    def _slice(self, projection: Projection) -> None:
        """One slice of ``projection`` (its planning first), then back to the end of the queue until it is read."""
        why = projection.cancelled
        if why is None and time.monotonic() > projection.deadline:
            why = "its deadline passed"
        if why is not None:
            log.info("a projection was dropped (%s) %s", why, projection.progress())
            with self.cond:
                self.projecting = None
            self._drop(projection, self._overdue(projection) if projection.cancelled is None else PersonaSpaceError(why))
            return
        try:
            with self.model_lock, torch.inference_mode():
                if projection.reading is None:
                    projection.reading = projection.begin()
                elif projection.reading.step():
                    projection.result = projection.reading.result()
        except Exception as exc:  # the caller re-raises it (a transcript that cannot be read: 400)
            projection.error = exc
        with self.cond:
            self.projecting = None
            if projection.result is None and projection.error is None:
                if not self.closed:
                    self.projections.append(projection)
                    return
                projection.error = ShuttingDown("the worker is shutting down; nothing was kept")
        projection.done.set()

    @staticmethod
    def _overdue(projection: Projection) -> Overdue:
        return Overdue(
            f"the projection ran past its deadline of {projection.seconds:g} s {projection.progress()}; nothing was "
            "kept. Ask for a longer deadline (up to 3600 s), project a shorter transcript, or use "
            "`python -m backend project-transcript`"
        )

    @staticmethod
    def _drop(projection: Projection, error: BaseException) -> None:
        projection.error, projection.reading = error, None  # frees its cache
        projection.done.set()

    def submit_projection(
        self, data: Any, layer: int | None, *, window: int | None = None, history: float = 0.5, tokens: bool = False,
        deadline: float = 300.0,
    ) -> Projection:  # fmt: skip
        """Queue the projection of a transcript (any accepted format), to be read a slice at a time between turns
        and dropped once ``deadline`` seconds have passed; wait on its ``done``."""
        from backend.reading.transcripts import Reading, parse_transcript

        transcript = parse_transcript(data)  # a malformed transcript is refused here, without queueing

        def begin() -> Reading:
            return Reading(
                self.loaded, self.space, transcript, layer, window=window, history=history, tokens=tokens,
                slice_tokens=PROJECTION_SLICE_TOKENS,
            )  # fmt: skip

        projection = Projection(begin, time.monotonic() + deadline, deadline)
        with self.cond:
            if self.closed:
                raise ShuttingDown("the worker is shutting down")
            self.projections.append(projection)
            self.cond.notify_all()
        return projection

    def projection_work(self) -> dict[str, int]:
        """The projections queued or being read, and the tokens they have left to read (for /health)."""
        with self.cond:
            queued = list(self.projections) + ([self.projecting] if self.projecting is not None else [])
        return {"queued": len(queued), "tokens_left": sum(p.tokens_left for p in queued)}

    def project(
        self, data: Any, layer: int | None, *, window: int | None = None, history: float = 0.5, tokens: bool = False,
        deadline: float = 300.0,
    ) -> dict[str, Any]:  # fmt: skip
        """:meth:`submit_projection`, waiting for the result (read on this thread when the generation thread is not
        running)."""
        projection = self.submit_projection(data, layer, window=window, history=history, tokens=tokens, deadline=deadline)
        while not self.thread.is_alive() and not projection.done.is_set():
            with self.cond:
                if projection in self.projections:
                    self.projections.remove(projection)
            self._slice(projection)
        projection.done.wait()
        if projection.error is not None:
            raise projection.error
        assert projection.result is not None
        return projection.result
