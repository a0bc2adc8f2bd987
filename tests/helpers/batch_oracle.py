"""Rows that join a running :class:`backend.decode.batch.Batch` at given steps, greedy, against their single-row runs
(:func:`tests.helpers.decode_oracle.eager_reference`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from backend.decode.batch import Batch
from backend.decode.compiled import CompiledRows
from backend.hooks.rows import RowControls
from tests.helpers.decode_oracle import MONITOR, STOP, eager_reference, world


@dataclass
class Spec:
    prompt: list[int]
    join_at: int  # the batch's step at which the row joins
    n: int  # tokens it may generate
    caps: dict[int, float] | None = None
    steer: tuple[float, list[int]] | None = None
    change: tuple[int, dict[int, float]] | None = None  # (its own token index, new caps)
    tokens: list[int] = field(default_factory=list)
    readings: list[float] = field(default_factory=list)
    deltas: list[dict[int, float]] = field(default_factory=list)


def controls_for(model):  # type: ignore[no-untyped-def]
    """The oracle's row controls for ``n`` rows: the cap and steering directions, the monitor."""
    axis, vectors = world(model)

    def make(n: int) -> RowControls:
        return RowControls(n, *axis.shape, cap_directions=axis, steer_vectors=vectors, monitor=(MONITOR, axis[MONITOR]))

    return make


def fixed_steps(model, shapes: list[tuple[int, int]]) -> list[CompiledRows]:  # type: ignore[no-untyped-def]
    """Stand-ins for compiled steps of these (rows, capacity) shapes: the fixed-shape path, eager (see
    :meth:`backend.decode.compiled.CompiledRows.ready_eagerly`)."""
    make = controls_for(model)
    return [CompiledRows(model, make, rows=r, capacity=c, pad_id=STOP).ready_eagerly() for r, c in shapes]


def run_batch(  # type: ignore[no-untyped-def]
    model, specs: list[Spec], steps: Sequence[CompiledRows] = (), ready_at: int = 0, shapes: list | None = None
) -> Batch:
    """Run ``specs`` through one batch; ``steps`` (compiled or stand-ins) become ready at step ``ready_at``.
    ``shapes`` (if given) receives the shape each step ran on: ``(rows, capacity, fixed)``."""
    ready: list[CompiledRows] = []
    batch = Batch(model, controls_for(model), pad_id=STOP, bucket=8, compiled=lambda: ready)
    live: list[Spec] = []
    logits: list[torch.Tensor] = []
    step = 0
    while step <= max(s.join_at for s in specs) or live:
        if step == ready_at:
            ready.extend(steps)
        for s in specs:
            if s.join_at == step:

                def configure(controls: RowControls, row: int, s: Spec = s) -> None:
                    controls.set_cap(row, s.caps)
                    if s.steer:
                        controls.set_steer(row, *s.steer)

                row, first = batch.join(s.prompt, s.n, configure)
                assert row == len(live)
                live.append(s)
                logits.append(first)
        fed, leaving = [], []
        for j, s in enumerate(live):
            token = int(logits[j].argmax())
            if token == STOP or len(s.tokens) == s.n:
                leaving.append(j)
                continue
            if s.change is not None and s.change[0] == len(s.tokens):  # applies to the pass over this token on
                batch.controls.set_cap(j, s.change[1])  # type: ignore[union-attr]
            s.tokens.append(token)
            fed.append(token)
        batch.leave(leaving)
        live = [s for j, s in enumerate(live) if j not in leaving]
        if live:
            out = batch.step(fed)
            if shapes is not None:
                shapes.append((batch.decoder.rows, batch.decoder.capacity, batch.on is not None))
                assert batch.on is None or batch.decoder.cache is batch.on.cache()  # written in place
            r = batch.readouts()
            controls = batch.controls
            assert controls is not None
            for j, s in enumerate(live):
                s.readings.append(float(r.monitor[j]))  # type: ignore[index]
                s.deltas.append({k: float(r.delta[j, k]) for k in controls.cap_taus[j]})
            logits = list(out)
        step += 1
    return batch


def reference(model, s: Spec):  # type: ignore[no-untyped-def]
    return eager_reference(model, s.prompt, s.n, caps=s.caps, steer=s.steer, change=s.change)
