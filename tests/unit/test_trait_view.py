"""The Traits page's view of a space (backend/view/traits.py): cosines, the trait-space PCA and the archetypes
projected on a trait, each checked against an independent oracle (numpy, scikit-learn, the ``info`` figures)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.decomposition import PCA

from backend.maths.trait_space import fitted_pca, projections, row_cosines
from backend.view.space import SpaceView, SpaceViewError
from backend.view.traits import NoTraits, UnknownTrait, trait_archetypes, trait_summary

L, D, R = 3, 8, 6
NAMES = ["alpha", "beta", "gamma", "delta", "epsilon"]
WEAK = {"delta"}


def make_view(seed: int = 0, traits: bool = True) -> SpaceView:
    rng = np.random.default_rng(seed)
    pcs = np.stack([np.linalg.qr(rng.normal(size=(D, D)))[0][:, :4].T for _ in range(L)])
    manifest: dict[str, Any] = {
        "target_layer": 1,
        "n_layers": L,
        "model": {"name": "synthetic"},
        "roles": [{"name": f"role{i}", "category": "c", "kept": True, "weak": i == 2} for i in range(R)]
        + [{"name": "gone", "kept": False, "dropped": "no answers"}],
    }
    arrays = {
        "axis": rng.normal(size=(L, D)).astype(np.float32),
        "pca_components": pcs.astype(np.float32),
        "role_vectors": rng.normal(size=(R, L, D)).astype(np.float32),
        "default_vector": rng.normal(size=(L, D)).astype(np.float32),
    }
    if traits:
        manifest["trait_set"] = {
            "traits": [
                {"name": n, "description": f"{n} desc", "opposite": f"not {n}", "kept": True, "weak": n in WEAK} for n in NAMES
            ]
            + [{"name": "zeta", "kept": False, "dropped": "no answer"}],
            "kept_order": NAMES,
        }
        arrays["trait_vectors"] = rng.normal(size=(len(NAMES), L, D)).astype(np.float32)
    return SpaceView(path=Path("/nowhere"), manifest=manifest, arrays=arrays)


def cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("layer", [None, 0, 2])
def test_cosines_with_axis_and_pcs_match_a_direct_computation(layer: int | None) -> None:
    view = make_view()
    out = trait_summary(view, layer)
    at = 1 if layer is None else layer
    assert out["layer"] == at and out["target_layer"] == 1
    assert [t["name"] for t in out["traits"]] == NAMES
    for i, t in enumerate(out["traits"]):
        vec = view.arrays["trait_vectors"][i, at]
        assert t["axis_cosine"] == pytest.approx(cos(vec, view.arrays["axis"][at]), abs=1e-9)
        expected = [cos(vec, view.arrays["pca_components"][at][k]) for k in range(3)]
        assert t["pc_cosines"] == pytest.approx(expected, abs=1e-9)
        assert t["weak"] == (t["name"] in WEAK)
        assert t["description"] == f"{t['name']} desc" and t["opposite"] == f"not {t['name']}"
    assert out["dropped"] == {"zeta": "no answer"}


def test_trait_pca_is_fitted_on_non_weak_traits_and_places_weak_ones_with_the_same_fit() -> None:
    view = make_view(seed=3)
    out = trait_summary(view, 2)
    vectors = view.arrays["trait_vectors"][:, 2].astype(np.float64)
    fit = np.array([n not in WEAK for n in NAMES])
    oracle = PCA(n_components=3, svd_solver="full").fit(vectors[fit])
    assert out["pca_fit"] == "non-weak"
    assert out["pca_variance"] == pytest.approx(oracle.explained_variance_ratio_, abs=1e-9)
    placed = oracle.transform(vectors)
    ours = np.array([t["pca_3d"] for t in out["traits"]])
    for k in range(3):  # a component's sign is a convention: compare up to it, the same sign for every trait
        sign = np.sign(ours[:, k] @ placed[:, k])
        np.testing.assert_allclose(ours[:, k], sign * placed[:, k], atol=1e-9)
    assert [t["pca_2d"] for t in out["traits"]] == [t["pca_3d"][:2] for t in out["traits"]]


def test_pca_sign_convention_and_distances_hold() -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(9, 5))
    pca = fitted_pca(x, np.ones(9, dtype=bool), k=3)
    for comp in pca.components:
        assert comp[np.argmax(np.abs(comp))] > 0
    np.testing.assert_allclose(pca.components @ pca.components.T, np.eye(3), atol=1e-12)
    full = fitted_pca(x, np.ones(9, dtype=bool), k=5)  # all of the variance: the places keep every distance
    dist = np.linalg.norm(x[:, None] - x[None], axis=2)
    np.testing.assert_allclose(np.linalg.norm(full.coords[:, None] - full.coords[None], axis=2), dist, atol=1e-9)
    with pytest.raises(ValueError):
        fitted_pca(x, np.eye(9, dtype=bool)[0], k=2)


def test_archetypes_are_projected_on_the_unit_trait_vector_and_sorted() -> None:
    view = make_view(seed=5)
    out = trait_archetypes(view, "gamma", 0)
    t = view.arrays["trait_vectors"][NAMES.index("gamma"), 0].astype(np.float64)
    u = t / np.sqrt((t**2).sum())
    expected = {
        f"role{i}": float(sum(a * b for a, b in zip(view.arrays["role_vectors"][i, 0].tolist(), u.tolist(), strict=True)))
        for i in range(R)
    }
    got = {r["name"]: r["projection"] for r in out["archetypes"]}
    assert got == pytest.approx(expected, abs=1e-9)
    assert [r["projection"] for r in out["archetypes"]] == sorted(got.values(), reverse=True)
    assert "gone" not in got and len(got) == R
    assert [r["weak"] for r in out["archetypes"] if r["name"] == "role2"] == [True]
    assert out["assistant"] == pytest.approx(float(view.arrays["default_vector"][0].astype(np.float64) @ u), abs=1e-9)
    assert out["trait"] == "gamma" and out["layer"] == 0


def test_scaling_a_trait_vector_changes_no_figure() -> None:
    view = make_view(seed=2)
    before = trait_archetypes(view, "beta")
    cosines = [t["axis_cosine"] for t in trait_summary(view)["traits"]]
    view.arrays["trait_vectors"][NAMES.index("beta")] *= 7.5
    after = trait_archetypes(view, "beta")["archetypes"]
    assert [r["name"] for r in after] == [r["name"] for r in before["archetypes"]]
    assert [r["projection"] for r in after] == pytest.approx([r["projection"] for r in before["archetypes"]])
    assert [t["axis_cosine"] for t in trait_summary(view)["traits"]] == pytest.approx(cosines)


def test_bad_input_is_refused_clearly() -> None:
    with pytest.raises(NoTraits, match="build-traits"):
        trait_summary(make_view(traits=False))
    with pytest.raises(NoTraits):
        trait_archetypes(make_view(traits=False), "alpha")
    with pytest.raises(UnknownTrait, match="nope"):
        trait_archetypes(make_view(), "nope")
    with pytest.raises(SpaceViewError, match="out of range"):
        trait_summary(make_view(), L)
    with pytest.raises(ValueError):
        projections(np.ones((2, 3)), np.zeros(3))
    assert row_cosines(np.zeros((1, 3)), np.ones(3)).tolist() == [0.0]


def test_the_view_agrees_with_info_on_a_real_space(tmp_path: Path) -> None:
    """On the shipped space (its traits stored compact), the view's axis and PC cosines equal those ``info`` reports."""
    from backend.store.space import load_space
    from backend.store.trait_info import trait_info
    from backend.view.space import read_space

    root = Path(__file__).resolve().parents[2] / "cached_activations" / "smollm2-135m"
    view = read_space(root)
    assert "trait_vectors" in view.arrays  # stored compact: the view expands it as the loader does
    info = trait_info(load_space(root))
    assert info is not None
    ours = {t["name"]: t for t in trait_summary(view)["traits"]}
    assert set(ours) == set(info["traits"])
    for name, figures in info["traits"].items():
        assert ours[name]["axis_cosine"] == pytest.approx(figures["axis_cosine"], abs=1e-4)
        assert ours[name]["pc_cosines"] == pytest.approx(figures["pc_cosines"], abs=1e-4)
        assert ours[name]["weak"] == figures["weak"]
