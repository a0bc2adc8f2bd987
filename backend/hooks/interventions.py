"""The library's interventions on the residual stream, and hooks that can never leak.

Interventions are data (:class:`Cap`, :class:`Steer`: frozen records of layers, directions, thresholds or a
coefficient); readers (:class:`Capture`, :class:`Monitor`) accumulate what they see. :func:`attach` registers them
on a model and returns a :class:`InterventionHandle` whose ``remove()`` takes every hook off; :func:`intervene` does
the same as a context manager. Every hook goes into the handle's list the moment it is registered, so a failure
half-way through registration, or an exception inside the ``with`` block, still removes everything.

Caps and steering run on the same per-row controls the worker and the decode engine use
(:class:`backend.hooks.rows.RowControls`): one row that broadcasts over any batch, whose tensors
:meth:`InterventionHandle.set` overwrites in place, so a change made while the model runs (a cap slider) applies
from the next forward step (the next generated token); tokens already in the KV cache keep the values they were
computed with. What the cap did at every position goes into ``handle.cap_log``.

Order at each layer: steering, then capping, then readers. Readers therefore see the activation that the next layer
will receive. Several :class:`Steer` records add up; two caps on one layer are refused (a floor on two directions
is not one floor).

Positions: a reader counts the positions it has seen since it was created or ``reset()``; a forward call over
``s`` new tokens covers the next ``s`` positions (the prompt in the first call of a generation, then one token per
step). With a KV cache, the activation at the position of a generated token is computed in the step that feeds
that token back in.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from backend.errors import InterventionError
from backend.hooks.handle import Handle
from backend.hooks.readers import Capture, Monitor, _as_direction
from backend.hooks.rows import CapLog, RowControls
from backend.maths.axis import unit
from backend.models.layers import find_decoder_layers, validate_layers


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

    Build the vectors with :func:`backend.maths.edits.steering_vector` to put ``coefficient`` on the normalised scale.
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


Intervention = Cap | Steer | Capture | Monitor


class InterventionHandle(Handle):
    """Hooks registered by :func:`attach`: ``remove()`` takes them all off; ``set()`` changes caps and steering live.

    ``cap_log`` holds what the caps did at every position since the last ``cap_log.reset()``; ``controls`` is the
    :class:`~backend.hooks.rows.RowControls` underneath (``None`` when only readers were attached).
    """

    def __init__(self, model: nn.Module, cap_log: CapLog) -> None:
        super().__init__(model)
        self.cap_log = cap_log
        self.controls: RowControls | None = None
        self._version = 0

    def set(self, *records: Cap | Steer) -> None:
        """Replace every cap and every steering with ``records`` (none of a kind = that kind off), from the next step.

        Only layers hooked at :func:`attach` can be capped or steered: attach with the layers you will need (a cap
        at ``-inf`` is hooked and does nothing).
        """
        if self.controls is None:
            raise InterventionError("nothing to set: attach a Cap or a Steer first")
        caps, steers = _split(records)
        _load(self.controls, caps, steers, _hidden_size(self.model))
        self._version += 1
        self.controls.version = self._version  # the cap log records which set() each step ran under


def _split(items: Sequence[object]) -> tuple[list[Cap], list[Steer]]:
    caps = [x for x in items if isinstance(x, Cap)]
    steers = [x for x in items if isinstance(x, Steer)]
    other = [x for x in items if not isinstance(x, (Cap, Steer))]
    if other:
        raise InterventionError(f"set() takes Cap and Steer records, not {type(other[0]).__name__}")
    return caps, steers


def _load(controls: RowControls, caps: Sequence[Cap], steers: Sequence[Steer], hidden: int | None) -> None:
    """Write caps and steering into row 0 of ``controls`` (directions and vectors in place, then the floors)."""
    taus: dict[int, float] = {}
    directions = torch.zeros(controls.n_layers, controls.hidden)
    for cap in caps:
        validate_layers(cap.layers, controls.n_layers, "cap layer")
        for layer, vector in cap.directions.items():
            _as_direction(layer, vector, hidden)
            if layer in taus:
                raise InterventionError(f"two caps at layer {layer}: a floor on two directions is not one floor")
            directions[layer] = vector
            taus[layer] = cap.thresholds[layer]
    vectors = torch.zeros(controls.n_layers, controls.hidden)
    steered: set[int] = set()
    for record in steers:
        validate_layers(record.layers, controls.n_layers, "steering layer")
        for layer, vector in record.vectors.items():
            _as_direction(layer, vector, hidden)
            vectors[layer] += record.coefficient * vector.float()  # steering adds up
            steered.add(layer)
    # every check before the first write: a refused change leaves the controls as they were
    for kind, layers in (("cap", taus), ("steering", steered)):
        missing = sorted(set(layers) - set(controls.layers))
        if missing:
            raise InterventionError(f"{kind} layers {missing} have no hooks (hooked: {list(controls.layers)})")
    if taus and controls.cap_u is None:
        raise InterventionError("these controls were attached without a cap")
    if steered and controls.steer_v is None:
        raise InterventionError("these controls were attached without steering")
    if taus:
        assert controls.cap_u is not None
        cap_u = controls.cap_u
        cap_u[list(taus)] = directions[list(taus)].to(cap_u.device) / directions[list(taus)].norm(dim=-1, keepdim=True).to(
            cap_u.device
        )
        controls.cap_layers = controls.cap_layers | frozenset(taus)
    if controls.steer_v is not None:
        controls.steer_v.copy_(vectors.to(controls.steer_v.device))
    controls.set_cap(0, taus)
    controls.set_steer(0, 1.0 if steered else 0.0, sorted(steered))


def attach(
    model: nn.Module,
    *items: Intervention,
    layers_path: str | None = None,
    cap_log: CapLog | None = None,
) -> InterventionHandle:
    """Register ``items`` on ``model`` and return an :class:`InterventionHandle` (``.remove()``, or a context manager).

    Pass ``cap_log`` to collect what caps did in a log of your own (with a callback); otherwise ``handle.cap_log``
    collects it.
    """
    layers = find_decoder_layers(model, layers_path)
    n_layers = len(layers)
    hidden = _hidden_size(model)
    handle = InterventionHandle(model, cap_log if cap_log is not None else CapLog())
    unknown = [x for x in items if not isinstance(x, (Cap, Steer, Capture, Monitor))]
    if unknown:
        raise InterventionError(f"cannot attach {type(unknown[0]).__name__}: expected Cap, Steer, Capture or Monitor")
    caps, steers = _split([x for x in items if isinstance(x, (Cap, Steer))])
    try:
        if caps or steers:
            width = hidden if hidden is not None else _first_length(caps, steers)
            for cap in caps:
                validate_layers(cap.layers, n_layers, "cap layer")
            for steering in steers:
                validate_layers(steering.layers, n_layers, "steering layer")
            records: list[Cap | Steer] = [*caps, *steers]
            hooked = sorted({layer for r in records for layer in r.layers})
            param = next(model.parameters(), None)
            controls = RowControls(
                1,
                n_layers,
                width,
                cap_directions=torch.zeros(n_layers, width) if caps else None,
                steer_vectors=torch.zeros(n_layers, width) if steers else None,
                layers=hooked,
                device=param.device if param is not None else "cpu",
                log=handle.cap_log,
            )
            _load(controls, caps, steers, hidden)
            controls.version = 0
            handle.controls = controls
            edits = controls.attach(model, layers_path)
            handle.handles.extend(edits.handles)  # the handle owns them from here on
            edits.handles.clear()
        for item in items:  # readers after the edits: they see what the next layer receives
            if isinstance(item, (Capture, Monitor)):
                for layer, fn in item.hooks(n_layers):
                    handle.handles.append(layers[layer].register_forward_hook(fn))
    except BaseException:
        handle.remove()
        raise
    return handle


def _first_length(caps: Sequence[Cap], steers: Sequence[Steer]) -> int:
    for vectors in [*(c.directions for c in caps), *(s.vectors for s in steers)]:
        for vector in vectors.values():
            return int(vector.shape[0])
    raise InterventionError("a cap or steering needs at least one layer")


@contextmanager
def intervene(
    model: nn.Module, *items: Intervention, layers_path: str | None = None, cap_log: CapLog | None = None
) -> Iterator[InterventionHandle]:
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
