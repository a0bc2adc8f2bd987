"""The cap evaluation's statistics, each against an oracle: bootstrap coverage, the verdict from planted intervals,
the degeneration measures, the placebo directions, and a cap along one direction per row."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from backend.evaluation.degeneration import distinct2, repetition
from backend.evaluation.placebo import START, Search, placebo_directions
from backend.evaluation.verdict import choose, tri, verdict
from backend.maths.bootstrap import Estimate, clustered_mean_ci, mean_ci, paired, per_unit
from backend.maths.edits import cap_floor


def test_bootstrap_interval_covers_the_true_mean_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(1)
    trials, hits = 300, 0
    for _ in range(trials):
        x = rng.exponential(2.0, size=40)  # skewed: the true mean is 2
        e = mean_ci(x, resamples=999, seed=int(rng.integers(1 << 30)))
        assert e.lo is not None and e.hi is not None and e.lo <= e.mean <= e.hi
        hits += e.lo <= 2.0 <= e.hi
    assert 0.89 <= hits / trials <= 0.99  # nominal 0.95; the binomial sd over 300 trials is about 0.013


def test_a_paired_shift_of_exactly_zero_gives_an_interval_at_zero_and_reports_are_reproducible() -> None:
    a = {(f"i{i}", s): float(i % 5) for i in range(30) for s in (0, 1)}
    zero = clustered_mean_ci(paired(a, dict(a)))
    assert (zero.mean, zero.lo, zero.hi, zero.n) == (0.0, 0.0, 0.0, 30)
    noisy = {k: v + (0.3 if k[1] else -0.3) for k, v in a.items()}  # seeds cancel within each item
    around = clustered_mean_ci(paired(noisy, a))
    assert around.mean == pytest.approx(0.0) and tri(around) is None
    x = np.random.default_rng(3).normal(size=25)
    assert mean_ci(x) == mean_ci(x)  # the fixed bootstrap seed
    assert mean_ci([]) == Estimate(None, None, None, 0)
    assert mean_ci([math.nan, 1.0]).mean == 1.0  # non-finite values dropped


def test_seeds_are_averaged_within_an_item_before_items_are_resampled() -> None:
    values = {("a", 0): 1.0, ("a", 1): 3.0, ("b", 0): 10.0, ("b", 1): None}
    assert per_unit(values) == {"a": 2.0, "b": 10.0}
    assert clustered_mean_ci(values).n == 2 and clustered_mean_ci(values).mean == 6.0


def test_the_verdict_follows_the_intervals() -> None:
    rng = np.random.default_rng(0)
    planted = mean_ci(rng.normal(-1.0, 0.5, 40))  # an effect well below 0
    none = mean_ci(rng.normal(0.0, 0.5, 40))
    raised = mean_ci(rng.normal(1.0, 0.5, 40))
    assert tri(planted) is True and tri(raised) is False and tri(none) is None
    v = verdict("p75@2:4", "why", planted, none, ["placebo1~p75@2:4"], chosen_on="dev", reported_on="test", metric="m")
    assert v["cap_lowers_persona"] is True and v["axis_beats_placebo"] is None
    assert v["persona_shift_ci"] == planted.ci and v["setting"] == "p75@2:4"
    v = verdict("p75@2:4", "why", none, planted, [], chosen_on="all", reported_on="all", metric="m")
    assert v["cap_lowers_persona"] is None and v["axis_beats_placebo"] is True
    assert (
        verdict(None, "no capped setting", None, None, [], chosen_on="all", reported_on="all", metric="m")["cap_lowers_persona"]
        is None
    )


def test_the_setting_is_chosen_under_the_kl_bound_when_one_is() -> None:
    rows = [
        {"setting": "uncapped", "kl": 0.0, "persona_shift": 0.0},
        {"setting": "p25", "kl": 0.01, "persona_shift": -0.1, "percentile": 25.0},
        {"setting": "p75", "kl": 0.2, "persona_shift": -0.5, "percentile": 75.0},
        {"setting": "placebo1~p25", "kl": 0.01, "persona_shift": -0.9, "placebo": True},
    ]
    assert choose(rows, 0.05)[0] == "p25"
    setting, why = choose(rows, 0.001)
    assert setting == "p75" and "over the bound" in why


def test_degeneration_measures() -> None:
    assert repetition([1, 2, 3, 4, 5, 6]) == 0.0
    assert repetition([1, 2, 3, 4] * 3) == pytest.approx(5 / 9)  # 9 four-grams: 4 distinct, then 5 repeats
    assert repetition([1, 2, 3]) == 0.0
    assert distinct2([1, 2, 1, 2]) == pytest.approx(2 / 3)
    assert distinct2([7]) is None


def test_placebo_directions_are_unit_orthogonal_to_the_axis_and_seeded() -> None:
    axis = torch.randn(5, 64, generator=torch.Generator().manual_seed(2))
    d = placebo_directions(axis, 3, seed=0)
    assert d.shape == (3, 5, 64)
    assert torch.allclose(d.norm(dim=-1), torch.ones(3, 5), atol=1e-5)
    cos = (d * (axis / axis.norm(dim=-1, keepdim=True))[None]).sum(-1)
    assert float(cos.abs().max()) < 1e-5
    assert torch.equal(d, placebo_directions(axis, 3, seed=0))
    assert torch.equal(d[:2], placebo_directions(axis, 2, seed=0))  # direction i does not depend on K
    assert not torch.allclose(d, placebo_directions(axis, 3, seed=1))
    assert float((d[0] * d[1]).sum(-1).abs().max()) < 0.5  # distinct directions


def test_the_search_interpolates_in_log_kl_and_steps_out_when_the_target_lies_beyond() -> None:
    s = Search(target=None, placebo=1, kl=0.5)  # type: ignore[arg-type]
    first = s.levels()
    assert first == list(START)
    s.update(first, [0.001, 0.002, 0.004, 0.008])  # all too cheap: step up by twice the span
    (up,) = s.levels()
    assert up == pytest.approx(START[-1] + 2 * (START[-1] - START[0])) and not s.done
    s.update([up], [2.0])  # now bracketed by (3.5, 0.008) and (up, 2.0)
    (guess,) = s.levels()
    t = (math.log(0.5) - math.log(0.008)) / (math.log(2.0) - math.log(0.008))
    assert guess == pytest.approx(3.5 + t * (up - 3.5))
    s.update([guess], [0.52])
    assert s.done and s.best == (guess, 0.52) and s.rounds == 3
    costly = Search(target=None, placebo=1, kl=1e-4)  # type: ignore[arg-type]
    costly.update(list(START), [0.1, 0.2, 0.3, 0.4])
    assert costly.levels()[0] < START[0]


def test_a_cap_with_one_direction_per_row_equals_each_row_capped_alone() -> None:
    g = torch.Generator().manual_seed(4)
    hidden = torch.randn(3, 7, 16, generator=g)
    u = torch.nn.functional.normalize(torch.randn(3, 16, generator=g), dim=-1)
    tau = torch.tensor([0.5, -math.inf, 1.0])
    capped, delta, before = cap_floor(hidden, u, tau)
    for row in range(3):
        alone, d, b = cap_floor(hidden[row : row + 1], u[row], float(tau[row]))
        assert torch.allclose(capped[row], alone[0], atol=1e-6)
        assert torch.allclose(delta[row], d[0], atol=1e-6) and torch.allclose(before[row], b[0], atol=1e-6)
    assert torch.equal(capped[1], hidden[1])  # -inf: bit-identical
