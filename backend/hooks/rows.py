"""Per-row live interventions held as tensors: one batch, each row its own cap, steering and readouts.

:class:`RowControls` owns, for ``rows`` rows and the model's ``n_layers`` layers:

* ``tau`` ``(rows, n_layers)``: the cap floor of each row at each layer, ``-inf`` = off (that row moves by an exact
  zero, so it is bit-identical to an uncapped run);
* ``steer`` ``(rows, n_layers)``: the steering coefficient of each row at each layer, 0 = off (the layer window is
  folded in: layers outside it hold 0); with several sets of steering vectors (the axis, then each trait), ``steer_set``
  ``(rows,)`` says which set each row steers along;
* ``active`` ``(rows,)``: 1 where the row's reply is still being generated (the capture sums only those rows).

A control change overwrites these tensors in place (:meth:`RowControls.set_cap`, :meth:`RowControls.set_steer`);
the hooks read them at every forward step, so a change applies from the next token and a compiled step never has
to be retraced. Nothing in a hook branches on a row or reads a value back to the host: readouts go into
preallocated device buffers (``before``/``delta`` at every layer, ``monitor``, the capture sums) that the caller
copies once per step with :meth:`RowControls.readouts`. Readouts are of the last position of each forward call.

Order at each layer, as in :mod:`backend.hooks.interventions`: steering, then the cap, then the monitor and capture
(they see what the next layer receives). The math is in :mod:`backend.maths.axis`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from backend.errors import InterventionError
from backend.hooks.handle import Handle
from backend.maths.edits import cap_floor, steer
from backend.models.layers import block_output, find_decoder_layers, replace_block_output, validate_layers

_EPS = 1e-12


def _units(vectors: torch.Tensor) -> torch.Tensor:
    """Each row (last dimension) over its norm; an all-zero row stays zero (it is never used to cap)."""
    norm = vectors.norm(dim=-1, keepdim=True)
    return torch.where(norm > _EPS, vectors / norm.clamp_min(_EPS), torch.zeros_like(vectors))


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


@dataclass
class Readouts:
    """One step's readouts on the CPU, float32: ``before``/``delta`` ``(rows, n_layers)``, ``monitor`` ``(rows,)``."""

    before: torch.Tensor
    delta: torch.Tensor
    monitor: torch.Tensor | None


