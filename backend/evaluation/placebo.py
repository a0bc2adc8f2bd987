"""The placebo control: caps along random directions at the same cost as the axis cap.

If capping along the Assistant Axis lowers persona scores no more than capping along a random direction that costs
as much on ordinary text, the axis is not what works. For every capped axis setting, ``K`` placebo settings cap the
same window along directions drawn at random (seeded), made orthogonal to the axis at each layer and unit length.

A placebo's floor at window layer ``l`` is ``mean_l + s * sd_l``: the mean and standard deviation of the uncapped
model's projections on that direction, over every position of the benign items (prompt and the uncapped reply), and
one level ``s`` for the whole window. The level is searched so that the placebo's mean benign KL matches the axis
setting's within ``tolerance`` (10%): the mean KL grows with ``s``, so each round evaluates ``LEVELS`` levels spread
over the current bracket in one teacher-forced pass per benign item (all searches share the pass as rows), keeps
the two levels around the target as the next bracket (widening it when the target lies outside), and stops at the
first level within the tolerance, or after ``rounds`` rounds with the closest level found (marked unmatched).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from backend.evaluation.cap_items import Item, Setting

LEVELS = 8
TOLERANCE = 0.10
START = (-1.0, 6.0)


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
    """One placebo's search: direction ``placebo`` matched to the axis setting ``target`` with benign KL ``kl``."""

    target: Setting
    placebo: int
    kl: float
    lo: float = START[0]
    hi: float = START[1]
    best: tuple[float, float] | None = None  # (level, kl)
    rounds: int = 0

    def error(self, kl: float) -> float:
        return abs(kl / self.kl - 1.0) if self.kl > 0 else math.inf

    @property
    def done(self) -> bool:
        return self.best is not None and self.error(self.best[1]) <= TOLERANCE

    def levels(self) -> list[float]:
        return [self.lo + (self.hi - self.lo) * i / (LEVELS - 1) for i in range(LEVELS)]

    def update(self, levels: Sequence[float], kls: Sequence[float]) -> None:
        self.rounds += 1
        for s, kl in zip(levels, kls, strict=True):
            if self.best is None or self.error(kl) < self.error(self.best[1]):
                self.best = (s, kl)
        above = [i for i, kl in enumerate(kls) if kl >= self.kl]
        span = self.hi - self.lo
        if not above:  # every level too cheap: look higher
            self.lo, self.hi = levels[-1], levels[-1] + 2 * span
        elif above[0] == 0:  # every level too costly: look lower
            self.lo, self.hi = levels[0] - 2 * span, levels[0]
        else:
            self.lo, self.hi = levels[above[0] - 1], levels[above[0]]


def floors_at(level: float, mean: torch.Tensor, sd: torch.Tensor) -> tuple[float, ...]:
    return tuple(float(m + level * d) for m, d in zip(mean.tolist(), sd.tolist(), strict=True))


def match_placebos(
    axis_settings: Sequence[Setting],
    axis_kl: dict[str, float],
    k: int,
    stats: Callable[[int, tuple[int, int]], tuple[torch.Tensor, torch.Tensor]],
    mean_kl: Callable[[Sequence[Setting]], list[float]],
    *,
    rounds: int = 6,
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
