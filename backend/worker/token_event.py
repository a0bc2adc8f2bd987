"""What a ``token`` event says: the token, its text, its projection on the axis and what the cap did at that step.

Built from one row of the step's :class:`backend.hooks.rows.Readouts` (copied from the device once per step).
"""

from __future__ import annotations

from typing import Any

from backend.hooks.rows import Readouts


def token_event(
    turn: int, index: int, token: int, piece: str, readouts: Readouts, row: int, taus: dict[int, float],
    monitor_layer: int, controls_version: int, variant: str,
) -> dict[str, Any]:  # fmt: skip
    """The data of a ``token`` event for batch row ``row``: ``piece`` is the text the token added (may be empty)."""
    assert readouts.monitor is not None
    return {
        "turn": turn, "index": index, "token_id": token, "text": piece,
        "projection": round(float(readouts.monitor[row]), 5), "monitor_layer": monitor_layer,
        "controls_version": controls_version, "variant": variant, **cap_event(taus, readouts, row),
    }  # fmt: skip


def cap_event(taus: dict[int, float], readouts: Readouts, row: int) -> dict[str, Any]:
    """The cap fields of a token event: floors, movement per capped layer, before/after at the first one."""
    if not taus:
        return {"cap_on": False, "tau": None, "cap_delta": 0.0, "cap_layers": None}
    layers = sorted(taus)
    deltas = [float(readouts.delta[row, layer]) for layer in layers]
    before = float(readouts.before[row, layers[0]])
    return {
        "cap_on": True,
        "cap_layers": [layers[0], layers[-1] + 1],
        "tau": [round(taus[layer], 5) for layer in layers],
        "cap_delta": round(max(deltas), 5),
        "cap_deltas": [round(d, 5) for d in deltas],
        "projection_before_cap": round(before, 5),
        "projection_after_cap": round(before + deltas[0], 5),
    }