class RowControls:
    """Live per-row caps and steering plus per-step readouts, as tensors on the model's device.

    Args:
        rows: batch size.
        cap_directions: ``(n_layers, hidden)`` directions the cap uses at each layer (normalised here), or ``None``
            for no cap hooks; or ``(sets, n_layers, hidden)``: several sets of directions, each row capping along
            the set :meth:`set_cap` names (set 0 by default; the cap evaluation's placebo rows use the others).
        steer_vectors: ``(n_layers, hidden)`` steering vectors for coefficient 1, or ``None``; or ``(sets, n_layers,
            hidden)``: several sets, each row steering along the set :meth:`set_steer` names (set 0 by default; the
            worker's set 0 is the axis, the others its space's traits).
        monitor: ``(layer, direction)`` to read the projection on ``direction`` at ``layer``, or ``None``.
        capture_layer: a layer whose activations are summed over the rows' generated tokens (for placement).
        layers: the layers that get hooks (default: all); a cap or steering on another layer is refused.
        log: a :class:`CapLog` that receives what the cap did at every position of every forward call (the
            library's mode: one row that broadcasts over any batch); without it, the last position of each call
            goes into the per-row buffers that :meth:`readouts` copies.

    A layer whose cap direction is all zeros cannot be capped (:meth:`set_cap` refuses it); every other direction is
    normalised here.
    """

    def __init__(
        self,
        rows: int,
        n_layers: int,
        hidden: int,
        *,
        cap_directions: torch.Tensor | None = None,
        steer_vectors: torch.Tensor | None = None,
        monitor: tuple[int, torch.Tensor] | None = None,
        capture_layer: int | None = None,
        layers: Sequence[int] | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        log: CapLog | None = None,
    ) -> None:
        if rows < 1:
            raise InterventionError(f"need at least one row, got {rows}")
        self.rows, self.n_layers, self.hidden = rows, n_layers, hidden
        self.layers = tuple(range(n_layers)) if layers is None else validate_layers(layers, n_layers, "hooked layer")
        self.device, self.dtype = torch.device(device), dtype
        sets = None if cap_directions is None else (cap_directions if cap_directions.dim() == 3 else cap_directions[None])
        steer_sets = None if steer_vectors is None else (steer_vectors if steer_vectors.dim() == 3 else steer_vectors[None])
        for name, value in (("cap_directions", sets), ("steer_vectors", steer_sets)):
            if value is not None and (tuple(value.shape[-2:]) != (n_layers, hidden) or value.shape[0] < 1):
                raise InterventionError(f"{name} must be ({n_layers}, {hidden}), got {tuple(value.shape)}")
            if value is not None and not bool(torch.isfinite(value).all()):
                raise InterventionError(f"{name} contains NaN or inf")
        dev, f32 = self.device, torch.float32
        self.cap_sets_u = None if sets is None else _units(sets.float()).to(self.device)  # (sets, n_layers, hidden)
        self.cap_u = None if self.cap_sets_u is None else self.cap_sets_u[0]  # set 0: the directions most rows use
        self.n_cap_sets = 0 if sets is None else int(sets.shape[0])
        self.cap_set = torch.zeros(rows, device=dev, dtype=torch.long)  # which set each row caps along
        self.cap_set_of: list[int] = [0] * rows
        norms = None if sets is None else sets.float().norm(dim=-1)  # (sets, n_layers)
        self.cap_layers_of: list[frozenset[int]] = (
            [] if norms is None else [frozenset(i for i, n in enumerate(row.tolist()) if n > _EPS) for row in norms]
        )
        self.cap_layers = self.cap_layers_of[0] if self.cap_layers_of else frozenset()
        self.steer_sets_v = None if steer_sets is None else steer_sets.detach().float().to(self.device)
        self.steer_v = None if self.steer_sets_v is None else self.steer_sets_v[0]  # set 0 (a view: writes reach it)
        self.n_steer_sets = 0 if steer_sets is None else int(steer_sets.shape[0])
        self.steer_set = torch.zeros(rows, device=dev, dtype=torch.long)  # which set each row steers along
        self.steer_set_of: list[int] = [0] * rows
        self.tau = torch.full((rows, n_layers), -math.inf, device=dev, dtype=f32)
        self.steer = torch.zeros(rows, n_layers, device=dev, dtype=f32)
        self.active = torch.zeros(rows, device=dev, dtype=f32)
        self.before = torch.zeros(rows, n_layers, device=dev, dtype=f32)
        self.delta = torch.zeros(rows, n_layers, device=dev, dtype=f32)
        self.monitor_layer: int | None = None
        self.monitor_u: torch.Tensor | None = None
        self.monitor = torch.zeros(rows, device=dev, dtype=f32)
        if monitor is not None:
            layer, direction = monitor
            validate_layers([layer], n_layers, "monitor layer")
            if tuple(direction.shape) != (hidden,):
                raise InterventionError(f"monitor direction must be ({hidden},), got {tuple(direction.shape)}")
            if float(direction.float().norm()) <= _EPS:
                raise InterventionError("cannot normalise a zero-length monitor direction")
            self.monitor_layer, self.monitor_u = layer, _units(direction.float()).to(self.device)
        if capture_layer is not None:
            validate_layers([capture_layer], n_layers, "capture layer")
        self.capture_layer = capture_layer
        self.capture_sum = torch.zeros(rows, hidden, device=self.device, dtype=torch.float64)
        self.capture_count = torch.zeros(rows, device=self.device, dtype=torch.float64)
        # what the host set, so it never has to read the device to know which layers are on
        self.cap_taus: list[dict[int, float]] = [{} for _ in range(rows)]
        self.steer_on: list[dict[int, float]] = [{} for _ in range(rows)]
        self._hooks: dict[int, Callable[..., object]] = {}
        self.log = log
        self.version = 0  # counts control changes; a log records the version in force

    # controls (host side; in place) -------------------------------------------------------------------------
    def _row(self, row: int) -> int:
        if not 0 <= row < self.rows:
            raise InterventionError(f"row {row} is out of range 0..{self.rows - 1}")
        return row

    def set_cap(self, row: int, thresholds: Mapping[int, float] | None, direction_set: int = 0) -> None:
        """Floors of ``row`` per layer (``None`` or ``{}`` = cap off); layers not named are off. ``direction_set``
        picks which of the cap direction sets the row caps along (0 unless several were given)."""
        self._row(row)
        taus = dict(thresholds or {})
        if taus and self.cap_u is None:
            raise InterventionError("these row controls have no cap directions")
        if (
            isinstance(direction_set, bool)
            or not isinstance(direction_set, int)
            or not 0 <= direction_set < max(1, self.n_cap_sets)
        ):
            raise InterventionError(f"direction set {direction_set!r} is out of range 0..{max(1, self.n_cap_sets) - 1}")
        if direction_set and self.log is not None:
            raise InterventionError("the library's mode caps along one set of directions only")
        validate_layers(list(taus), self.n_layers, "cap layer")
        missing = set(taus) - set(self.layers)
        if missing:
            raise InterventionError(f"cap layers {sorted(missing)} have no hooks (hooked: {list(self.layers)})")
        usable = self.cap_layers if direction_set == 0 else self.cap_layers_of[direction_set]
        directionless = sorted(layer for layer in taus if layer not in usable)
        if directionless:
            raise InterventionError(f"cap layers {directionless} have no cap direction (it is zero there)")
        values = torch.full((self.n_layers,), -math.inf)
        for layer, tau in taus.items():
            if isinstance(tau, bool) or not isinstance(tau, (int, float)) or math.isnan(tau) or tau == math.inf:
                raise InterventionError(f"layer {layer}: cap threshold must be a finite number or -inf, got {tau!r}")
            values[layer] = float(tau)
        self.tau[row].copy_(values)
        self.cap_set[row] = direction_set
        self.cap_set_of[row] = direction_set
        self.cap_taus[row] = {k: float(v) for k, v in taus.items() if v != -math.inf}
        self.version += 1

    def set_steer(self, row: int, coefficient: float, layers: Sequence[int] = (), direction_set: int = 0) -> None:
        """Steering of ``row``: ``coefficient`` at ``layers`` (0 or no layers = off), along the steering vectors of
        ``direction_set`` (0 unless several sets were given)."""
        self._row(row)
        if (
            isinstance(direction_set, bool)
            or not isinstance(direction_set, int)
            or not 0 <= direction_set < max(1, self.n_steer_sets)
        ):
            raise InterventionError(f"steering set {direction_set!r} is out of range 0..{max(1, self.n_steer_sets) - 1}")
        if direction_set and self.log is not None:
            raise InterventionError("the library's mode steers along one set of vectors only")
        if isinstance(coefficient, bool) or not isinstance(coefficient, (int, float)) or not math.isfinite(coefficient):
            raise InterventionError(f"steering coefficient must be a finite number, got {coefficient!r}")
        chosen = validate_layers(list(layers), self.n_layers, "steering layer")
        if coefficient != 0 and chosen and self.steer_v is None:
            raise InterventionError("these row controls have no steering vectors")
        missing = set(chosen) - set(self.layers)
        if coefficient != 0 and missing:
            raise InterventionError(f"steering layers {sorted(missing)} have no hooks (hooked: {list(self.layers)})")
        values = torch.zeros(self.n_layers)
        if coefficient != 0:
            values[list(chosen)] = float(coefficient)
        self.steer[row].copy_(values)
        self.steer_set[row] = direction_set
        self.steer_set_of[row] = direction_set
        self.steer_on[row] = {layer: float(coefficient) for layer in chosen} if coefficient != 0 else {}
        self.version += 1

    def set_active(self, row: int, active: bool) -> None:
        self.active[self._row(row)] = 1.0 if active else 0.0

    def reset_readouts(self) -> None:
        for t in (self.before, self.delta, self.monitor, self.capture_sum, self.capture_count):
            t.zero_()

    # rows that join and leave (backend.decode.batch) ----------------------------------------------------------
    # every per-row tensor, with the value of a fresh row (cap off, no steering, inactive, nothing read yet)
    _ROW_TENSORS = (
        ("tau", -math.inf), ("steer", 0.0), ("active", 0.0), ("before", 0.0), ("delta", 0.0), ("monitor", 0.0),
        ("capture_sum", 0.0), ("capture_count", 0.0), ("cap_set", 0), ("steer_set", 0),
    )  # fmt: skip

    def regroup(self, order: Sequence[int | None]) -> None:
        """Re-lay the rows: new row ``j`` is old row ``order[j]`` (its controls, readouts and capture), or a fresh
        row where ``order[j]`` is ``None``. The hooks read the new tensors from the next forward call on (eager only: a
        compiled step's batch has a fixed number of rows)."""
        order = list(order)
        for k in order:
            if k is not None:
                self._row(k)
        kept = [j for j, k in enumerate(order) if k is not None]
        sources = torch.tensor([k for k in order if k is not None], dtype=torch.long, device=self.device)
        for name, fresh in self._ROW_TENSORS:
            old: torch.Tensor = getattr(self, name)
            with torch.inference_mode(old.is_inference()):  # the new tensors can be set where the old ones could
                new = torch.full((len(order), *old.shape[1:]), fresh, dtype=old.dtype, device=self.device)
                if kept:
                    new[torch.tensor(kept, device=self.device)] = old.index_select(0, sources)
            setattr(self, name, new)
        self.cap_set_of = [self.cap_set_of[k] if k is not None else 0 for k in order]
        self.steer_set_of = [self.steer_set_of[k] if k is not None else 0 for k in order]
        self.cap_taus = [dict(self.cap_taus[k]) if k is not None else {} for k in order]
        self.steer_on = [dict(self.steer_on[k]) if k is not None else {} for k in order]
        self.rows = len(order)
        self.version += 1

    def copy_row(self, row: int, other: RowControls, source: int) -> None:
        """Row ``row`` takes row ``source`` of ``other`` (row controls of the same shape): its controls, readouts and
        capture."""
        self._row(row)
        other._row(source)
        if (other.n_layers, other.hidden, other.n_cap_sets, other.n_steer_sets) != (
            self.n_layers, self.hidden, self.n_cap_sets, self.n_steer_sets
        ):  # fmt: skip
            raise InterventionError("row controls of another shape cannot share a row")
        for name, _ in self._ROW_TENSORS:
            getattr(self, name)[row].copy_(getattr(other, name)[source])
        self.cap_set_of[row] = other.cap_set_of[source]
        self.steer_set_of[row] = other.steer_set_of[source]
        self.cap_taus[row] = dict(other.cap_taus[source])
        self.steer_on[row] = dict(other.steer_on[source])
        self.version += 1

    def mirror(self, other: RowControls) -> None:
        """Rows ``0..other.rows-1`` take ``other``'s rows (controls, readouts, capture) and the rest become fresh
        rows, all written in place: the rows of a compiled step's fixed batch (its graph was traced through these
        tensors), set from the running batch's controls before each step."""
        n = other.rows
        if n > self.rows:
            raise InterventionError(f"{n} rows cannot be mirrored into row controls of {self.rows}")
        if (other.n_layers, other.hidden, other.n_cap_sets, other.n_steer_sets) != (
            self.n_layers, self.hidden, self.n_cap_sets, self.n_steer_sets
        ):  # fmt: skip
            raise InterventionError("row controls of another shape cannot share a row")
        for name, fresh in self._ROW_TENSORS:
            mine = getattr(self, name)
            mine[:n].copy_(getattr(other, name))
            mine[n:].fill_(fresh)
        self.cap_set_of = [*other.cap_set_of, *[0] * (self.rows - n)]
        self.steer_set_of = [*other.steer_set_of, *[0] * (self.rows - n)]
        self.cap_taus = [*(dict(t) for t in other.cap_taus), *({} for _ in range(self.rows - n))]
        self.steer_on = [*(dict(t) for t in other.steer_on), *({} for _ in range(self.rows - n))]
        self.version += 1

    _READ_TENSORS = ("before", "delta", "monitor", "capture_sum", "capture_count")

    def take_readouts(self, mirror: RowControls) -> None:
        """This step's readouts and capture from the first :attr:`rows` rows of ``mirror`` (a compiled step's rows
        that :meth:`mirror` set from these controls)."""
        for name in self._READ_TENSORS:
            getattr(self, name).copy_(getattr(mirror, name)[: self.rows])

    # device side ----------------------------------------------------------------------------------------
    def _hook(self, layer: int) -> Callable[..., object]:
        cap = self.cap_u is not None
        per_row = self.n_cap_sets > 1
        steer_v = self.steer_v
        steer_per_row = self.n_steer_sets > 1
        monitor = self.monitor_layer == layer
        capture = self.capture_layer == layer

        def hook(module: nn.Module, args: object, output: object) -> object:
            hidden = block_output(output)
            if self.log is not None:  # the library's mode: one row, its values known on the host
                return replace_block_output(output, self._library_edit(layer, hidden))
            if steer_v is not None:
                hidden = steer(hidden, self.steer_vectors(layer, steer_per_row), self.steer[:, layer])
            if cap:
                hidden, delta, before = cap_floor(hidden, self.cap_units(layer, per_row), self.tau[:, layer])
                self.before[:, layer].copy_(before[:, -1])
                self.delta[:, layer].copy_(delta[:, -1])
            if monitor or capture:
                last = hidden[:, -1].float()
                if monitor:
                    assert self.monitor_u is not None
                    self.monitor.copy_(last @ self.monitor_u)
                if capture:
                    self.capture_sum.add_(last.double() * self.active.double()[:, None])
                    self.capture_count.add_(self.active.double())
            return replace_block_output(output, hidden)

        return hook

    def steer_vectors(self, layer: int, per_row: bool) -> torch.Tensor:
        """The steering vector at ``layer``: ``(hidden,)``, or ``(rows, 1, hidden)`` (each row's set) when several sets
        were given (``hidden + c * v`` then gives each row exactly what the one-set path gives it)."""
        assert self.steer_sets_v is not None and self.steer_v is not None
        if per_row:
            return self.steer_sets_v[:, layer].index_select(0, self.steer_set)[:, None, :]
        return self.steer_v[layer]

    def cap_units(self, layer: int, per_row: bool | None = None) -> torch.Tensor:
        """The unit cap direction at ``layer``: ``(hidden,)``, or ``(rows, hidden)`` (each row's set) when several
        sets were given."""
        assert self.cap_sets_u is not None and self.cap_u is not None
        if per_row if per_row is not None else self.n_cap_sets > 1:
            return self.cap_sets_u[:, layer].index_select(0, self.cap_set)
        return self.cap_u[layer]

    def _library_edit(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        """The library's mode: the one row's steering and floor at ``layer`` (host values, the same for every row of
        the batch), and what the cap did at every position into the log. A layer the row does not cap or steer now is
        left as it is (its positions are still counted, so later records line up)."""
        assert self.log is not None
        coefficient = self.steer_on[0].get(layer)
        if coefficient is not None and self.steer_v is not None:
            hidden = steer(hidden, self.steer_v[layer], coefficient)
        if self.cap_u is None:
            return hidden
        tau = self.cap_taus[0].get(layer)
        if tau is None:
            self.log.advance(layer, hidden.shape[1])
            return hidden
        hidden, delta, before = cap_floor(hidden, self.cap_u[layer], tau)
        self.log.record(layer, tau, self.version, before.detach(), delta.detach())
        return hidden

    def attach(self, model: nn.Module, layers_path: str | None = None) -> Handle:
        """Register the hooks on ``model``; ``.remove()`` on the result takes them all off."""
        blocks = find_decoder_layers(model, layers_path)
        if len(blocks) != self.n_layers:
            raise InterventionError(f"row controls are for {self.n_layers} layers, the model has {len(blocks)}")
        wanted = set(self.layers) if (self.cap_u is not None or self.steer_v is not None) else set()
        wanted |= {x for x in (self.monitor_layer, self.capture_layer) if x is not None}
        handle = Handle(model)
        try:
            for layer in sorted(wanted):
                # the same function objects at every attach: a compiled step traced through them stays valid
                if layer not in self._hooks:
                    self._hooks[layer] = self._hook(layer)
                handle.handles.append(blocks[layer].register_forward_hook(self._hooks[layer]))
        except BaseException:
            handle.remove()
            raise
        return handle

    def readouts(self) -> Readouts:
        """This step's readouts, copied to the CPU in one transfer."""
        parts = [self.before, self.delta, self.monitor[:, None]]
        flat = torch.cat(parts, dim=1).cpu()
        n = self.n_layers
        return Readouts(flat[:, :n], flat[:, n : 2 * n], flat[:, 2 * n] if self.monitor_u is not None else None)

    def capture_mean(self) -> torch.Tensor:
        """``(rows, hidden)`` float32 mean of the captured activations (zero for a row that captured nothing)."""
        return (self.capture_sum / self.capture_count.clamp_min(1.0)[:, None]).float().cpu()
