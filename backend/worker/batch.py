"""The engine's running batch: every running turn (chat turns, both columns of a comparison, API requests) is a row of
one :class:`backend.decode.batch.Batch`, decoded together one step at a time.

A queued job joins between two steps (:meth:`Running.admit`: its turns start, each row's prompt is read alone and
joins the batch with its own cap, steering and generator, the cache sized to its token limit); at each step (:meth:`Running.step`) every session's
pending control change is applied to its rows (from their next token), each row picks its token or ends (its stop
string, its limit, an end-of-turn token, a stop or the worker stopping) exactly as a turn alone does
(:mod:`backend.worker.turn`: the same per-row functions write the same events), the rows that ended leave, and the
others are fed their tokens. A row therefore equals its single-row run whoever shares the batch.

At most :attr:`Running.max_rows` rows run at once (a step costs about the same for 1 to 4 rows on a CPU,
``bench/linear.py``); a session has at most one running job, so its next turn, which replies to this one, waits.
A step runs on the engine's compiled step for the batch's shape once one is ready and fits (rows padded up to its
row count, the cache to its capacity), eagerly otherwise (:mod:`backend.decode.batch`). It runs on the engine's
generation thread with the model lock.
"""

from __future__ import annotations

import logging

import torch

from backend.decode.batch import Batch
from backend.worker.jobs import Job
from backend.worker.schemas import MAX_NEW_TOKENS
from backend.worker.turn import Engine, Row, _emit, _end, configure_row, open_rows, pick, take_pending

log = logging.getLogger("persona_space.worker")

MAX_ROWS = 4


def rows_of(job: Job) -> int:
    return 2 if job.partner is not None else 1


