"""Hooks that read and edit the residual stream, and can never leak.

Interventions are data (:class:`Cap`, :class:`Steer`: frozen records of layers, directions, thresholds or a
coefficient); readers (:class:`Capture`, :class:`Monitor`) accumulate what they see. :func:`attach` registers them
on a model and returns a :class:`Handle` whose ``remove()`` takes every hook off; :func:`intervene` does the same as
a context manager. Every handle goes into the handle's list the moment it is registered, so a failure half-way
through registration, or an exception inside the ``with`` block, still removes everything.

Order at each layer: steering, then capping, then readers. Readers therefore see the activation that the next
layer will receive. A :class:`Live` box holds a record that may be swapped while the model runs (the cap slider):
hooks read it at every forward call, so a change applies from the next forward step (the next generated token);
tokens already in the KV cache keep the values they were computed with.

Positions: a reader counts the positions it has seen since it was created or ``reset()``; a forward call over
``s`` new tokens covers the next ``s`` positions (the prompt in the first call of ``generate``, then one token per
step). With a KV cache, the activation at the position of a generated token is computed in the step that feeds
that token back in.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from backend.axis import cap_floor_with_projection, steer, unit
from backend.errors import InterventionError
from backend.layers import block_output, find_decoder_layers, replace_block_output, validate_layers


def _as_direction(layer: int, vector: torch.Tensor, hidden: int | None) -> torch.Tensor:
    if not isinstance(vector, torch.Tensor) or vector.dim() != 1:
        shape = tuple(vector.shape) if isinstance(vector, torch.Tensor) else type(vector).__name__
        raise InterventionError(f"layer {layer}: direction must be a 1-D tensor (hidden,), got {shape}")
    if hidden is not None and vector.shape[0] != hidden:
        raise InterventionError(f"layer {layer}: vector length {vector.shape[0]} does not match hidden size {hidden}")
    if not bool(torch.isfinite(vector).all()):
        raise InterventionError(f"layer {layer}: direction contains NaN or inf")
    return vector.detach()


@dataclass(frozen=True)
class Cap:
    """A floor on the projection on a unit direction at each of a set of layers.

    ``h <- h + u * max(tau - h.u, 0)`` where ``u = directions[L]`` (normalised here) and ``tau = thresholds[L]``.
    ``tau = -inf`` disables the floor at that layer; NaN and ``+inf`` are rejected.
    """

    directions: Mapping[int, torch.Tensor]
    thresholds: Mapping[int, float]

    def __post_init__(self) -> None:
        if set(self.directions) != set(self.thresholds):
            raise InterventionError(
                f"cap layers differ: directions at {sorted(self.directions)}, thresholds at {sorted(self.thresholds)}"
            )
        units = {}
        for layer, vector in self.directions.items():
            units[layer] = unit(_as_direction(layer, vector, None).float())
        for layer, tau in self.thresholds.items():
            if isinstance(tau, bool) or not isinstance(tau, (int, float)) or math.isnan(tau) or tau == math.inf:
                raise InterventionError(f"layer {layer}: cap threshold must be a finite number or -inf, got {tau!r}")
        object.__setattr__(self, "directions", units)
        object.__setattr__(self, "thresholds", {k: float(v) for k, v in self.thresholds.items()})

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(sorted(self.directions))

    @classmethod
    def from_axis(cls, axis: torch.Tensor, layers: Sequence[int], thresholds: torch.Tensor | Sequence[float] | float) -> Cap:
        """A cap along ``axis`` (``(n_layers, hidden)``) at ``layers``; ``thresholds`` per model layer or one value."""
        if axis.dim() != 2:
            raise InterventionError(f"axis must be (n_layers, hidden), got shape {tuple(axis.shape)}")
        chosen = validate_layers(layers, axis.shape[0], "cap layer")
        if isinstance(thresholds, (int, float)):
            taus = {layer: float(thresholds) for layer in chosen}
        else:
            values = [float(t) for t in (thresholds.tolist() if isinstance(thresholds, torch.Tensor) else thresholds)]
            if len(values) != axis.shape[0]:
                raise InterventionError(f"got {len(values)} thresholds for an axis of {axis.shape[0]} layers")
            taus = {layer: values[layer] for layer in chosen}
        return cls(directions={layer: axis[layer] for layer in chosen}, thresholds=taus)


@dataclass(frozen=True)
class Steer:
    """Additive steering ``h <- h + coefficient * vectors[L]`` at each layer of ``vectors``.

    Build the vectors with :func:`backend.axis.steering_vector` to put ``coefficient`` on the normalised scale.
    """

    vectors: Mapping[int, torch.Tensor]
    coefficient: float

    def __post_init__(self) -> None:
        c = self.coefficient
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c):
            raise InterventionError(f"steering coefficient must be a finite number, got {c!r}")
        object.__setattr__(self, "vectors", {k: _as_direction(k, v, None) for k, v in self.vectors.items()})
        object.__setattr__(self, "coefficient", float(c))

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(sorted(self.vectors))


T = TypeVar("T", Cap, Steer)


class Live(Generic[T]):
    """A box holding a :class:`Cap` or :class:`Steer` (or ``None`` = off) that can be swapped while a model runs.

    Hooks read ``current`` at every forward call. ``version`` increases with every ``set``.
    """

    def __init__(self, value: T | None = None, kind: type[T] | None = None) -> None:
        if kind is None:
            if value is None:
                raise InterventionError("Live(None) needs its kind: Live(None, kind=Cap) or Live(None, kind=Steer)")
            kind = type(value)
        if kind not in (Cap, Steer):
            raise InterventionError(f"Live holds a Cap or a Steer, not {kind.__name__}")
        self.kind: type[T] = kind
        self._lock = threading.Lock()
        self._value: T | None = None
        self._version = 0
        self.set(value)
        self._version = 0

    def set(self, value: T | None) -> int:
        if value is not None and not isinstance(value, self.kind):
            raise InterventionError(f"this Live box holds a {self.kind.__name__}, got {type(value).__name__}")
        with self._lock:
            self._value = value
            self._version += 1
            return self._version

    def snapshot(self) -> tuple[T | None, int]:
        with self._lock:
            return self._value, self._version

    @property
    def current(self) -> T | None:
        return self._value


@dataclass
class CapStep:
    """What the cap did at one layer in one forward call: positions ``[start, start + n)``."""

    layer: int
    start: int
    tau: float
    version: int
    before: torch.Tensor  # (batch, n) projection before the cap (model's device and dtype)
    delta: torch.Tensor  # (batch, n) how far the cap moved each position along the axis (>= 0)


@dataclass
class CapLog:
    """Every :class:`CapStep` since the last ``reset()``; optional ``callback`` sees each as it happens."""

    callback: Callable[[CapStep], None] | None = None
    steps: list[CapStep] = field(default_factory=list)
    _offsets: dict[int, int] = field(default_factory=dict)

    def reset(self) -> None:
        self.steps.clear()
        self._offsets.clear()

    def advance(self, layer: int, n: int) -> int:
        """Count ``n`` positions fed through ``layer``; return the first one's index."""
        start = self._offsets.get(layer, 0)
        self._offsets[layer] = start + n
        return start

    def record(self, layer: int, tau: float, version: int, before: torch.Tensor, delta: torch.Tensor) -> None:
        start = self.advance(layer, before.shape[-1])
        # Kept on the model's device: copying to the CPU here would stall a GPU at every layer of every step.
        step = CapStep(layer, start, tau, version, before, delta)
        self.steps.append(step)
        if self.callback is not None:
            self.callback(step)

    def deltas(self, layer: int) -> torch.Tensor:
        """``(batch, positions)`` cap movement at ``layer`` over every position seen."""
        chunks = [s.delta for s in self.steps if s.layer == layer]
        if not chunks:
            raise InterventionError(f"the cap never ran at layer {layer}")
        return torch.cat(chunks, dim=-1).float().cpu()


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


