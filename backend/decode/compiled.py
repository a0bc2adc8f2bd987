"""A compiled decode step the worker builds in the background while it keeps serving eagerly.

``torch.compile`` traces the model together with the row controls' hooks, so the graph belongs to one set of module
objects, one :class:`backend.hooks.rows.RowControls` and one batch shape. :class:`CompiledRows` therefore compiles a
*shadow* of the model: a copy of its module tree that shares every weight and buffer (no extra memory for them),
with its own row controls attached for good and its own static KV cache of ``capacity`` positions for ``rows`` rows.
The serving thread keeps decoding with the original model and its own hooks meanwhile: the two never share a module,
a hook or a readout buffer. Once :attr:`ready` is set the serving thread may use :meth:`decoder` for any batch of
up to ``rows`` rows (pad with twins of the first row) whose prompt plus new tokens fit in ``capacity``; a control change
overwrites the shadow's row tensors in place, so the graph is never retraced.

Compiling (with inductor's C++ wrapper on a CPU) takes ~10 s per cache size on this 2-core CPU with inductor's
on-disk cache warm, one to two minutes cold; the cache lives under the persona-space cache folder so a restarted
worker reuses it. A failure leaves :attr:`error` set and the worker eager, with one log line.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from backend.decode.engine import CompiledStep, Decoder, Forward
from backend.hooks.rows import RowControls


def shadow_of(model: nn.Module) -> nn.Module:
    """A copy of ``model``'s modules sharing its parameters, buffers and any other tensor a module holds (e.g.
    :mod:`backend.kernels.int8_linear`'s int8 weights); forward hooks are not copied."""
    memo: dict[int, Any] = {id(t): t for t in model.parameters()}
    memo.update({id(t): t for t in model.buffers()})
    memo.update({id(v): v for m in model.modules() for v in vars(m).values() if isinstance(v, torch.Tensor)})
    shadow = copy.deepcopy(model, memo)
    for module in shadow.modules():
        module._forward_hooks.clear()
        module._forward_pre_hooks.clear()
    return shadow


class CompiledRows:
    """A compiled step for ``rows`` rows and ``capacity`` cache positions, on a shadow of ``model`` (see the module)."""

    def __init__(
        self,
        model: nn.Module,
        controls: Callable[[int], RowControls],
        *,
        rows: int,
        capacity: int,
        pad_id: int,
        layers_path: str | None = None,
        cache_dir: str | None = None,
        mode: str | None = None,
    ) -> None:
        self.rows, self.capacity, self.pad_id = rows, capacity, pad_id
        self.shadow = shadow_of(model)
        self.controls = controls(rows)
        self.controls.attach(self.shadow, layers_path)  # for good: the compiled graph is traced through these hooks
        self.cache_pool: dict[tuple[int, int], Any] = {}
        self.step = CompiledStep(self.shadow, self._warm_up, cache_dir=cache_dir, mode=mode)

    @property
    def ready(self) -> bool:
        return self.step.ready.is_set() and self.step.error is None

    @property
    def error(self) -> str | None:
        return self.step.error

    @property
    def seconds(self) -> float | None:
        return self.step.seconds

    def start(self) -> CompiledRows:
        self.step.start()
        return self

    def ready_eagerly(self) -> CompiledRows:
        """Lay out this step's fixed shape (its cache and rows) and mark it ready without compiling: a stand-in whose
        step is the shadow's eager forward, so the fixed-shape path of :class:`backend.decode.batch.Batch` can be
        tested in seconds (compiling takes minutes)."""
        with torch.inference_mode():
            self._warm_up(self.step.forward)
        self.step.seconds = 0.0
        self.step.ready.set()
        return self

    def abandon(self, why: str) -> None:
        """Take this step out of use (it failed at run time): :meth:`fits` is false from now on."""
        self.step.error = why

    def cache(self) -> Any:
        """The static cache this step was traced with (``rows`` x ``capacity``): a batch on this step writes into it
        in place, so the graph sees the same tensors at every step."""
        return self.cache_pool[(self.rows, self.capacity)]

    def fits(self, rows: int, tokens: int) -> bool:
        """Whether a batch of ``rows`` rows needing ``tokens`` cache positions (prompt + new) can use this step."""
        return self.ready and rows <= self.rows and tokens <= self.capacity

    def _warm_up(self, forward: Forward) -> None:
        decoder = self._decoder(forward)
        decoder.start([[self.pad_id]] * self.rows, self.capacity - 1)
        for _ in range(2):  # the first call compiles; the second checks that nothing is retraced
            decoder.step([self.pad_id] * self.rows)

    def _decoder(self, forward: Forward) -> Decoder:
        return Decoder(
            self.shadow, self.controls, pad_id=self.pad_id, step_forward=forward, cache_pool=self.cache_pool,
            bucket=self.capacity,
        )  # fmt: skip

    def decoder(self) -> Decoder:
        """A decoder on the shadow with the compiled step; start it with exactly :attr:`rows` prompts."""
        return self._decoder(self.step.forward)
