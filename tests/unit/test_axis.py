"""Pure axis math on synthetic data with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.errors import InterventionError
from backend.maths.axis import compute_axis, cosine_per_layer, percentile_thresholds, project, unit
from backend.maths.edits import cap_floor, steer, steering_vector
from backend.maths.pca import components_for_variance, fit_pca


def planted(seed: int = 0, n_roles: int = 60, n_default: int = 20, n_layers: int = 3, d: int = 24):  # type: ignore[no-untyped-def]
    """Roles spread mostly along a planted direction; the default sits at its positive end."""
    g = torch.Generator().manual_seed(seed)
    direction = unit(torch.randn(n_layers, d, generator=g))
    base = torch.randn(n_layers, d, generator=g) * 3
    spread = torch.randn(n_roles, 1, 1, generator=g) * 4.0  # large variance along the direction
    roles = base + spread * direction + 0.3 * torch.randn(n_roles, n_layers, d, generator=g)
    default = base + 20.0 * direction + 0.3 * torch.randn(n_default, n_layers, d, generator=g)
    return direction, roles, default


def test_axis_recovers_planted_direction_and_points_to_assistant() -> None:
    direction, roles, default = planted()
    axis = compute_axis(default, roles)
    assert axis.shape == (3, 24)
    cos = cosine_per_layer(axis, direction)
    assert bool((cos > 0.95).all()), cos
    # the default projects higher than every role at every layer: the axis points toward the Assistant
    for layer in range(3):
        assert project(default.mean(0)[layer], axis[layer]) > project(roles[:, layer], axis[layer]).max()


def test_pca_pc1_recovers_direction_with_sign_fixed_by_axis() -> None:
    direction, roles, default = planted(seed=3)
    axis = compute_axis(default, roles)
    for layer in range(3):
        pca = fit_pca(roles[:, layer], axis=axis[layer])
        pc1 = torch.tensor(pca.components[0], dtype=torch.float32)
        assert float(pc1 @ direction[layer]) > 0.95  # recovered, with the axis's sign
        assert pca.axis_cosine(axis[layer].numpy()) > 0.9
        assert pca.explained_variance_ratio[0] > 0.8
        assert components_for_variance(pca.explained_variance_ratio, 0.7) == 1
        # the default, projected in, lies at the positive end of PC1
        assert pca.transform(default.mean(0)[layer : layer + 1].numpy())[0, 0] > pca.coords[:, 0].max()
        # coordinates are centred projections on the components
        np.testing.assert_allclose(pca.coords, pca.transform(roles[:, layer].numpy()), atol=1e-9)
        # flipping the axis flips PC1
        flipped = fit_pca(roles[:, layer], axis=-axis[layer])
        np.testing.assert_allclose(flipped.components[0], -pca.components[0], atol=1e-12)


def test_cap_floor_formula() -> None:
    u = unit(torch.tensor([3.0, 4.0]))
    h = torch.tensor([[0.0, 0.0], [3.0, 4.0], [-3.0, 1.0]])
    capped, delta, before = cap_floor(h, u, 2.0)
    torch.testing.assert_close(capped @ u, torch.tensor([2.0, 5.0, 2.0]))
    torch.testing.assert_close(before, torch.tensor([0.0, 5.0, float(h[2] @ u)]))
    assert torch.equal(capped[1], h[1])
    torch.testing.assert_close(delta, torch.tensor([2.0, 0.0, 2.0 - float(h[2] @ u)]))
    same, none, _ = cap_floor(h, u, -float("inf"))
    assert same is h and float(none.sum()) == 0
    assert torch.equal(cap_floor(h, u, -1.0)[0], h)  # nothing below the floor: bit-identical


def test_cap_floor_and_steer_take_one_value_per_row() -> None:
    """A floor or coefficient per row equals each row capped or steered alone; -inf and 0 leave a row bit-identical."""
    g = torch.Generator().manual_seed(0)
    h = torch.randn(3, 5, 4, generator=g)
    u = unit(torch.randn(4, generator=g))
    v = torch.randn(4, generator=g)
    taus = torch.tensor([0.5, -float("inf"), -0.2])
    capped, delta, before = cap_floor(h, u, taus)
    for row, tau in enumerate(taus.tolist()):
        alone = cap_floor(h[row : row + 1], u, tau)
        assert torch.equal(capped[row], alone[0][0]) and torch.equal(delta[row], alone[1][0])
        torch.testing.assert_close(before[row], h[row] @ u)
    assert torch.equal(capped[1], h[1]) and float(delta[1].sum()) == 0
    coefficients = torch.tensor([2.0, 0.0, -1.5])
    steered = steer(h, v, coefficients)
    for row, c in enumerate(coefficients.tolist()):
        assert torch.equal(steered[row], steer(h[row], v, c))
    assert torch.equal(steered[1], h[1])


def test_steer_and_normalised_scale() -> None:
    v = steering_vector(torch.tensor([0.0, 2.0]), scale=10.0)
    torch.testing.assert_close(v, torch.tensor([0.0, 10.0]))
    h = torch.zeros(4, 2)
    torch.testing.assert_close(steer(h, v, 0.5), torch.tensor([[0.0, 5.0]] * 4))
    torch.testing.assert_close(steer(h, v, 2.0), steer(h, 2 * v, 1.0))
    with pytest.raises(InterventionError, match="positive finite number, got nan"):
        steering_vector(torch.ones(2), float("nan"))


def test_percentile_thresholds() -> None:
    pool = torch.arange(101, dtype=torch.float32).unsqueeze(1).repeat(1, 2)
    pool[:, 1] *= -1
    out = percentile_thresholds(pool, [1, 25, 50, 75])
    torch.testing.assert_close(out[75.0], torch.tensor([75.0, -25.0]))
    torch.testing.assert_close(out[1.0], torch.tensor([1.0, -99.0]))
    with pytest.raises(InterventionError, match=r"percentile must be a number in \[0, 100\], got 101"):
        percentile_thresholds(pool, [101])
    bad = pool.clone()
    bad[3, 0] = float("nan")
    with pytest.raises(InterventionError, match="non-finite"):
        percentile_thresholds(bad, [50])


def test_shape_errors_name_the_shapes() -> None:
    with pytest.raises(InterventionError, match=r"default vectors are \(3, 8\) per answer but role vectors are \(3, 9\)"):
        compute_axis(torch.zeros(5, 3, 8), torch.zeros(4, 3, 9))
    with pytest.raises(InterventionError, match="vector length 7 does not match the activations' hidden size 8"):
        project(torch.zeros(2, 8), torch.ones(7))
    with pytest.raises(InterventionError, match=r"PCA needs an \(n >= 2, d\) matrix"):
        fit_pca(np.zeros((1, 4)))