Intervention = Cap | Steer | Live | Capture | Monitor


class Handle:
    """Hooks registered by :func:`attach`. ``remove()`` takes them all off (idempotent)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.handles: list[RemovableHandle] = []
        self.cap_log = CapLog()

    def remove(self) -> None:
        first: BaseException | None = None
        while self.handles:
            handle = self.handles.pop()
            try:
                handle.remove()
            except Exception as exc:  # keep removing the others; report the first failure after
                first = first or exc
        if first is not None:
            raise first

    def __enter__(self) -> Handle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def _edit_hook(handle: Handle, layer: int, source: Cap | Steer | Live) -> Callable[..., object]:
    def hook(module: nn.Module, args: object, output: object) -> object | None:
        if isinstance(source, Live):
            record, version = source.snapshot()
        else:
            record, version = source, 0
        if record is None or layer not in record.layers:
            if isinstance(source, Live) and source.kind is Cap:
                handle.cap_log.advance(layer, block_output(output).shape[1])
            return None
        hidden = block_output(output)
        if isinstance(record, Steer):
            vector = record.vectors[layer]
            if vector.shape[0] != hidden.shape[-1]:
                raise InterventionError(f"steering vector length {vector.shape[0]} does not match hidden size {hidden.shape[-1]}")
            return replace_block_output(output, steer(hidden, vector.to(hidden.device), record.coefficient))
        direction = record.directions[layer]
        if direction.shape[0] != hidden.shape[-1]:
            raise InterventionError(f"cap direction length {direction.shape[0]} does not match hidden size {hidden.shape[-1]}")
        tau = record.thresholds[layer]
        u = direction.to(device=hidden.device, dtype=hidden.dtype)
        capped, delta, before = cap_floor_with_projection(hidden, u, tau)
        handle.cap_log.record(layer, tau, version, before.detach(), delta.detach())
        if capped is hidden:  # tau = -inf: nothing to do
            return None
        return replace_block_output(output, capped)

    return hook


def _order(item: Intervention) -> int:
    if isinstance(item, Steer) or (isinstance(item, Live) and item.kind is Steer):
        return 0
    if isinstance(item, (Cap, Live)):
        return 1
    return item.order


def attach(
    model: nn.Module,
    *items: Intervention,
    layers_path: str | None = None,
    cap_log: CapLog | None = None,
) -> Handle:
    """Register ``items`` on ``model`` and return a :class:`Handle` (``.remove()`` or use as a context manager).

    A :class:`Live` box gets a hook on every layer, so a new record may name any layers. Pass ``cap_log`` to
    collect what caps did in a log of your own (with a callback); otherwise ``handle.cap_log`` collects it.
    """
    layers = find_decoder_layers(model, layers_path)
    n_layers = len(layers)
    hidden = _hidden_size(model)
    handle = Handle(model)
    if cap_log is not None:
        handle.cap_log = cap_log
    try:
        for item in sorted(items, key=_order):
            if isinstance(item, (Cap, Steer)):
                validate_layers(item.layers, n_layers, "cap layer" if isinstance(item, Cap) else "steering layer")
                vectors = item.directions if isinstance(item, Cap) else item.vectors
                for layer, vector in vectors.items():
                    _as_direction(layer, vector, hidden)
                for layer in item.layers:
                    handle.handles.append(layers[layer].register_forward_hook(_edit_hook(handle, layer, item)))
            elif isinstance(item, Live):
                for layer in range(n_layers):
                    handle.handles.append(layers[layer].register_forward_hook(_edit_hook(handle, layer, item)))
            elif isinstance(item, (Capture, Monitor)):
                for layer, fn in item.hooks(n_layers):
                    handle.handles.append(layers[layer].register_forward_hook(fn))
            else:
                raise InterventionError(f"cannot attach {type(item).__name__}: expected Cap, Steer, Live, Capture or Monitor")
    except BaseException:
        handle.remove()
        raise
    return handle


@contextmanager
def intervene(
    model: nn.Module, *items: Intervention, layers_path: str | None = None, cap_log: CapLog | None = None
) -> Iterator[Handle]:
    """Context manager form of :func:`attach`: every hook is removed on exit, even when the body raises."""
    handle = attach(model, *items, layers_path=layers_path, cap_log=cap_log)
    try:
        yield handle
    finally:
        handle.remove()


def _hidden_size(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    if config is None:
        return None
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in ("hidden_size", "n_embd", "d_model"):
        value = getattr(text_config, name, None)
        if isinstance(value, int):
            return value
    return None
