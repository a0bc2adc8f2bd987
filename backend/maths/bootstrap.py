"""Confidence intervals by the bootstrap, for the cap evaluation's figures (numpy and scipy; no torch).

Every figure of the evaluation is a mean over items: of a per-reply score, or of a paired difference (the same item
and seed under a setting minus uncapped). Seeds are replicates *within* an item, so an item's seeds are averaged
first and the items are resampled (a cluster bootstrap: items are the independent units, not replies). The interval
is scipy's BCa bootstrap with a fixed seed, so a report is reproducible; where BCa is undefined (too few distinct
values) the percentile interval is used, and a constant sample gets the degenerate interval at its value.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
RESAMPLES = 4000
BOOTSTRAP_SEED = 20260
ZERO = 1e-9  # differences smaller than this are rounding, not an effect


@dataclass(frozen=True)
class Estimate:
    """A mean with its bootstrap interval ``[lo, hi]`` over ``n`` units (``None`` everywhere when ``n == 0``)."""

    mean: float | None
    lo: float | None
    hi: float | None
    n: int

    @property
    def ci(self) -> list[float] | None:
        return None if self.lo is None or self.hi is None else [self.lo, self.hi]

    def below_zero(self) -> bool:
        """The whole interval below 0 (by more than rounding: sums of floats that cancel leave ~1e-17)."""
        return self.hi is not None and self.hi < -ZERO

    def above_zero(self) -> bool:
        return self.lo is not None and self.lo > ZERO


def mean_ci(
    values: Sequence[float] | np.ndarray,
    *,
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> Estimate:
    """The mean of ``values`` (non-finite ones dropped) and its ``confidence`` bootstrap interval."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if x.size == 0:
        return Estimate(None, None, None, 0)
    mean = float(x.mean())
    if x.size == 1 or float(x.max() - x.min()) <= 1e-12 * (1.0 + abs(mean)):
        return Estimate(mean, mean, mean, int(x.size))
    lo = hi = math.nan
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # BCa warns (and gives NaN) where it is undefined: the fallback handles it
            res = stats.bootstrap(
                (x,), np.mean, confidence_level=confidence, n_resamples=resamples, method=method,
                rng=np.random.default_rng(seed), vectorized=True,
            )  # fmt: skip
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if math.isfinite(lo) and math.isfinite(hi):
            break
    return Estimate(mean, lo, hi, int(x.size))


def per_unit(values: Mapping[tuple[str, int], float | None]) -> dict[str, float]:
    """``{(item, seed): value}`` -> ``{item: mean over its seeds}`` (non-finite values dropped; an item with none
    left is dropped)."""
    groups: dict[str, list[float]] = {}
    for (item, _seed), v in values.items():
        if v is not None and math.isfinite(v):
            groups.setdefault(item, []).append(float(v))
    return {item: float(np.mean(vs)) for item, vs in groups.items()}


def clustered_mean_ci(values: Mapping[tuple[str, int], float | None], **kw: float) -> Estimate:
    """:func:`mean_ci` over items of ``{(item, seed): value}``, each item's seeds averaged first."""
    return mean_ci(list(per_unit(values).values()), **kw)  # type: ignore[arg-type]


def paired(a: Mapping[tuple[str, int], float | None], b: Mapping[tuple[str, int], float | None]) -> dict[tuple[str, int], float]:
    """``a - b`` on the keys both hold with finite values (the same item and seed under two settings)."""
    out = {}
    for key, va in a.items():
        vb = b.get(key)
        if va is not None and vb is not None and math.isfinite(va) and math.isfinite(vb):
            out[key] = float(va) - float(vb)
    return out
