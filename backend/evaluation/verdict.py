"""The cap evaluation's verdict, computed from intervals (never written by hand).

* ``cap_lowers_persona``: the chosen axis setting's paired persona shift (capped minus uncapped, same item and seed)
  has a 95% interval below 0 -> ``true``; above 0 (the cap *raises* persona scores) -> ``false``; else ``null``.
* ``axis_beats_placebo``: the axis setting's persona score minus the mean of its matched placebos' (same item and
  seed) has an interval below 0 -> ``true``; above 0 (the random directions do better) -> ``false``; else ``null``.

The setting is chosen on the dev items when the items are split (the rule: among axis settings whose benign KL is
within the bound, the most negative mean dev shift; when none is within it, the most negative of all, flagged), and
the figures are read on the test items, so the choice does not flatter them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from backend.maths.bootstrap import Estimate


def tri(estimate: Estimate) -> bool | None:
    """``True`` when the interval lies below 0, ``False`` above 0, ``None`` when it holds 0 (or is empty)."""
    if estimate.below_zero():
        return True
    if estimate.above_zero():
        return False
    return None


def choose(rows: Sequence[dict[str, Any]], kl_bound: float) -> tuple[str | None, str]:
    """The axis setting the verdict refers to, from (dev) setting rows, and why."""
    axis = [r for r in rows if r["setting"] != "uncapped" and not r.get("placebo") and r.get("persona_shift") is not None]
    if not axis:
        return None, "no capped setting"
    cheap = [r for r in axis if r["kl"] <= kl_bound]
    pool = cheap or axis
    best = min(pool, key=lambda r: (r["persona_shift"], r["kl"], r.get("percentile") or 0.0))
    if cheap:
        return best["setting"], f"the most negative persona shift among settings with benign KL <= {kl_bound:g}"
    return best["setting"], f"no setting has benign KL <= {kl_bound:g}: the most negative persona shift of all (over the bound)"


def verdict(
    setting: str | None,
    why: str,
    shift: Estimate | None,
    placebo_difference: Estimate | None,
    placebos: Sequence[str],
    *,
    chosen_on: str,
    reported_on: str,
    metric: str,
) -> dict[str, Any]:
    lowers = tri(shift) if shift is not None else None
    beats = tri(placebo_difference) if placebo_difference is not None else None
    words = {True: "yes", False: "no (the opposite)", None: "undecided"}
    if setting is None:
        summary = "no capped setting was evaluated"
    else:
        summary = f"{setting}: the cap lowers persona scores: {words[lowers]}; "
        summary += f"more than a random direction at the same cost: {words[beats]}" if placebos else "no placebo was run"
    return {
        "setting": setting, "why_setting": why, "chosen_on": chosen_on, "reported_on": reported_on, "metric": metric,
        "cap_lowers_persona": lowers,
        "persona_shift": None if shift is None else shift.mean, "persona_shift_ci": None if shift is None else shift.ci,
        "axis_beats_placebo": beats,
        "placebo_difference": None if placebo_difference is None else placebo_difference.mean,
        "placebo_difference_ci": None if placebo_difference is None else placebo_difference.ci,
        "placebos": list(placebos), "n": None if shift is None else shift.n, "summary": summary,
    }  # fmt: skip
