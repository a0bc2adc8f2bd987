"""Weight-only int8 linear layers on a CPU: the decode engine's ``int8`` precision mode (opt-in, never the default).

Each ``nn.Linear`` weight gets an int8 copy with one symmetric scale per output row (``max |w| / 127``); a product
runs torch's packed int8 kernel (``torch._weight_int8pack_mm``: with float32 activations it is 5x slower than with
bfloat16 ones on this CPU) with the activations rounded to bfloat16 on the way in and the result back in the
activations' dtype. Norms,
attention, the residual stream and the hooks' readouts stay float32. A decode step reads a quarter of float32's
bytes: on this machine the matrices of one SmolLM2-135M step take ~10 ms against ~20 ms for
:mod:`backend.kernels.small_batch`'s float32 products.

What it costs, measured on the embedded model (``bench/decode.py --mode int8``): the monitor's per-token
projection moves by up to ~0.5 (against a per-token standard deviation of ~5), almost all of it from the weights'
rounding (bfloat16 activations alone: 0.07), and greedy replies leave float32's after 10–40 tokens. That is outside
the tolerance the default must keep (docs/worker-api.md, "Precision"), so float32 stays the default.

:func:`install` adds the int8 copies beside the float32 weights (kept: :func:`remove` restores ``nn.Linear``'s own
float32 products exactly) and swaps the layers' ``forward``, in place of :mod:`backend.kernels.small_batch`'s (which then
leaves these layers alone); it is idempotent and refuses a model off the CPU or not in float32. A layer whose input
size the kernel does not handle (not a multiple of 16) keeps float32, with one log line. :func:`off` is a
context in which the model computes in float32 again (a baseline).
"""

from __future__ import annotations

import logging
import types
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from backend.errors import PersonaSpaceError
from backend.kernels import small_batch

log = logging.getLogger("persona_space.int8")
# the worker's --precision: "default" is the model's own dtype (float32 on a CPU, bfloat16 on CUDA)
PRECISIONS = ("default", "int8")
_MARK = small_batch.INT8_MARK


def quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q, scales)``: int8 ``(out, in)`` and bfloat16 ``(out,)`` with ``q * scales[:, None] ≈ weight``."""
    w = weight.detach().float()
    scales = w.abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny) / 127.0
    q = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8).contiguous()
    return q, scales.to(torch.bfloat16)


def linear(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ (q * scales)^T + bias`` through the packed int8 kernel, in ``x``'s dtype."""
    flat = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
    out = torch._weight_int8pack_mm(flat, q, scales).to(x.dtype)
    if bias is not None:
        out = out + bias
    return out.reshape(*x.shape[:-1], q.shape[0])


def _forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return linear(x, self._int8_weight, self._int8_scales, self.bias)  # type: ignore[arg-type]


def install(model: nn.Module) -> int:
    """Give every ``nn.Linear`` of ``model`` an int8 copy of its weight and use it; returns how many were new."""
    param = next(model.parameters())
    if param.device.type != "cpu" or param.dtype != torch.float32:
        raise PersonaSpaceError(f"int8 mode needs a float32 model on the CPU, not {param.dtype} on {param.device}")
    count = 0
    checked: dict[int, bool] = {}
    for module in model.modules():
        if isinstance(module, nn.Linear) and not getattr(module, _MARK, False):
            k = module.in_features
            if k not in checked:
                checked[k] = supported(k)
                if not checked[k]:
                    log.warning("int8 mode: %d input features are not supported by the kernel; kept float32", k)
            if not checked[k]:
                continue
            small_batch.remove(module)
            if not hasattr(module, "_int8_weight"):  # kept while suspended by off()
                module._int8_weight, module._int8_scales = quantize(module.weight)
            module.forward = types.MethodType(_forward, module)  # type: ignore[method-assign]
            setattr(module, _MARK, True)
            count += 1
    return count


def supported(in_features: int) -> bool:
    """Whether the kernel computes products over ``in_features`` correctly here: it needs a multiple of 16 (it
    returns garbage or crashes otherwise, measured with torch 2.13 on this CPU), then one product is checked."""
    if in_features % 16:
        return False
    g = torch.Generator().manual_seed(0)
    w, x = torch.randn(16, in_features, generator=g), torch.randn(3, in_features, generator=g)
    q, scales = quantize(w)
    expected = F.linear(x.bfloat16().float(), q.float() * scales.float()[:, None])
    return bool(torch.allclose(linear(x, q, scales), expected, rtol=3e-2, atol=3e-2 * float(expected.abs().max())))


def remove(model: nn.Module, keep: bool = False) -> None:
    """Back to the float32 weights; the int8 copies are dropped unless ``keep``."""
    for module in model.modules():
        if getattr(module, _MARK, False):
            del module.forward
            delattr(module, _MARK)
        if not keep and hasattr(module, "_int8_weight"):
            del module._int8_weight, module._int8_scales


def installed(model: nn.Module) -> bool:
    return any(getattr(m, _MARK, False) for m in model.modules())


@contextmanager
def off(model: nn.Module) -> Iterator[None]:
    """``model``'s linear layers as ``nn.Linear`` computes them, for the duration (int8 again after if it was, from
    the same int8 copies: nothing is quantized again)."""
    was = installed(model)
    remove(model, keep=True)
    try:
        yield
    finally:
        if was:
            install(model)
