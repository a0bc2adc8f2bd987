"""The pure maths, row by row (the mutation pass's survivors, ``make mutation``): exact messages that show the values
seen, boundaries of each check, dtypes kept, and values against numpy or a hand computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from backend.errors import InterventionError
from backend.maths.axis import compute_axis, cosine_per_layer, percentile_thresholds, project, unit
from backend.maths.divergence import kl_per_position
from backend.maths.edits import cap_floor, steer, steering_vector
from backend.maths.pca import PCAResult, components_for_variance, fit_pca

# --- axis -------------------------------------------------------------------------------------------------------


def test_compute_axis_takes_a_mean_or_a_stack_and_says_what_it_saw() -> None:
    default = torch.tensor([[[1.0, 2.0]], [[3.0, 6.0]]])  # (2 answers, 1 layer, 2)
    roles = torch.tensor([[[0.0, 1.0]], [[2.0, 1.0]]])
    assert compute_axis(default, roles).tolist() == [[1.0, 3.0]]  # mean (2, 4) - mean (1, 1)
    assert compute_axis(default.mean(dim=0), roles).tolist() == [[1.0, 3.0]]  # the mean given directly
    two = torch.tensor([[1.0, 2.0], [3.0, 6.0]])  # (n_layers=2, hidden=2): a mean, not two answers
    assert compute_axis(two, torch.zeros(1, 2, 2)).tolist() == [[1.0, 2.0], [3.0, 6.0]]
    with pytest.raises(InterventionError) as e:
        compute_axis(default, roles[0])
    assert str(e.value) == "role_vectors must be (n_roles, n_layers, hidden), got shape (1, 2)"
    with pytest.raises(InterventionError) as e:
        compute_axis(default, torch.zeros(0, 1, 2))
    assert str(e.value) == "need at least one role vector to compute the axis, got 0"
    assert compute_axis(default, roles[:1]).tolist() == [[2.0, 3.0]]  # one role is enough
    assert compute_axis(default[:, :0], torch.zeros(1, 0, 2)).shape == (0, 2)  # zero layers: an empty axis
    with pytest.raises(InterventionError, match=r"default vectors are \(1, 2\) per answer but role vectors are \(1, 3\)"):
        compute_axis(default, torch.zeros(1, 1, 3))


def test_unit_refuses_a_zero_vector_at_the_threshold() -> None:
    assert unit(torch.tensor([3.0, 4.0])).tolist() == pytest.approx([0.6, 0.8])
    with pytest.raises(InterventionError) as e:
        unit(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    assert str(e.value) == "cannot normalise a zero-length direction (the axis is zero at some layer)"
    tiny = torch.tensor([1e-12], dtype=torch.float64)  # |v| == eps exactly: refused ("<= eps")
    with pytest.raises(InterventionError):
        unit(tiny)
    assert unit(torch.tensor([2e-12], dtype=torch.float64)).tolist() == [1.0]


def test_project_is_the_scalar_projection_in_the_activations_dtype() -> None:
    h = torch.tensor([[3.0, 4.0], [1.0, 0.0]], dtype=torch.float64)
    d = torch.tensor([0.0, 2.0], dtype=torch.float32)
    out = project(h, d)
    assert out.dtype == torch.float64 and out.tolist() == [4.0, 0.0]
    d3 = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float32)  # 1/sqrt(3) is not exact in float32: the dtype shows
    h3 = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)
    assert float(project(h3, d3)) == pytest.approx(math.sqrt(3.0), rel=1e-15, abs=0)
    with pytest.raises(InterventionError) as e:
        project(torch.zeros(2, 3, 5), torch.ones(4))
    assert str(e.value) == "vector length 4 does not match the activations' hidden size 5"


def test_cosine_per_layer_against_numpy() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    an, bn = a.double().numpy(), b.double().numpy()
    expected = [float(an[i] @ bn[i] / (np.linalg.norm(an[i]) * np.linalg.norm(bn[i]))) for i in range(3)]
    out = cosine_per_layer(a, b)
    assert out.dtype == torch.float32 and out.tolist() == pytest.approx(expected, abs=1e-6)
    with pytest.raises(InterventionError) as e:
        cosine_per_layer(a, b[:2])
    assert str(e.value) == "cannot compare shapes (3, 4) and (2, 4)"


def test_percentile_thresholds_against_numpy_and_their_checks() -> None:
    pool = torch.tensor([[0.0, 10.0], [1.0, 20.0], [2.0, 30.0], [3.0, 40.0], [4.0, 50.0]])
    out = percentile_thresholds(pool, [0, 75, 100])
    assert out[0.0].tolist() == [0.0, 10.0] and out[100.0].tolist() == [4.0, 50.0]
    assert out[75.0].tolist() == pytest.approx(np.percentile(pool.numpy(), 75, axis=0).tolist())
    assert out[75.0].dtype == torch.float32
    assert percentile_thresholds(pool[:1], [50])[50.0].tolist() == [0.0, 10.0]  # one answer is a pool
    for bad in (torch.zeros(0, 2), torch.zeros(5)):
        with pytest.raises(InterventionError) as e:
            percentile_thresholds(bad, [50])
        assert str(e.value) == f"projections must be (n_answers >= 1, n_layers), got {tuple(bad.shape)}"
    with pytest.raises(InterventionError) as e:
        percentile_thresholds(torch.tensor([[1.0, math.nan], [math.inf, 0.0], [2.0, 3.0]]), [50])
    assert str(e.value) == "projection pool has 2 non-finite value(s) (NaN or inf) out of 6"
    for p in (-0.5, 100.5, math.nan, "75", None):
        with pytest.raises(InterventionError) as e:
            percentile_thresholds(pool, [p])  # type: ignore[list-item]
        assert str(e.value) == f"percentile must be a number in [0, 100], got {p!r}"
    assert set(percentile_thresholds(pool, [0.5, 99.5])) == {0.5, 99.5}


# --- edits ------------------------------------------------------------------------------------------------------


def test_cap_floor_in_the_activations_dtype_with_one_direction_per_row() -> None:
    hidden = torch.tensor([[[1.0, 0.0], [0.0, 5.0]], [[2.0, 2.0], [0.0, -1.0]]], dtype=torch.float64)  # (2, 2, 2)
    u = torch.tensor([0.0, 1.0], dtype=torch.float32)
    capped, delta, before = cap_floor(hidden, u, 1.0)
    assert capped.dtype == torch.float64
    assert before.tolist() == [[0.0, 5.0], [2.0, -1.0]] and delta.tolist() == [[1.0, 0.0], [0.0, 2.0]]
    assert capped.tolist() == [[[1.0, 1.0], [0.0, 5.0]], [[2.0, 2.0], [0.0, 1.0]]]
    # one direction per row: row 0 caps along x, row 1 along y; a floor per row (row 1's -inf: off)
    per_row = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float32)
    capped, delta, before = cap_floor(hidden, per_row, torch.tensor([1.5, -math.inf]))
    assert before.tolist() == [[1.0, 0.0], [2.0, -1.0]]
    assert delta.tolist() == [[0.5, 1.5], [0.0, 0.0]]
    assert capped.tolist() == [[[1.5, 0.0], [1.5, 5.0]], [[2.0, 2.0], [0.0, -1.0]]]
    assert capped.dtype == torch.float64
    # one row of positions (rows=1): a per-row direction is still per row, not per position
    one = cap_floor(hidden[:1], per_row[:1], torch.tensor([1.5]))[0]
    assert one.tolist() == [[[1.5, 0.0], [1.5, 5.0]]]
    three = torch.zeros(3, 1, 3)
    dirs = torch.eye(3)
    c3, d3, b3 = cap_floor(three, dirs, torch.tensor([1.0, 2.0, 3.0]))
    assert (
        b3.shape == (3, 1)
        and d3.tolist() == [[1.0], [2.0], [3.0]]
        and c3[:, 0].tolist() == [[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0]]
    )
    low = torch.zeros(2, 1, 2, dtype=torch.bfloat16)  # a bfloat16 stream, float32 floors: stays bfloat16
    out, delta_low, _ = cap_floor(low, per_row, torch.tensor([0.5, 0.25], dtype=torch.float32))
    assert out.dtype == torch.bfloat16 and delta_low.dtype == torch.bfloat16
    assert out.float().tolist() == [[[0.5, 0.0]], [[0.0, 0.25]]]
    off, d_off, _ = cap_floor(hidden, u, -math.inf)
    assert off is hidden and d_off.tolist() == [[0.0, 0.0], [0.0, 0.0]]


def test_steering_in_the_activations_dtype_and_its_scale_check() -> None:
    h = torch.zeros(2, 1, 2, dtype=torch.bfloat16)
    v = torch.tensor([1.0, 0.5], dtype=torch.float32)
    assert steer(h, v, 2.0).dtype == torch.bfloat16 and steer(h, v, 2.0).float().tolist() == [[[2.0, 1.0]], [[2.0, 1.0]]]
    per_row = steer(h, v, torch.tensor([1.0, -2.0], dtype=torch.float64))
    assert per_row.dtype == torch.bfloat16 and per_row.float().tolist() == [[[1.0, 0.5]], [[-2.0, -1.0]]]
    assert steering_vector(torch.tensor([3.0, 4.0]), 10.0).tolist() == pytest.approx([6.0, 8.0])
    assert steering_vector(torch.tensor([3.0, 4.0]), 0.5).tolist() == pytest.approx([0.3, 0.4])
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(InterventionError) as e:
            steering_vector(torch.tensor([1.0, 0.0]), bad)
        assert str(e.value) == f"steering scale must be a positive finite number, got {bad}"


# --- PCA --------------------------------------------------------------------------------------------------------


def test_fit_pca_against_numpy_svd_with_deterministic_signs() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 4)) * np.array([5.0, 3.0, 1.0, 0.5]) + 7.0
    axis = -np.ones(4)
    fit = fit_pca(torch.from_numpy(x).float(), torch.from_numpy(axis), n_components=2)
    mean = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    assert fit.components.shape == (2, 4) and fit.mean == pytest.approx(mean, rel=1e-6)
    for i in range(2):
        assert abs(float(fit.components[i] @ vt[i])) == pytest.approx(1.0, abs=1e-5)
    assert float(fit.components[0] @ axis) >= 0  # PC1 agrees with the axis
    pivot = int(np.argmax(np.abs(fit.components[1])))
    assert fit.components[1, pivot] > 0  # the others: largest loading positive
    ratio = s**2 / (s**2).sum()
    assert fit.explained_variance_ratio == pytest.approx(ratio[:2], rel=1e-5)
    assert fit.coords == pytest.approx((x - fit.mean) @ fit.components.T, abs=1e-4)
    assert fit.transform(x[:2]) == pytest.approx(fit.coords[:2], abs=1e-4)
    assert fit.axis_cosine(axis) == pytest.approx(float(fit.components[0] @ axis) / (2.0 * np.linalg.norm(fit.components[0])))
    assert fit.axis_cosine(3 * axis) == pytest.approx(fit.axis_cosine(axis))
    full = fit_pca(x)
    assert full.components.shape == (4, 4)  # all components by default
    assert fit_pca(x, n_components=9).components.shape == (4, 4)  # at most min(n, d)
    for i in range(4):
        pivot = int(np.argmax(np.abs(full.components[i])))
        assert full.components[i, pivot] > 0
    assert fit_pca(x[:2]).components.shape == (2, 4)  # two vectors are enough
    single = fit_pca(x.astype(np.float32))  # computed in float64 whatever the input's precision
    assert single.mean.dtype == np.float64 and single.components.dtype == np.float64


def test_pca_sign_fixes_use_strict_comparisons() -> None:
    # PC1 = +-(1, 0): its largest loading is positive without an axis; an axis orthogonal to it (dot = 0) leaves it
    x = np.array([[2.0, 0.0], [-2.0, 0.0], [0.0, 0.5], [0.0, -0.5]])
    assert fit_pca(x).components[0] == pytest.approx([1.0, 0.0])
    assert fit_pca(x, axis=np.array([0.0, 1.0])).components[0] == pytest.approx([1.0, 0.0])
    assert fit_pca(x, axis=np.array([-1.0, 0.0])).components[0] == pytest.approx([-1.0, 0.0])
    small = np.array([[0.2, 0.0], [-0.2, 0.0], [0.0, 0.1], [0.0, -0.1]])  # loadings below 1 in magnitude, positive
    assert fit_pca(small, axis=np.array([0.5, 0.0])).components[0] == pytest.approx([1.0, 0.0])
    assert fit_pca(small).components[1] == pytest.approx([0.0, 1.0])


def test_pca_refuses_with_the_values_seen() -> None:
    with pytest.raises(InterventionError) as e:
        fit_pca(np.zeros((1, 3)))
    assert str(e.value) == "PCA needs an (n >= 2, d) matrix, got shape (1, 3)"
    with pytest.raises(InterventionError, match=r"got shape \(3,\)"):
        fit_pca(np.zeros(3))
    with pytest.raises(InterventionError) as e:
        fit_pca(np.array([[1.0, math.nan], [0.0, 1.0]]))
    assert str(e.value) == "PCA input contains NaN or inf"
    with pytest.raises(InterventionError) as e:
        fit_pca(np.eye(3), axis=np.ones(2))
    assert str(e.value) == "axis has shape (2,), expected (3,)"
    result = PCAResult(
        mean=np.zeros(2), components=np.eye(2), explained_variance_ratio=np.array([0.5, 0.5]), coords=np.zeros((0, 2))
    )
    assert result.transform([[1, 2]]).tolist() == [[1.0, 2.0]]


def test_components_for_variance_at_the_boundary() -> None:
    assert components_for_variance([0.5, 0.2, 0.2, 0.1], 0.7) == 2  # 0.5 + 0.2 reaches 0.7 exactly
    assert components_for_variance([0.5, 0.25, 0.25], 0.7) == 2
    assert components_for_variance([0.7, 0.3], 0.7) == 1
    assert components_for_variance([0.6, 0.4]) == 2
    assert components_for_variance(np.array([0.1] * 10), 1.0) == 10


# --- divergence -------------------------------------------------------------------------------------------------


def test_kl_refuses_logits_of_different_shapes() -> None:
    with pytest.raises(ValueError) as e:
        kl_per_position(torch.zeros(2, 5), torch.zeros(2, 4))
    assert str(e.value) == "logits differ in shape: (2, 5) vs (2, 4)"


# --- sampling ---------------------------------------------------------------------------------------------------


def test_the_repetition_penalty_bounds_and_its_strength() -> None:
    from backend.maths.sampling import choose_token, repetition_penalty

    logits = torch.tensor([4.0, -2.0, 1.0, 0.0])
    for penalty in (1.0, 2.0):
        repetition_penalty(logits, [0], penalty)  # both ends of [1, 2] are allowed
    for bad in (0.99, 2.01, 3.0):
        with pytest.raises(Exception, match=r"repetition_penalty must be in \[1, 2\]") as e:
            repetition_penalty(logits, [0], bad)
        assert str(e.value) == f"repetition_penalty must be in [1, 2], got {bad!r}"
    assert repetition_penalty(logits, [0, 1, 0], 2.0).tolist() == [2.0, -4.0, 1.0, 0.0]  # hand-computed
    assert repetition_penalty(logits, [], 2.0).tolist() == logits.tolist()
    # choose_token: no penalty unless asked; with one, a repeated top token gives way
    assert choose_token(logits, greedy=True, temperature=1.0, top_p=1.0, previous=[0]) == 0
    assert choose_token(logits, greedy=True, temperature=1.0, top_p=1.0, penalty=2.0, previous=[0]) == 0
    assert choose_token(torch.tensor([3.0, 2.0]), greedy=True, temperature=1.0, top_p=1.0, penalty=2.0, previous=[0]) == 1
    assert choose_token(torch.tensor([3.0, 2.0]), greedy=True, temperature=1.0, top_p=1.0, previous=[0]) == 0  # off


def test_top_p_keeps_the_smallest_prefix_holding_its_mass() -> None:
    from backend.maths.sampling import nucleus, sample_rows

    probs = torch.tensor([[0.5, 0.25, 0.25]])
    # top_p 0.5: the first token alone holds 0.5 (the second starts at 0.5, not below it): always token 0
    drawn = {int(nucleus(probs, 0.5, torch.Generator().manual_seed(s))[0]) for s in range(40)}
    assert drawn == {0}
    assert {int(nucleus(probs, 0.75, torch.Generator().manual_seed(s))[0]) for s in range(40)} == {0, 1}
    # a flat row over 10 tokens: top-p 1 draws from all of them, in every batch row
    flat = torch.zeros(1, 10)
    seen = set()
    for s in range(60):
        seen |= set(sample_rows(flat, temperature=1.0, top_p=1.0, generator=torch.Generator().manual_seed(s)))
    assert seen == set(range(10))


def test_a_nucleus_wider_than_the_fast_top_k_is_drawn_from_the_whole_row_reproducibly() -> None:
    from backend.maths.sampling import TOP_K_FAST, nucleus, sample_rows

    vocab = 4 * TOP_K_FAST
    flat = torch.zeros(2, vocab)  # the top 256 hold a quarter of the mass: the nucleus needs the whole row
    draws = [sample_rows(flat, temperature=1.0, top_p=0.9, generator=torch.Generator().manual_seed(s)) for s in range(40)]
    again = [sample_rows(flat, temperature=1.0, top_p=0.9, generator=torch.Generator().manual_seed(s)) for s in range(40)]
    assert draws == again  # the seeded generator decides every draw
    assert max(t for row in draws for t in row) >= TOP_K_FAST  # ids beyond the fast top-k are drawn
    probs = torch.full((1, vocab), 1.0 / vocab)
    ids = [int(nucleus(probs, 0.9, torch.Generator().manual_seed(s))[0]) for s in range(40)]
    assert ids == [int(nucleus(probs, 0.9, torch.Generator().manual_seed(s))[0]) for s in range(40)]
    assert max(ids) >= TOP_K_FAST
    # one sharp row and one flat row in the same batch: each is drawn from its own row
    mixed = torch.zeros(2, vocab)
    mixed[0, 7] = 50.0
    rows = sample_rows(mixed, temperature=1.0, top_p=0.9, generator=torch.Generator().manual_seed(0))
    assert rows[0] == 7


# --- bootstrap --------------------------------------------------------------------------------------------------


def test_estimates_beyond_rounding_only() -> None:
    from backend.maths.bootstrap import ZERO, Estimate

    assert not Estimate(-1.0, -2.0, -ZERO, 3).below_zero() and Estimate(-1.0, -2.0, -2 * ZERO, 3).below_zero()
    assert not Estimate(1.0, ZERO, 2.0, 3).above_zero() and Estimate(1.0, 2 * ZERO, 2.0, 3).above_zero()
    assert Estimate(None, None, None, 0).ci is None and Estimate(1.0, 0.5, 1.5, 2).ci == [0.5, 1.5]


def test_mean_ci_degenerate_only_for_a_constant_sample() -> None:
    from backend.maths.bootstrap import mean_ci

    two = mean_ci([0.0, 1.0])
    assert two.mean == 0.5 and two.lo is not None and two.hi is not None and two.lo < two.hi and two.n == 2
    assert mean_ci([1.0, 1.0 + 1e-13, 1.0]).lo == mean_ci([1.0, 1.0 + 1e-13, 1.0]).mean  # rounding: constant
    big = mean_ci([1000.0, 1000.0 + 1e-10])  # within 1e-12 of the mean's size: constant
    assert big.lo == big.hi == big.mean
    wide = mean_ci([0.0, 1.0, 2.0, 3.0, 5.0])
    narrow = mean_ci([0.0, 1.0, 2.0, 3.0, 5.0], confidence=0.5)
    assert wide.lo is not None and narrow.lo is not None and wide.hi is not None and narrow.hi is not None
    assert wide.lo < narrow.lo < narrow.hi < wide.hi  # the confidence asked for is the one used
    fewer = mean_ci([0.0, 1.0, 2.0, 3.0, 5.0], resamples=50)
    assert (fewer.lo, fewer.hi) != (wide.lo, wide.hi)  # and so is the number of resamples
    assert mean_ci([math.nan, None, 2.0]).n == 1  # type: ignore[list-item]
    spread = mean_ci([0.0, 1.5e-12])  # a spread above 1e-12 * (1 + |mean|): not constant
    assert spread.lo is not None and spread.hi is not None and spread.lo < spread.hi


def test_where_bca_is_undefined_the_percentile_interval_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np
    from scipy import stats

    from backend.maths import bootstrap

    real = stats.bootstrap
    methods: list[str] = []

    def bca_undefined(*args, **kwargs):  # type: ignore[no-untyped-def]
        methods.append(kwargs["method"])
        res = real(*args, **kwargs)
        if kwargs["method"] == "BCa":  # as scipy answers where BCa is undefined: NaN at one end
            res.confidence_interval = type(res.confidence_interval)(math.nan, res.confidence_interval.high)
        return res

    monkeypatch.setattr(bootstrap.stats, "bootstrap", bca_undefined)
    x = [0.0, 1.0, 2.0, 3.0, 5.0]
    est = bootstrap.mean_ci(x, resamples=200)
    expected = real((np.array(x),), np.mean, confidence_level=0.95, n_resamples=200, method="percentile",
                    rng=np.random.default_rng(bootstrap.BOOTSTRAP_SEED), vectorized=True).confidence_interval  # fmt: skip
    assert methods == ["BCa", "percentile"]
    assert (est.lo, est.hi) == (float(expected.low), float(expected.high))


def test_clustered_intervals_average_seeds_first_and_pass_their_options_on() -> None:
    from backend.maths.bootstrap import clustered_mean_ci, mean_ci, paired

    values = {("a", 0): 1.0, ("a", 1): 3.0, ("b", 0): 5.0, ("c", 0): 0.0, ("c", 1): math.nan, ("d", 0): 9.0}
    by_item = [2.0, 5.0, 0.0, 9.0]  # the seeds of a averaged by hand; c's NaN dropped
    assert clustered_mean_ci(values, confidence=0.5) == mean_ci(by_item, confidence=0.5)
    assert clustered_mean_ci(values, confidence=0.5) != clustered_mean_ci(values)
    k = ("a", 0)
    assert paired({k: math.nan}, {k: 1.0}) == {} and paired({k: 1.0}, {k: math.nan}) == {}
    assert paired({k: 1.0}, {k: None}) == {} and paired({k: None}, {k: 1.0}) == {} and paired({k: 1.0}, {}) == {}
    assert paired({k: 3.0, ("b", 0): 1.0}, {k: 1.0}) == {k: 2.0}
