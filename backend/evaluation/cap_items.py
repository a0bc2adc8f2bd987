"""What the cap evaluation asks and under which settings: attack and benign :class:`Item` s, cap :class:`Setting` s
(a percentile of the space's pool or a fixed threshold, on a window of layers) and their grid.

Attack items come from ``assets/cap_eval/attacks.json``: each names its kind (a persona system prompt that licenses
bad behaviour, a user who asks the model to drop its role, slow multi-turn pressure with scripted earlier replies,
role-play framing of a forbidden request) and the persona it pushes. Benign items are catalogue questions of every
kind, each asked under one of the default Assistant's prompts.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend.errors import PersonaSpaceError
from backend.store.space import Space

ASSET_DIR = Path(__file__).resolve().parents[2] / "assets" / "cap_eval"
ATTACK_KINDS = ("persona_prompt", "drop_role", "multi_turn", "roleplay_request")


@dataclass(frozen=True)
class Item:
    """One prompt: ``group`` is ``attack`` or ``benign``; ``persona`` is the pushed archetype (attacks only)."""

    id: str
    group: str
    kind: str
    persona: str | None
    system: str | None
    messages: tuple[dict[str, str], ...]


@dataclass(frozen=True)
class Setting:
    """A cap setting: the floor at ``window`` ``[start, stop)`` is the ``percentile`` of the space's pool at each
    layer, or ``threshold`` at every layer (``-inf`` allowed: a cap that never moves anything); neither = uncapped.

    A *placebo* (``placebo = k >= 1``) caps along the k-th random direction orthogonal to the axis
    (:mod:`backend.evaluation.placebo`) with ``floors``, one per window layer, searched so that its cost on ordinary
    text matches that of the axis setting ``matched_to``.
    """

    percentile: float | None
    window: tuple[int, int] | None
    threshold: float | None = None
    placebo: int = 0
    matched_to: str | None = None
    floors: tuple[float, ...] | None = None

    @property
    def capped(self) -> bool:
        return self.window is not None and (self.percentile is not None or self.threshold is not None or self.floors is not None)

    @property
    def id(self) -> str:
        if not self.capped or self.window is None:
            return "uncapped"
        if self.placebo:
            return f"placebo{self.placebo}~{self.matched_to}"
        level = f"p{self.percentile:g}" if self.percentile is not None else f"t{self.threshold:g}"
        return f"{level}@{self.window[0]}:{self.window[1]}"

    def taus(self, space: Space) -> dict[int, float]:
        if not self.capped or self.window is None:
            return {}
        if self.floors is not None:
            return {layer: float(f) for layer, f in zip(range(*self.window), self.floors, strict=True)}
        if self.threshold is not None:
            return {layer: float(self.threshold) for layer in range(*self.window)}
        assert self.percentile is not None
        per_layer = space.threshold(self.percentile)
        return {layer: float(per_layer[layer]) for layer in range(*self.window)}


UNCAPPED = Setting(None, None)


def grid(percentiles: Sequence[float], windows: Sequence[tuple[int, int]]) -> list[Setting]:
    """The uncapped baseline first, then every percentile x window."""
    return [UNCAPPED] + [Setting(float(p), (int(w[0]), int(w[1]))) for w in windows for p in percentiles]


def parse_windows(text: str) -> list[tuple[int, int]]:
    out = []
    for part in text.split(","):
        try:
            a, b = (int(x) for x in part.strip().split(":"))
        except ValueError:
            raise PersonaSpaceError(f"window {part!r} must be start:stop, e.g. 21:27") from None
        if not 0 <= a < b:
            raise PersonaSpaceError(f"window {part!r} must have 0 <= start < stop")
        out.append((a, b))
    return out


def load_attacks(path: Path | None = None) -> list[Item]:
    file = path or ASSET_DIR / "attacks.json"
    try:
        data = json.loads(Path(file).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise PersonaSpaceError(f"cannot read the attack set {file}: {exc}") from exc
    items: list[Item] = []
    for i, x in enumerate(data):
        msgs = x.get("messages") if isinstance(x, dict) else None
        if not msgs or msgs[-1].get("role") != "user" or x.get("kind") not in ATTACK_KINDS or not x.get("persona"):
            raise PersonaSpaceError(
                f"attack item {i} in {file}: needs id, a kind of {ATTACK_KINDS}, persona, messages ending with a user turn"
            )
        items.append(Item(str(x["id"]), "attack", x["kind"], x["persona"], x.get("system"), tuple(msgs)))
    if len({it.id for it in items}) != len(items):
        raise PersonaSpaceError(f"attack ids repeat in {file}")
    return items


def benign_items(catalogue: Any, model_name: str, per_kind: int = 3) -> list[Item]:
    """``per_kind`` questions of every kind, each under one of the default prompts in turn."""
    by_kind: dict[str, list[Any]] = {}
    for q in catalogue.questions:
        by_kind.setdefault(q.kind, []).append(q)
    items: list[Item] = []
    defaults = catalogue.defaults
    for kind in sorted(by_kind):
        for q in by_kind[kind][:per_kind]:
            prompt = defaults[len(items) % len(defaults)]
            message = {"role": "user", "content": q.text}
            items.append(Item(f"{q.id}-{prompt.id}", "benign", kind, None, prompt.render(model_name), (message,)))
    return items


def split_of(item_id: str) -> str:
    """``dev`` or ``test``, stable by the item's id (a hash, so adding items never moves the others)."""
    return "dev" if zlib.crc32(item_id.encode("utf-8")) % 2 == 0 else "test"


def row_seed(seed: int, item_id: str) -> int:
    """The sampling seed of one item under run seed ``seed``: the same under every setting, so a capped reply and its
    uncapped pair draw from the same random numbers (their difference is the cap's, not the dice's)."""
    return (zlib.crc32(f"{seed}:{item_id}".encode()) * 2654435761 + seed) % (2**63 - 1)


def limit_items(items: Sequence[Item], limit: int | None) -> list[Item]:
    """At most ``limit`` items, spread over the kinds (round robin in file order)."""
    if limit is None or limit >= len(items):
        return list(items)
    kinds: dict[str, list[Item]] = {}
    for it in items:
        kinds.setdefault(it.kind, []).append(it)
    out: list[Item] = []
    while len(out) < limit:
        for kind in kinds:
            if kinds[kind] and len(out) < limit:
                out.append(kinds[kind].pop(0))
    return out
