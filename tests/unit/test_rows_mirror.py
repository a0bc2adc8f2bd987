"""A compiled step's fixed rows mirror the running batch's row controls (:meth:`RowControls.mirror`) and hand their
readouts back (:meth:`RowControls.take_readouts`): every per-row tensor, several direction sets included, in place."""

from __future__ import annotations

import math

import pytest
import torch

from backend.errors import InterventionError
from backend.hooks.rows import RowControls

L, H = 4, 8


def controls(rows: int) -> RowControls:
    g = torch.Generator().manual_seed(0)
    caps = torch.randn(2, L, H, generator=g)  # two cap sets (the axis and a placebo)
    steers = torch.randn(3, L, H, generator=g)  # the axis and two traits
    return RowControls(rows, L, H, cap_directions=caps, steer_vectors=steers, monitor=(1, caps[0, 1]), capture_layer=2)


def test_the_fixed_rows_take_the_batch_rows_and_the_spare_ones_are_fresh() -> None:
    batch, fixed = controls(2), controls(4)
    batch.set_cap(0, {1: 0.5, 2: 1.0}, direction_set=1)
    batch.set_steer(1, 2.0, [0, 3], direction_set=2)
    batch.set_active(1, True)
    batch.capture_sum[0] = 3.0
    fixed.set_cap(3, {1: 9.0})  # what a spare row held must not survive
    fixed.set_steer(2, 5.0, [1])
    tensors = {name: getattr(fixed, name) for name, _ in RowControls._ROW_TENSORS}
    version = fixed.version
    fixed.mirror(batch)
    for name, fresh in RowControls._ROW_TENSORS:
        mine = getattr(fixed, name)
        assert mine is tensors[name]  # written in place: a compiled graph saw these tensors
        assert torch.equal(mine[:2], getattr(batch, name))
        assert bool((mine[2:] == fresh).all()), name
    assert fixed.cap_taus[:2] == batch.cap_taus and fixed.cap_taus[2:] == [{}, {}]
    assert fixed.steer_on[2:] == [{}, {}] and fixed.cap_set_of == [1, 0, 0, 0] and fixed.steer_set_of == [0, 2, 0, 0]
    assert fixed.tau[3, 1] == -math.inf and fixed.version > version


def test_readouts_come_back_for_the_batch_rows_only() -> None:
    batch, fixed = controls(2), controls(4)
    fixed.mirror(batch)
    for t in (fixed.before, fixed.delta, fixed.monitor, fixed.capture_sum, fixed.capture_count):
        t.copy_(torch.arange(t.numel(), dtype=t.dtype).reshape(t.shape) + 1)
    batch.take_readouts(fixed)
    for name in ("before", "delta", "monitor", "capture_sum", "capture_count"):
        assert torch.equal(getattr(batch, name), getattr(fixed, name)[:2])
    mine, theirs = batch.readouts().monitor, fixed.readouts().monitor
    assert mine is not None and theirs is not None and torch.equal(mine, theirs[:2])


def test_more_rows_than_the_fixed_step_has_are_refused() -> None:
    with pytest.raises(InterventionError, match="3 rows cannot be mirrored"):
        controls(2).mirror(controls(3))
