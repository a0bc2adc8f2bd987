"""A finished turn's traits as words, and the choices of the steering control's "steer along" select.

The worker's turn summary carries ``traits``: ``{"layer", "top": [{"name", "z", "projection"}, ...], "bottom": [...]}``
(the turn's mean activation on each trait vector, z-scored against the archetypes' spread; see docs/traits.md). Plain
data only: the page draws what these return.
"""

from __future__ import annotations

from typing import Any

AXIS = "Assistant Axis"  # the select's first choice: steer along the axis (steer_trait None)
MIN_Z = 0.5  # traits nearer the archetypes' mean than this are not worth a word


def _words(name: str) -> str:
    return name.replace("_", " ")


def trait_line(traits: dict[str, Any] | None, min_z: float = MIN_Z) -> str | None:
    """``"more dramatic, more enigmatic; less grounded"`` for a turn's ``traits``; None when nothing stands out."""
    if not traits:
        return None
    more = [f"more {_words(e['name'])}" for e in traits.get("top", []) if float(e["z"]) >= min_z]
    less = [f"less {_words(e['name'])}" for e in traits.get("bottom", []) if float(e["z"]) <= -min_z]
    parts = [", ".join(p) for p in (more, less) if p]
    return "; ".join(parts) or None


def trait_numbers(traits: dict[str, Any] | None) -> str | None:
    """The z scores behind :func:`trait_line`, one trait a line (for a tooltip)."""
    if not traits:
        return None
    entries = list(traits.get("top", [])) + list(traits.get("bottom", []))
    if not entries:
        return None
    lines = [f"{e['name']}: z {float(e['z']):+.2f} (projection {float(e['projection']):.3f})" for e in entries]
    head = f"z = standard deviations from the archetypes' mean along each trait vector, layer {traits.get('layer')}"
    return "\n\n".join([head, *lines])


def steer_options(summary: dict[str, Any]) -> list[str]:
    """The "steer along" choices: the axis, then every trait the space has a vector for (none: the axis only)."""
    return [AXIS, *(t["name"] for t in summary.get("trait_axes") or [])]


def to_widget(trait: str | None) -> str:
    return trait or AXIS


def to_control(choice: str | None) -> str | None:
    return None if choice in (None, AXIS) else choice
