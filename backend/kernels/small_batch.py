"""Linear layers computed for a few rows the way a CPU's BLAS streams them fastest.

A decode step multiplies one to a few rows by every weight matrix of the model. On this machine's CPU (MKL, two
threads) ``F.linear(x, W)`` = ``x @ W^T`` takes a matrix-vector path for one row that reads the weights at ~12 GB/s,
and for two to eight rows a path that is slower still, while the same product computed as ``W @ x^T`` with two to
eight columns streams the weights at ~33 GB/s (``bench/linear.py``: 45 ms vs 17 ms for all of SmolLM2-135M's
matrices per step). So for two to :data:`MAX_ROWS` rows the product is computed as ``(W @ x^T)^T``, and a single row
is doubled into a two-row copy first (a one-column product is the slow path again). The left operand's rows must
be contiguous: a transposed activation (what the previous layer returns) would send MKL down the slow path.

The arithmetic is the same product with a different summation order: readouts agree with ``F.linear``'s to float32
rounding and greedy tokens are the same (``tests/test_small_batch.py``). More rows than :data:`MAX_ROWS` (a prompt,
a builder batch), another device, another dtype or a gradient keep ``F.linear``.

:func:`install` swaps the ``forward`` of a model's ``nn.Linear`` modules (idempotent); :func:`plain` is a context in
which they are ``nn.Linear``'s own again (a baseline that must be unpatched).
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

MAX_ROWS = 8  # measured: above ~8-16 rows F.linear is as fast and needs no transposed copy
_MARK = "_persona_space_small_batch"
INT8_MARK = "_persona_space_int8"  # a layer in backend.kernels.int8_linear's mode keeps its own product


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, computed as ``(weight @ x^T)^T`` for 1..:data:`MAX_ROWS` rows of float32 on a CPU."""
    features = x.shape[-1]
    rows = x.numel() // features if features else 0
    if (
        not 1 <= rows <= MAX_ROWS
        or x.device.type != "cpu"
        or x.dtype != torch.float32
        or weight.dtype != torch.float32
        or weight.dim() != 2
        or (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
    ):
        return F.linear(x, weight, bias)
    flat = x.reshape(rows, features)
    flat = torch.cat([flat, flat]) if rows == 1 else flat.contiguous()
    # row-major like F.linear's: a transposed view (last stride = rows) sends attention down its slow math path
    out = torch.mm(weight, flat.t())[:, :rows].t().contiguous()
    if bias is not None:
        out = out + bias
    return out.reshape(*x.shape[:-1], weight.shape[0])


def _forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return linear(x, self.weight, self.bias)


def install(model: nn.Module) -> int:
    """Route every ``nn.Linear`` of ``model`` through :func:`linear`; returns how many (0 when already installed).

    Layers in :mod:`backend.kernels.int8_linear`'s mode are left alone."""
    count = 0
    for module in model.modules():
        if isinstance(module, nn.Linear) and not getattr(module, _MARK, False) and not getattr(module, INT8_MARK, False):
            module.forward = types.MethodType(_forward, module)  # type: ignore[method-assign]
            setattr(module, _MARK, True)
            count += 1
    return count


def remove(model: nn.Module) -> None:
    for module in model.modules():
        if getattr(module, _MARK, False):
            del module.forward
            delattr(module, _MARK)


def installed(model: nn.Module) -> bool:
    return any(getattr(m, _MARK, False) for m in model.modules())


@contextmanager
def plain(model: nn.Module) -> Iterator[None]:
    """``model``'s linear layers as ``nn.Linear`` computes them, for the duration (reinstalled after if they were)."""
    was = installed(model)
    remove(model)
    try:
        yield
    finally:
        if was:
            install(model)
