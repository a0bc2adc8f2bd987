"""The placebo control: caps along random directions at the same cost as the axis cap.

If capping along the Assistant Axis lowers persona scores no more than capping along a random direction that costs
as much on ordinary text, the axis is not what works. For every capped axis setting, ``K`` placebo settings cap the
same window along directions drawn at random (seeded), made orthogonal to the axis at each layer and unit length.

A placebo's floor at window layer ``l`` is ``mean_l + s * sd_l``: the mean and standard deviation of the uncapped
model's projections on that direction, over every position of the benign items (prompt and the uncapped reply), and
one level ``s`` for the whole window. The level is searched so that the placebo's mean benign KL matches the axis
setting's within :data:`TOLERANCE` (10%). The mean KL grows with ``s``: the first round measures the levels of
:data:`START`; each later round measures one level per search, interpolated in log KL between the two measured levels
closest around the target (or stepping out when the target lies beyond them), until a level is within the tolerance
or after :data:`ROUNDS` rounds (the closest level kept, marked unmatched). A round is one teacher-forced pass per
benign item that every search shares as rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from backend.evaluation.cap_items import Item, Setting

START = (-1.0, 0.5, 2.0, 3.5)  # the first round's levels, in sds of the benign projections
TOLERANCE = 0.10
ROUNDS = 8


def placebo_directions(axis: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """``(k, n_layers, hidden)``: at every layer, ``k`` seeded Gaussian directions with the axis's component taken
    out, each of unit length. Direction ``i`` depends only on ``seed`` and ``i`` (not on ``k``)."""
    n_layers, hidden = int(axis.shape[0]), int(axis.shape[1])
    units = axis.double() / axis.double().norm(dim=-1, keepdim=True).clamp_min(1e-12)
    out = torch.empty(k, n_layers, hidden, dtype=torch.float64)
    for i in range(k):
        g = torch.Generator().manual_seed(seed * 7919 + i + 1)
        raw = torch.randn(n_layers, hidden, generator=g, dtype=torch.float64)
        raw = raw - (raw * units).sum(-1, keepdim=True) * units
        out[i] = raw / raw.norm(dim=-1, keepdim=True)
    return out.float()


@dataclass
class Search:
    """One placebo's search: direction ``placebo`` matched to the axis setting ``target`` with benign KL ``kl``.

    ``points`` holds every (level, mean KL) measured. The next level comes from the two measured levels closest around
    the target, interpolated linearly in log KL (the KL grows roughly exponentially with the floor); when every level
    so far is too cheap (too costly), the search steps up (down) by twice the span measured."""

    target: Setting
    placebo: int
    kl: float
    points: list[tuple[float, float]] = field(default_factory=list)

    def error(self, kl: float) -> float:
        return abs(kl / self.kl - 1.0) if self.kl > 0 else math.inf

    @property
    def best(self) -> tuple[float, float] | None:
        return min(self.points, key=lambda p: self.error(p[1])) if self.points else None

    @property
    def done(self) -> bool:
        best = self.best
        return best is not None and self.error(best[1]) <= TOLERANCE

    @property
    def rounds(self) -> int:
        return 0 if not self.points else 1 + len(self.points) - len(START)

    def levels(self) -> list[float]:
        if not self.points:
            return list(START)
        below = [p for p in self.points if p[1] < self.kl]
        above = [p for p in self.points if p[1] >= self.kl]
        span = max(p[0] for p in self.points) - min(p[0] for p in self.points) or 1.0
        if not above:
            return [max(p[0] for p in below) + 2 * span]
        if not below:
            return [min(p[0] for p in above) - 2 * span]
        (s1, k1), (s2, k2) = max(below), min(above)
        if k1 <= 0 or k2 <= k1:  # KL of exactly 0 below: bisect instead
            return [(s1 + s2) / 2]
        t = (math.log(self.kl) - math.log(k1)) / (math.log(k2) - math.log(k1))
        return [s1 + min(max(t, 0.05), 0.95) * (s2 - s1)]  # never exactly on a measured level

    def update(self, levels: Sequence[float], kls: Sequence[float]) -> None:
        self.points.extend(zip(levels, kls, strict=True))


def floors_at(level: float, mean: torch.Tensor, sd: torch.Tensor) -> tuple[float, ...]:
    return tuple(float(m + level * d) for m, d in zip(mean.tolist(), sd.tolist(), strict=True))


def match_placebos(
    axis_settings: Sequence[Setting],
    axis_kl: dict[str, float],
    k: int,
    stats: Callable[[int, tuple[int, int]], tuple[torch.Tensor, torch.Tensor]],
    mean_kl: Callable[[Sequence[Setting]], list[float]],
    *,
    rounds: int = ROUNDS,
    progress: Callable[[str], None] | None = None,
) -> tuple[list[Setting], list[dict[str, Any]]]:
    """Search every placebo's floors; returns the placebo settings and a record of each search.

    ``stats(placebo, window)`` gives the per-layer mean and sd of the benign projections on that placebo's
    direction; ``mean_kl(settings)`` the mean benign KL of each setting (one teacher-forced pass per benign item).
    """
    searches = [Search(s, i, axis_kl[s.id]) for s in axis_settings for i in range(1, k + 1)]
    moments = {}
    for search in searches:
        assert search.target.window is not None
        moments[(search.placebo, search.target.window)] = stats(search.placebo, search.target.window)

    def setting(search: Search, level: float) -> Setting:
        assert search.target.window is not None
        mean, sd = moments[(search.placebo, search.target.window)]
        return Setting(
            None, search.target.window, placebo=search.placebo, matched_to=search.target.id, floors=floors_at(level, mean, sd)
        )

    for _ in range(rounds):
        pending = [s for s in searches if not s.done and s.kl > 0]
        if not pending:
            break
        plans = [(s, s.levels()) for s in pending]
        kls = mean_kl([setting(s, level) for s, levels in plans for level in levels])
        at = 0
        for s, levels in plans:
            s.update(levels, kls[at : at + len(levels)])
            at += len(levels)
        if progress:
            progress(f"placebo search: {sum(s.done for s in searches)} of {len(searches)} matched")
    placebos, record = [], []
    for s in searches:
        level, kl = s.best if s.best is not None else (-math.inf, 0.0)
        placed = (
            setting(s, level)
            if math.isfinite(level)
            else replace(setting(s, 0.0), floors=tuple(-math.inf for _ in range(*s.target.window or (0, 0))))
        )
        placebos.append(placed)
        record.append(
            {
                "setting": placed.id, "placebo": s.placebo, "matched_to": s.target.id, "level": level,
                "floors": list(placed.floors or ()), "target_kl": s.kl, "search_kl": kl,
                "ratio": (kl / s.kl) if s.kl > 0 else None, "matched": bool(s.done or s.kl == 0), "rounds": s.rounds,
            }
        )  # fmt: skip
    return placebos, record


def benign_moments(
    project: Callable[[Item, Sequence[int]], dict[int, torch.Tensor]],
    benign: Sequence[Item],
    replies: dict[str, Sequence[int]],
    directions: torch.Tensor,
    window: tuple[int, int],
    placebo: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and sd per window layer of the uncapped benign activations' projections on ``directions[placebo - 1]``.

    ``project(item, reply)`` returns ``{layer: (positions, hidden)}`` uncapped activations of prompt + reply."""
    sums: dict[int, list[torch.Tensor]] = {layer: [] for layer in range(*window)}
    for item in benign:
        acts = project(item, replies[item.id])
        for layer in range(*window):
            sums[layer].append(acts[layer].double() @ directions[placebo - 1, layer].double())
    means, sds = [], []
    for layer in range(*window):
        values = torch.cat(sums[layer])
        means.append(float(values.mean()))
        sds.append(float(values.std()) if values.numel() > 1 else 1.0)
    return torch.tensor(means, dtype=torch.float64), torch.tensor(sds, dtype=torch.float64)
