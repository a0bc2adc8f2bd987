"""Traits of a live turn and trait steering, without a worker: the z-score math against a numpy oracle, per-row
steering sets against the steering oracle (coefficient 2 equals twice the vector), the /space summary's
``trait_axes`` and the OpenAI extension's ``steer.trait``."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from backend.errors import InterventionError
from backend.hooks.rows import RowControls
from backend.maths.edits import steering_vector
from backend.maths.trait_scores import top_traits, trait_scores, trait_statistics
from backend.view.space import trait_axes
from backend.worker.openai_shapes import ChatRequest, to_controls, turn_summary
from backend.worker.schemas import Controls, ControlsPatch
from tests.helpers.tiny import random_ids, tiny_model

NAMES = ["dramatic", "grounded", "playful", "formal", "humble", "flat"]


def _world(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    roles = torch.randn(40, 16, generator=g, dtype=torch.float64) * 3 + 1
    vectors = torch.randn(len(NAMES), 16, generator=g, dtype=torch.float64) * torch.linspace(0.5, 4, len(NAMES))[:, None]
    vectors[-1] = 0  # "flat": a zero vector cannot be ranked
    x = torch.randn(16, generator=g, dtype=torch.float64) * 3
    return roles, vectors, x


def test_z_scores_equal_a_numpy_oracle() -> None:
    roles, vectors, x = _world()
    stats = trait_statistics(NAMES, vectors, roles)
    p, z = trait_scores(stats, x)
    r, v, a = roles.numpy(), vectors.numpy(), x.numpy()
    for i in range(len(NAMES) - 1):
        u = v[i] / np.linalg.norm(v[i])
        along = r @ u
        assert float(p[i]) == pytest.approx(float(a @ u), rel=1e-12)
        assert float(z[i]) == pytest.approx(float((a @ u - along.mean()) / along.std()), rel=1e-10)
    assert stats.usable == [True] * 5 + [False] and bool(torch.isnan(z[-1]))
    # the scale of a trait vector does not change its z (only its direction counts)
    scaled = trait_statistics(NAMES, vectors * 7.5, roles)
    torch.testing.assert_close(trait_scores(scaled, x)[1][:-1], z[:-1])


def test_top_traits_rank_both_ends_and_leave_out_weak_and_flat_traits() -> None:
    roles, vectors, x = _world(1)
    weak = [False, False, True, False, False, False]
    stats = trait_statistics(NAMES, vectors, roles, weak)
    _, z = trait_scores(stats, x)
    got = top_traits(stats, x, k=2)
    ranked = sorted((i for i in range(5) if not weak[i]), key=lambda i: float(z[i]), reverse=True)
    assert [e["name"] for e in got["top"]] == [NAMES[i] for i in ranked[:2] if z[i] > 0]
    assert [e["name"] for e in got["bottom"]] == [NAMES[i] for i in ranked[::-1][:2] if z[i] < 0]
    assert all(e["z"] > 0 for e in got["top"]) and all(e["z"] < 0 for e in got["bottom"])
    every = {e["name"] for e in top_traits(stats, x, k=10)["top"] + top_traits(stats, x, k=10)["bottom"]}
    assert "playful" not in every and "flat" not in every
    with_weak = top_traits(stats, x, k=10, include_weak=True)
    assert "playful" in {e["name"] for e in with_weak["top"] + with_weak["bottom"]}
    assert all("weak" in e for e in with_weak["top"])


def test_a_turn_placed_far_along_a_trait_reads_as_that_trait() -> None:
    roles, vectors, _ = _world(2)
    stats = trait_statistics(NAMES, vectors, roles)
    u = vectors[0] / vectors[0].norm()
    x = roles.mean(0) + 50 * u  # far toward "dramatic"
    got = top_traits(stats, x, k=1)
    assert got["top"][0]["name"] == "dramatic" and got["top"][0]["z"] > 5
    x = roles.mean(0) - 50 * u
    assert top_traits(stats, x, k=1)["bottom"][0]["name"] == "dramatic"


def test_statistics_refuse_shapes_that_do_not_fit() -> None:
    roles, vectors, _ = _world()
    with pytest.raises(ValueError, match=r"6 trait names for 5 trait vectors"):
        trait_statistics(NAMES, vectors[:5], roles)
    with pytest.raises(ValueError, match=r"must be \(T, d\) and \(R, d\)"):
        trait_statistics(NAMES, vectors[:, :8], roles)
    with pytest.raises(ValueError, match=r"at least 2 role vectors"):
        trait_statistics(NAMES, vectors, roles[:1])


# trait steering on the row controls ------------------------------------------------------------------------------
def _sets(model: Any) -> tuple[torch.Tensor, torch.Tensor]:
    n_layers, hidden = model.config.num_hidden_layers, model.config.hidden_size
    g = torch.Generator().manual_seed(4)
    axis = torch.stack([steering_vector(torch.randn(hidden, generator=g), 2.0) for _ in range(n_layers)])
    trait = torch.stack([steering_vector(torch.randn(hidden, generator=g), 2.0) for _ in range(n_layers)])
    return axis, trait


def _logits(model: Any, controls: RowControls, ids: torch.Tensor) -> torch.Tensor:
    handle = controls.attach(model)
    try:
        with torch.no_grad():
            return model(ids).logits
    finally:
        handle.remove()


def test_trait_steering_with_coefficient_two_equals_twice_the_vector() -> None:
    model = tiny_model("llama")
    axis, trait = _sets(model)
    n_layers, hidden = axis.shape
    ids = random_ids(batch=3, length=6, seed=2)
    layers = [1, 2]
    rows = RowControls(3, n_layers, hidden, steer_vectors=torch.stack([axis, trait]))
    rows.set_steer(0, 1.0, layers)  # the axis (set 0)
    rows.set_steer(1, 2.0, layers, direction_set=1)  # the trait, coefficient 2
    both = _logits(model, rows, ids)
    doubled = RowControls(3, n_layers, hidden, steer_vectors=2 * trait)
    doubled.set_steer(1, 1.0, layers)
    torch.testing.assert_close(both[1], _logits(model, doubled, ids)[1], rtol=0, atol=1e-6)
    # the axis row and the unsteered row are what one set of vectors gives them, bit for bit
    alone = RowControls(3, n_layers, hidden, steer_vectors=axis)
    alone.set_steer(0, 1.0, layers)
    reference = _logits(model, alone, ids)
    assert torch.equal(both[0], reference[0]) and torch.equal(both[2], reference[2])
    assert not torch.allclose(both[1], reference[1])
    # a change of set applies in place (the next forward pass)
    rows.set_steer(1, 1.0, layers)
    assert torch.equal(_logits(model, rows, ids)[1], _axis_row(model, axis, ids, layers))


def _axis_row(model: Any, axis: torch.Tensor, ids: torch.Tensor, layers: list[int]) -> torch.Tensor:
    one = RowControls(3, *axis.shape, steer_vectors=axis)
    one.set_steer(1, 1.0, layers)
    return _logits(model, one, ids)[1]


def test_a_steering_set_out_of_range_is_refused() -> None:
    axis = torch.randn(4, 32)
    rows = RowControls(2, 4, 32, steer_vectors=torch.stack([axis, axis]))
    with pytest.raises(InterventionError, match=r"steering set 2 is out of range 0..1"):
        rows.set_steer(0, 1.0, [1], direction_set=2)
    one = RowControls(2, 4, 32, steer_vectors=axis)
    with pytest.raises(InterventionError, match=r"steering set 1 is out of range 0..0"):
        one.set_steer(0, 1.0, [1], direction_set=1)


def test_regrouped_rows_keep_their_steering_set() -> None:
    axis = torch.randn(4, 32)
    rows = RowControls(2, 4, 32, steer_vectors=torch.stack([axis, -axis, 2 * axis]))
    rows.set_steer(1, 1.0, [1], direction_set=2)
    rows.regroup([1, None, 0])
    assert rows.steer_set_of == [2, 0, 0] and rows.steer_set.tolist() == [2, 0, 0]
    torch.testing.assert_close(rows.steer_vectors(1, True)[:, 0], torch.stack([2 * axis[1], axis[1], axis[1]]))


# the /space summary and the API extension ------------------------------------------------------------------------
def test_trait_axes_lists_the_kept_traits_in_order() -> None:
    manifest = {
        "trait_set": {
            "kept_order": ["formal", "dramatic"],
            "traits": [
                {"name": "dramatic", "description": "Big feelings.", "kept": True, "weak": True},
                {"name": "formal", "description": "Stiff.", "kept": True},
                {"name": "gone", "description": "x", "kept": False, "dropped": "no answers"},
            ],
        }
    }
    assert trait_axes(manifest) == [
        {"name": "formal", "description": "Stiff.", "weak": False},
        {"name": "dramatic", "description": "Big feelings.", "weak": True},
    ]
    assert trait_axes({}) == []


def test_the_api_extension_takes_a_trait_and_returns_the_turn_traits() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}],
            "persona_space": {"steer": {"coefficient": 2.0, "trait": "dramatic"}}}  # fmt: skip
    controls = to_controls(ChatRequest.model_validate(body), Controls())
    assert controls.steer_trait == "dramatic" and controls.steer_coefficient == 2.0
    assert to_controls(ChatRequest.model_validate({**body, "persona_space": {}}), Controls()).steer_trait is None
    traits = {"layer": 2, "top": [{"name": "dramatic", "z": 1.5, "projection": 0.2}], "bottom": []}
    assert turn_summary({"mean_projection": 1.0, "traits": traits})["traits"] == traits
    assert "traits" not in turn_summary({"mean_projection": 1.0})


def test_a_controls_patch_can_return_to_the_axis() -> None:
    assert ControlsPatch(clear_steer_trait=True).clear_steer_trait
    with pytest.raises(ValueError):
        Controls(steer_trait="")
