"""Laws of the pure rules, checked on generated inputs (hypothesis): the frontier against brute force, windows that
hold their question and fit, a cap that never lowers a projection at or above its floor, placement that moves with a
translation. Small examples, no deadline (2 shared cores)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.maths.edits import cap_floor
from backend.reading.placement import Placement
from backend.reading.windows import Layout, plan_windows
from backend.view.frontier import pareto_front

LAWS = settings(max_examples=60, deadline=None)

# --- the frontier -----------------------------------------------------------------------------------------------

# a small grid of values, so that ties (equal cost, equal adoption, equal points) come up often
points = st.lists(st.tuples(st.integers(0, 3).map(float), st.integers(0, 3).map(float)), max_size=8)


def dominates(p: tuple[float, float], q: tuple[float, float]) -> bool:
    """``p`` at least as good as ``q`` on both (lower is better) and strictly better on one."""
    return p[0] <= q[0] and p[1] <= q[1] and p != q


@LAWS
@given(points)
def test_frontier_points_are_never_dominated_and_the_others_are(pts: list[tuple[float, float]]) -> None:
    front = pareto_front(pts)
    assert len(front) == len(pts)
    for i, p in enumerate(pts):
        beaten = any(dominates(q, p) for q in pts)  # brute force over every other point
        assert front[i] is not beaten, (p, pts)
    if pts:
        assert any(front)  # a finite set always has a frontier point
        best = min(pts)
        assert front[pts.index(best)]  # the lowest cost (then adoption) point is on it


# --- windows ----------------------------------------------------------------------------------------------------


@st.composite
def conversations(draw: st.DrawFn) -> tuple[Layout, int, float]:
    """Alternating user/assistant blocks of 1..8 tokens after a 0..5-token prefix; a window and a history."""
    prefix = draw(st.integers(0, 5))
    sizes = draw(st.lists(st.integers(1, 8), min_size=2, max_size=12))
    starts, at = [], prefix
    for size in sizes:
        starts.append(at)
        at += size
    roles = tuple("user" if i % 2 == 0 else "assistant" for i in range(len(sizes)))
    window = draw(st.integers(prefix + 1, prefix + 40))
    history = draw(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]))
    return Layout(prefix, tuple(starts), roles, at), window, history


@LAWS
@given(conversations())
def test_a_window_fits_and_holds_its_question_whenever_they_fit(case: tuple[Layout, int, float]) -> None:
    layout, window, history = case
    plan = plan_windows(layout, window, history)
    room = window - layout.prefix
    turns = [i for i, r in enumerate(layout.roles) if r == "assistant"]
    assert sorted([w.message for w in plan.windows] + list(plan.unreadable)) == turns  # each turn exactly once
    for w in plan.windows:
        question = w.message - 1  # alternating roles: the user message just before
        assert layout.prefix + w.end - w.start_token <= window  # fits
        assert w.end == layout.end(w.message) and w.start_token == layout.starts[w.first_message]
        assert w.context == layout.prefix + layout.starts[w.message] - w.start_token
        if layout.end(w.message) - layout.starts[question] <= room:
            assert w.first_message <= question  # its question is in the window
        else:
            assert w.first_message == w.message  # it does not fit with its question: read alone
    for message in plan.unreadable:
        assert layout.end(message) - layout.starts[message] > room  # only a turn that cannot fit alone is left out
    for g in plan.groups:  # one pass per group: every turn of it is read with the group's start
        assert all(plan.windows[[w.message for w in plan.windows].index(m)].start_token == g.start_token for m in g.messages)
        assert g.length(layout.prefix) <= window


# --- the cap ----------------------------------------------------------------------------------------------------


@LAWS
@given(
    st.integers(0, 2**31 - 1),
    st.integers(1, 4),
    st.integers(2, 8),
    st.floats(-3.0, 3.0, allow_nan=False),
)
def test_a_cap_never_lowers_a_projection_at_or_above_its_floor(seed: int, positions: int, d: int, tau: float) -> None:
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(2, positions, d, generator=g, dtype=torch.float64) * 2
    u = torch.randn(d, generator=g, dtype=torch.float64)
    u = u / u.norm()
    capped, delta, before = cap_floor(hidden, u, tau)
    after = capped @ u
    above = before >= tau
    assert torch.equal(capped[above], hidden[above])  # at or above the floor: bit-identical
    assert bool((after >= before - 1e-12).all())  # nothing is lowered
    assert bool((after >= tau - 1e-9).all())  # and everything ends at or above the floor
    assert bool((delta >= 0).all()) and torch.allclose(after[~above], torch.full_like(after[~above], tau))
    orth = hidden - before.unsqueeze(-1) * u
    assert torch.allclose(capped - after.unsqueeze(-1) * u, orth)  # the orthogonal part never moves


# --- placement --------------------------------------------------------------------------------------------------


def placement(mean: torch.Tensor, comps: torch.Tensor) -> Placement:
    d = mean.shape[-1]
    tensors = {
        "role_vectors": torch.randn(4, 2, d, dtype=torch.float64),
        "pca_mean": torch.stack([torch.zeros(d, dtype=torch.float64), mean]),
        "pca_components": torch.stack([torch.zeros_like(comps), comps]),
        "axis": torch.randn(2, d),
    }
    space = SimpleNamespace(tensors=tensors, target_layer=1, roles=["a", "b", "c", "d"], manifest={})
    return Placement(space)  # type: ignore[arg-type]


@LAWS
@given(st.integers(0, 2**31 - 1), st.floats(-50.0, 50.0, allow_nan=False))
def test_placement_is_translation_equivariant(seed: int, scale: float) -> None:
    g = torch.Generator().manual_seed(seed)
    d = 5
    mean = torch.randn(d, generator=g, dtype=torch.float64)
    comps = torch.linalg.qr(torch.randn(d, 3, generator=g, dtype=torch.float64))[0].T  # (3, d), orthonormal rows
    v, t = torch.randn(d, generator=g, dtype=torch.float64), scale * torch.randn(d, generator=g, dtype=torch.float64)
    here = placement(mean, comps)
    # moving the activation by t moves its coordinates by the components' reading of t
    moved = torch.tensor(here.pca(v + t), dtype=torch.float64) - torch.tensor(here.pca(v), dtype=torch.float64)
    assert moved.tolist() == pytest.approx((comps @ t).tolist(), abs=1e-9)
    # moving the space (its mean) and the activation together leaves the coordinates where they were
    assert placement(mean + t, comps).pca(v + t) == pytest.approx(here.pca(v), abs=1e-9)
