"""Readers of the residual stream: masked per-layer means (:class:`Capture`) and per-position projections
(:class:`Monitor`). They never edit; attached after the edits at a layer, they see what the next layer receives."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from backend.errors import InterventionError
from backend.maths.axis import unit
from backend.models.layers import block_output, validate_layers


def _as_direction(layer: int, vector: torch.Tensor, hidden: int | None) -> torch.Tensor:
    if not isinstance(vector, torch.Tensor) or vector.dim() != 1:
        shape = tuple(vector.shape) if isinstance(vector, torch.Tensor) else type(vector).__name__
        raise InterventionError(f"layer {layer}: direction must be a 1-D tensor (hidden,), got {shape}")
    if hidden is not None and vector.shape[0] != hidden:
        raise InterventionError(f"layer {layer}: vector length {vector.shape[0]} does not match hidden size {hidden}")
    if not bool(torch.isfinite(vector).all()):
        raise InterventionError(f"layer {layer}: direction contains NaN or inf")
    return vector.detach()


MaskSource = torch.Tensor | Callable[[int, int], torch.Tensor]


class Capture:
    """Per-layer mean of decoder-block outputs over a token mask, without keeping every hidden state.

    Args:
        layers: which layers to capture (default: all).
        mask: ``(batch, positions)`` bool/0-1 tensor of the positions to average (e.g. only a response's content
            tokens), or a callable ``(start, n) -> (batch, n)`` for positions fed in a forward call, or ``None``
            for every position. Rows with no selected position give a zero mean and a count of 0.

    After forward passes, :meth:`mean` is ``(batch, len(layers), hidden)`` and :attr:`count` ``(batch,)``.
    """

    order = 2

    def __init__(self, layers: Sequence[int] | None = None, mask: MaskSource | None = None) -> None:
        self.layers_requested = None if layers is None else tuple(layers)
        self.mask = mask
        self.reset()

    def reset(self) -> None:
        self._sums: dict[int, torch.Tensor] = {}
        self._counts: dict[int, torch.Tensor] = {}
        self._offsets: dict[int, int] = {}
        self.layers: tuple[int, ...] = ()

    def _positions_mask(self, start: int, n: int, batch: int, device: torch.device) -> torch.Tensor | None:
        if self.mask is None:
            return None
        if callable(self.mask) and not isinstance(self.mask, torch.Tensor):
            m = self.mask(start, n)
        else:
            if start + n > self.mask.shape[-1]:
                raise InterventionError(
                    f"capture mask covers {self.mask.shape[-1]} positions but the model was fed positions "
                    f"{start}..{start + n - 1}"
                )
            m = self.mask[..., start : start + n]
        if m.dim() == 1:
            m = m.unsqueeze(0)
        if m.shape != (batch, n) and m.shape != (1, n):
            raise InterventionError(f"capture mask slice has shape {tuple(m.shape)}, expected ({batch}, {n})")
        return m.to(device=device, dtype=torch.float64).expand(batch, n)

    def hooks(self, n_layers: int) -> list[tuple[int, Callable[..., object]]]:
        chosen = (
            tuple(range(n_layers))
            if self.layers_requested is None
            else validate_layers(self.layers_requested, n_layers, "capture layer")
        )
        if self.layers_requested is not None and len(chosen) != len(self.layers_requested):
            raise InterventionError(f"capture layers repeat: {list(self.layers_requested)}")
        self.layers = tuple(self.layers_requested) if self.layers_requested is not None else chosen
        return [(layer, self._make_hook(layer)) for layer in self.layers]

    def _make_hook(self, layer: int) -> Callable[..., object]:
        def hook(module: nn.Module, args: object, output: object) -> None:
            hidden = block_output(output)
            batch, n = hidden.shape[0], hidden.shape[1]
            start = self._offsets.get(layer, 0)
            self._offsets[layer] = start + n
            m = self._positions_mask(start, n, batch, hidden.device)
            h = hidden.detach().double()
            if m is None:
                total, count = h.sum(dim=1), torch.full((batch,), float(n), dtype=torch.float64, device=h.device)
            else:
                total, count = (h * m.unsqueeze(-1)).sum(dim=1), m.sum(dim=1)
            if layer in self._sums:
                self._sums[layer] += total
                self._counts[layer] += count
            else:
                self._sums[layer], self._counts[layer] = total, count

        return hook

    @property
    def count(self) -> torch.Tensor:
        if not self._counts:
            raise InterventionError("nothing was captured: run a forward pass inside the capture first")
        return self._counts[self.layers[0]].cpu()

    def sums(self) -> torch.Tensor:
        """``(batch, len(layers), hidden)`` float64 sums over the selected positions."""
        if not self._sums:
            raise InterventionError("nothing was captured: run a forward pass inside the capture first")
        return torch.stack([self._sums[layer] for layer in self.layers], dim=1).cpu()

    def mean(self) -> torch.Tensor:
        """``(batch, len(layers), hidden)`` float32 means (zero where a row had no selected position)."""
        counts = self.count.clamp_min(1.0)
        return (self.sums() / counts[:, None, None]).float()


class Monitor:
    """Per-position projection of the block output at ``layer`` on ``direction`` (after any edit there).

    ``readings()`` is ``(batch, positions)`` on the CPU; ``callback(start, values)`` (values ``(batch, n)``, on the
    model's device) runs in the forward pass as each call happens, so a generator can stream it token by token.
    """

    order = 3

    def __init__(self, direction: torch.Tensor, layer: int, callback: Callable[[int, torch.Tensor], None] | None = None) -> None:
        self.layer = layer
        self.direction = unit(_as_direction(layer, direction, None).float())
        self._cast: torch.Tensor | None = None  # the direction on the model's device and dtype
        self.callback = callback
        self.reset()

    def reset(self) -> None:
        self._chunks: list[torch.Tensor] = []
        self._offset = 0

    def hooks(self, n_layers: int) -> list[tuple[int, Callable[..., object]]]:
        validate_layers([self.layer], n_layers, "monitor layer")

        def hook(module: nn.Module, args: object, output: object) -> None:
            hidden = block_output(output)
            if hidden.shape[-1] != self.direction.shape[0]:
                raise InterventionError(
                    f"monitor direction length {self.direction.shape[0]} does not match hidden size {hidden.shape[-1]}"
                )
            d = self._cast
            if d is None or d.device != hidden.device:
                d = self._cast = self.direction.to(device=hidden.device)
            values = hidden.detach().float() @ d  # float32 even for bf16 models; stays on the device
            start = self._offset
            self._offset += values.shape[-1]
            self._chunks.append(values)
            if self.callback is not None:
                self.callback(start, values)

        return [(self.layer, hook)]

    def readings(self) -> torch.Tensor:
        if not self._chunks:
            return torch.zeros(0, 0)
        return torch.cat(self._chunks, dim=-1).float().cpu()