class Running:
    """The rows being decoded together, and the jobs they belong to."""

    def __init__(self, engine: Engine, max_rows: int = MAX_ROWS) -> None:
        self.engine = engine
        self.max_rows = max_rows
        self.batch = self._new_batch()
        self.rows: list[Row] = []
        self.logits: list[torch.Tensor] = []  # per row: the logits its next token is chosen from
        self.jobs: list[Job] = []  # running jobs (a comparison: the capped column's job, its partner with it)

    def _new_batch(self) -> Batch:
        engine = self.engine
        return Batch(
            engine.loaded.model, engine.row_controls, layers_path=engine.loaded.info.layers_path, pad_id=engine.pad_id,
            compiled=lambda: engine.compiled,
        )  # fmt: skip

    def room(self) -> int:
        return self.max_rows - len(self.rows)

    def sessions(self) -> set[str]:
        return {j.session_id for j in self.jobs}

    def takes(self, job: Job) -> bool:
        """Whether ``job`` can join now: room for its rows, and no running job of its session."""
        return rows_of(job) <= self.room() and job.session_id not in self.sessions()

    @torch.inference_mode()
    def admit(self, job: Job) -> dict[int, str]:
        """Start ``job``'s turns and let their rows join the batch (their prompts read now). Returns the turns that
        failed (turn id: why) for the engine to record."""
        engine = self.engine
        try:
            rows = open_rows(engine, job)  # writes its turns' start: the database may refuse it
        except Exception as exc:  # not lost: the engine marks its turns failed once the database takes the write
            log.exception("turn %s could not start", job.turn_id)
            return dict.fromkeys(self._turns(job), f"{type(exc).__name__}: {exc}")
        if not rows:
            return {}
        self.jobs.append(job)
        controls = self.batch.controls
        assert controls is not None
        try:
            for r in rows:

                def configure(c, k, r: Row = r) -> None:  # type: ignore[no-untyped-def]
                    assert r.state is not None
                    configure_row(engine, c, k, r.job.variant, r.state.controls)

                i, logits = self.batch.join(r.prompt, self._budget(r), configure)
                monitor = controls.readouts().monitor  # the prompt's pass: its last position is the prompt's last token
                r.prompt_projection = round(float(monitor[i]), 5) if monitor is not None else None
                self.rows.append(r)
                self.logits.append(logits)
        except Exception as exc:  # a failed turn must not take the others down
            log.exception("turn %s failed", job.turn_id)
            return dict.fromkeys(self.fail(rows), f"{type(exc).__name__}: {exc}")
        return {}

    def step(self) -> dict[int, str]:
        """One step of every row: controls, tokens (or ends), the ended rows leave, the others are fed. Returns the
        turns that failed (all that were running, if the step failed)."""
        try:
            self._step()
        except Exception as exc:
            log.exception("a step of the running batch failed")
            return dict.fromkeys(self.fail(), f"{type(exc).__name__}: {exc}")
        return {}

    @torch.inference_mode()
    def _step(self) -> None:
        engine = self.engine
        controls = self.batch.controls
        assert controls is not None
        for sid in self.sessions():
            take_pending(engine, sid, controls, [(i, r) for i, r in enumerate(self.rows) if r.job.session_id == sid])
        for i, r in enumerate(self.rows):  # a limit raised mid-turn: room for the tokens it now allows
            if self._budget(r) - r.index > self.batch.left[i]:
                self.batch.extend(i, self._budget(r) - r.index)
        fed: list[int | None] = []
        for i, r in enumerate(self.rows):
            if r.job.stop.is_set():
                assert r.state is not None
                status, reason = (
                    ("incomplete", "the worker stopped during this turn") if engine.closed else ("stopped", "stopped by the user")
                )
                _end(engine, [r], controls, status, reason, r.state.version, r.started, i)
                fed.append(None)
            else:
                fed.append(pick(engine, r, i, self.logits[i], controls, r.index + self.batch.left[i]))
        ended = [i for i, r in enumerate(self.rows) if r.status is not None]
        self.batch.leave(ended)
        kept = [i for i in range(len(self.rows)) if i not in set(ended)]
        self.rows = [self.rows[i] for i in kept]
        tokens = [fed[i] for i in kept]
        self.logits = []
        left = {r.job.turn_id for r in self.rows}
        self.jobs = [j for j in self.jobs if any(t in left for t in self._turns(j))]
        if not self.rows:
            return
        out = self.batch.step([int(t) for t in tokens if t is not None])
        readouts = self.batch.readouts()
        for i, (r, token) in enumerate(zip(self.rows, tokens, strict=True)):
            assert token is not None and r.state is not None
            _emit(engine, r, i, token, r.index, controls, readouts, r.state.version)
            r.index += 1
        self.logits = list(out)

    def fail(self, rows: list[Row] | None = None) -> list[int]:
        """Drop ``rows`` (default: all) from the running set after an error; returns their turn ids (to be marked
        failed by the engine). The batch starts afresh when all go."""
        gone = self.rows if rows is None else rows
        ids = [r.job.turn_id for r in gone if r.status is None]
        for r in gone:
            r.status = r.status or "error"
        mine = {id(r) for r in gone}
        indices = [i for i, r in enumerate(self.rows) if id(r) in mine]
        try:
            self.batch.leave(indices)
        except Exception:  # the batch itself is broken: start a new one
            log.exception("the running batch could not drop its failed rows; starting afresh")
            self.batch.close()
            self.batch = self._new_batch()
            indices = list(range(len(self.rows)))
            ids += [r.job.turn_id for r in self.rows if id(r) not in mine and r.status is None]
        self.rows = [r for i, r in enumerate(self.rows) if i not in set(indices)]
        self.logits = [x for i, x in enumerate(self.logits) if i not in set(indices)]
        left = {r.job.turn_id for r in self.rows}
        self.jobs = [j for j in self.jobs if any(t in left for t in self._turns(j))]
        return ids

    def _budget(self, r: Row) -> int:
        """The tokens row ``r`` may generate in all under the controls in force (its cache is sized to it)."""
        assert r.state is not None
        return max(1, min(r.state.controls.max_new_tokens, MAX_NEW_TOKENS, self.engine.max_context - len(r.prompt)))

    @staticmethod
    def _turns(job: Job) -> list[int]:
        return [job.turn_id] + ([job.partner.turn_id] if job.partner is not None else [])
