"""Boundary rows of the pure rule functions (issue 26): the frontier, the recommendation rule, windows, the floors.

Every expected value is worked out by hand in the comments (or by brute force), never read back from the code under
test: each row sits exactly on a boundary, where a `<` for `<=` or a wrong bound changes the answer.
"""

from __future__ import annotations

import math

import pytest
import torch

from backend.errors import InterventionError
from backend.hooks.rows import RowControls
from backend.reading.windows import Layout, WindowError, plan_windows
from backend.view.frontier import DEFAULT_KL_BOUND, METRICS, RULE, pareto_front, recommend

# --- the frontier -----------------------------------------------------------------------------------------------


def test_identical_points_do_not_dominate_each_other() -> None:
    # Dominance needs "at least as good on both AND better on one": two equal points are both on the front.
    assert pareto_front([(0.1, 0.5), (0.1, 0.5)]) == [True, True]
    assert pareto_front([(0.1, 0.5), (0.1, 0.5), (0.2, 0.6)]) == [True, True, False]


def test_a_point_better_on_one_side_only_dominates() -> None:
    # (0.1, 0.5) vs (0.1, 0.4): same cost, lower adoption wins; (0.2, 0.4) vs (0.1, 0.4): same adoption, less cost.
    assert pareto_front([(0.1, 0.5), (0.1, 0.4)]) == [False, True]
    assert pareto_front([(0.2, 0.4), (0.1, 0.4)]) == [False, True]
    assert pareto_front([(0.0, 1.0), (1.0, 0.0)]) == [True, True]
    assert pareto_front([]) == []
    assert pareto_front([(3.0, 3.0)]) == [True]


def test_a_setting_exactly_at_the_kl_bound_is_cheap() -> None:
    rows = [
        {"setting": "uncapped", "kl": 0.0, "adoption": 0.6},
        {"setting": "at", "percentile": 50.0, "kl": 0.05, "adoption": 0.2},  # KL == bound: "at most" admits it
        {"setting": "under", "percentile": 25.0, "kl": 0.01, "adoption": 0.5},
    ]
    assert recommend(rows, kl_bound=0.05)["setting"] == "at"
    only = [rows[0], rows[1]]
    assert recommend(only, kl_bound=0.05)["setting"] == "at"
    assert recommend(only, kl_bound=0.0499)["setting"] is None
    assert DEFAULT_KL_BOUND == 0.05
    assert recommend(only)["setting"] == "at"


def test_a_setting_no_better_than_uncapped_is_not_recommended() -> None:
    rows = [
        {"setting": "uncapped", "kl": 0.0, "adoption": 0.4},
        {"setting": "tie", "percentile": 50.0, "kl": 0.01, "adoption": 0.4},  # equal adoption: "below" fails
    ]
    out = recommend(rows, kl_bound=0.05)
    assert out["setting"] is None and out["candidate"] == "tie"
    assert "no better than uncapped" in out["why"]
    assert "0.400" in out["why"]
    rows[1]["adoption"] = 0.39
    assert recommend(rows, kl_bound=0.05)["setting"] == "tie"


def test_the_recommendation_names_its_rule_and_breaks_ties_by_kl_then_percentile() -> None:
    rows = [
        {"setting": "uncapped", "kl": 0.0, "adoption": 0.9},
        {"setting": "a", "percentile": 75.0, "kl": 0.02, "adoption": 0.3},
        {"setting": "b", "percentile": 25.0, "kl": 0.01, "adoption": 0.3},  # same adoption, less KL: wins
        {"setting": "c", "percentile": 90.0, "kl": 0.01, "adoption": 0.3},  # ties b on KL, higher percentile: loses
        {"setting": "p", "placebo": 1, "percentile": 10.0, "kl": 0.0, "adoption": 0.0},  # placebo: never
        {"setting": "nan", "percentile": 5.0, "kl": float("nan"), "adoption": 0.0},  # not finite: never
        {"setting": "none", "percentile": 5.0, "kl": 0.0, "adoption": None},
    ]
    out = recommend(rows, kl_bound=0.05)
    assert out["setting"] == "b"
    assert out["kl_bound"] == 0.05
    label, better = METRICS["adoption"]
    assert out["rule"] == RULE.format(bound=0.05, metric=label, better=better)
    assert out["why"] == f"lowest {label} under the KL bound"
    assert "at most 0.05 nats/token" in out["rule"]
    none = recommend(rows[:1] + rows[4:], kl_bound=0.05)
    assert none == {"rule": out["rule"], "kl_bound": 0.05, "setting": None, "why": "no capped setting has KL <= 0.05"}


def test_persona_shift_needs_an_interval_below_zero() -> None:
    rows = [
        {"setting": "uncapped", "kl": 0.0, "adoption": 0.5, "persona_shift": 0.0},
        {"setting": "s", "percentile": 50.0, "kl": 0.01, "adoption": 0.9, "persona_shift": -0.2, "persona_shift_ci": [-0.3, 0.0]},
    ]
    out = recommend(rows, metric="persona_shift")
    assert out["setting"] is None and out["candidate"] == "s"  # the interval's top is 0: not below 0
    assert "-0.200" in out["why"] and "does not lower persona scores" in out["why"]
    rows[1]["persona_shift_ci"] = [-0.3, -0.01]
    assert recommend(rows, metric="persona_shift")["setting"] == "s"  # adoption (worse than uncapped) is not asked
    rows[1]["persona_shift_ci"] = None
    assert recommend(rows, metric="persona_shift")["setting"] is None


def test_no_uncapped_row_or_a_non_finite_one_recommends_the_best_cheap_setting() -> None:
    rows = [{"setting": "s", "percentile": 50.0, "kl": 0.01, "adoption": 0.9}]
    assert recommend(rows)["setting"] == "s"
    rows.append({"setting": "uncapped", "kl": 0.0, "adoption": None})
    assert recommend(rows)["setting"] == "s"


# --- windows ----------------------------------------------------------------------------------------------------


def test_a_turn_that_fits_exactly_keeps_the_whole_conversation() -> None:
    # prefix 2, then a user block [2, 5) and the turn [5, 10): 8 tokens of messages; a window of 10 leaves 10 - 2 = 8.
    layout = Layout(prefix=2, starts=(2, 5), roles=("user", "assistant"), total=10)
    plan = plan_windows(layout, window=10)
    (w,) = plan.windows
    assert (w.first_message, w.start_token, w.end, w.context) == (0, 2, 10, 5)
    assert plan.unreadable == {}
    assert plan.tokens_read(2) == 10
    # one token less of window and the question no longer fits: the turn is read alone
    (alone,) = plan_windows(layout, window=9).windows
    assert (alone.first_message, alone.start_token, alone.context) == (1, 5, 2)


def test_a_window_moves_to_a_question_that_fits_exactly() -> None:
    # prefix 1; u0 [1, 3), a1 [3, 5), u2 [5, 8), a3 [8, 12). Window 8: room 7. a1 fits (5 - 1 = 4); a3 does not
    # (12 - 1 = 11); its question u2 needs exactly 12 - 5 = 7 = room, so the window moves to u2, not to a3 alone.
    layout = Layout(prefix=1, starts=(1, 3, 5, 8), roles=("user", "assistant", "user", "assistant"), total=12)
    plan = plan_windows(layout, window=8, history=0.0)
    first, second = plan.windows
    assert (first.first_message, first.group) == (0, 0)
    assert (second.first_message, second.start_token, second.context, second.group) == (2, 5, 1 + 8 - 5, 1)
    assert [g.messages for g in plan.groups] == [(1,), (3,)]


def test_a_turn_whose_own_block_fits_exactly_is_readable() -> None:
    # prefix 1; u0 [1, 4), a1 [4, 9): the turn alone is 5 tokens; window 6 leaves exactly 5.
    layout = Layout(prefix=1, starts=(1, 4), roles=("user", "assistant"), total=9)
    plan = plan_windows(layout, window=6)
    assert plan.unreadable == {}
    assert [(w.message, w.first_message, w.context) for w in plan.windows] == [(1, 1, 1)]
    short = plan_windows(layout, window=5)
    assert short.windows == () and short.groups == ()
    assert short.unreadable[1] == (
        "assistant message 1 needs 5 tokens (its own block) but the window leaves 4 after the 1-token opening"
    )


def test_history_is_a_fraction_of_the_room_left_after_the_prefix() -> None:
    # prefix 10, window 30: room 20; history 0.5 keeps int(0.5 * 20) = 10 tokens before the turn (not 0.5 * 30 = 15).
    # u0 [10, 12) a1 [12, 24) u2 [24, 26) a3 [26, 28) u4 [28, 40) a5 [40, 43). a1 and a3 fit from u0 (14 and 18 of 20).
    # a5 does not (33); u2 (19) and u4 (15) fit; before a5's block u2 leaves 16, u4 leaves 12 >= 10: the latest, u4.
    layout = Layout(prefix=10, starts=(10, 12, 24, 26, 28, 40), roles=("user", "assistant") * 3, total=43)
    plan = plan_windows(layout, window=30, history=0.5)
    assert [(w.message, w.first_message) for w in plan.windows] == [(1, 0), (3, 0), (5, 4)]
    assert plan.windows[-1].context == 10 + 40 - 28
    # history 0.8 keeps int(0.8 * 20) = 16: only u2 leaves that much
    assert plan_windows(layout, window=30, history=0.8).windows[-1].first_message == 2
    # history 1.0 keeps 20: no start leaves that much, so the earliest that fits (u2)
    assert plan_windows(layout, window=30, history=1.0).windows[-1].first_message == 2


def test_windows_refuse_what_cannot_be_cut() -> None:
    layout = Layout(prefix=3, starts=(3, 5), roles=("user", "assistant"), total=9)
    with pytest.raises(WindowError, match="opening .* is 3 tokens: a window of 3"):
        plan_windows(layout, window=3)
    for bad in (0, -1, True, 2.5):
        with pytest.raises(WindowError, match="positive number of tokens"):
            plan_windows(layout, window=bad)  # type: ignore[arg-type]
    for history in (-0.01, 1.01):
        with pytest.raises(WindowError, match=r"history must be a fraction in \[0, 1\]"):
            plan_windows(layout, window=10, history=history)
    assert plan_windows(layout, window=4).unreadable  # room 1: the turn's 4 tokens do not fit
    with pytest.raises(WindowError, match="2 message starts for 1 messages"):
        Layout(prefix=0, starts=(0, 1), roles=("user",), total=3)
    with pytest.raises(WindowError, match="must increase"):
        Layout(prefix=2, starts=(1,), roles=("user",), total=3)
    with pytest.raises(WindowError, match="must increase"):
        Layout(prefix=0, starts=(0, 4), roles=("user", "assistant"), total=3)
    with pytest.raises(WindowError, match="must increase"):
        Layout(prefix=-1, starts=(0,), roles=("user",), total=3)
    assert Layout(prefix=0, starts=(0, 0), roles=("user", "assistant"), total=0).end(1) == 0  # empty blocks are allowed


# --- the floors -------------------------------------------------------------------------------------------------


def test_an_infinite_floor_is_refused_and_minus_inf_means_off() -> None:
    axis = torch.randn(3, 8)
    controls = RowControls(1, 3, 8, cap_directions=axis)
    for bad in (math.inf, float("nan"), True, "1.0"):
        with pytest.raises(InterventionError, match="layer 1: cap threshold must be a finite number or -inf"):
            controls.set_cap(0, {1: bad})  # type: ignore[dict-item]
    assert controls.cap_taus[0] == {} and controls.version == 0  # refused: nothing written
    controls.set_cap(0, {1: -math.inf, 2: 0.5})
    assert controls.cap_taus[0] == {2: 0.5}
    assert controls.tau[0].tolist() == [-math.inf, -math.inf, 0.5]


def test_ties_on_adoption_and_kl_go_to_the_lower_percentile_and_a_threshold_counts_as_0() -> None:
    rows = [
        {"setting": "uncapped", "kl": 0.0, "adoption": 0.9},
        {"setting": "p90", "percentile": 90.0, "kl": 0.01, "adoption": 0.3},
        {"setting": "p25", "percentile": 25.0, "kl": 0.01, "adoption": 0.3},
    ]
    assert recommend(rows)["setting"] == "p25"  # listed after p90, chosen by its percentile
    rows.append({"setting": "t1", "percentile": None, "threshold": 1.0, "kl": 0.01, "adoption": 0.3})
    rows.insert(1, {"setting": "p0.5", "percentile": 0.5, "kl": 0.01, "adoption": 0.3})
    assert recommend(rows)["setting"] == "t1"  # no percentile: 0, below 0.5


def test_every_refusal_names_its_rule_and_bound() -> None:
    worse = [{"setting": "uncapped", "kl": 0.0, "adoption": 0.1}, {"setting": "s", "kl": 0.01, "adoption": 0.5}]
    out = recommend(worse, kl_bound=0.02)
    assert out["rule"].startswith("among capped settings") and out["kl_bound"] == 0.02 and out["setting"] is None
    shift = [{"setting": "s", "kl": 0.01, "adoption": 0.5, "persona_shift": 0.1, "persona_shift_ci": [0.0, 0.2]}]
    out = recommend(shift, kl_bound=0.02, metric="persona_shift")
    assert out["rule"].startswith("among capped settings") and out["kl_bound"] == 0.02 and out["candidate"] == "s"


def test_message_ends_and_window_starts_on_a_hand_made_layout() -> None:
    layout = Layout(prefix=0, starts=(0, 2, 5), roles=("user", "assistant", "user"), total=9)
    assert [layout.end(i) for i in range(3)] == [2, 5, 9]
    with pytest.raises(WindowError) as e:
        plan_windows(Layout(prefix=4, starts=(4,), roles=("user",), total=6), window=4)
    assert str(e.value) == (
        "the conversation's opening (template and system prompt) is 4 tokens: a window of 4 cannot hold it and any message"
    )
    # the history test's layout: a second group starting at u4 (message 4)
    moved = Layout(prefix=10, starts=(10, 12, 24, 26, 28, 40), roles=("user", "assistant") * 3, total=43)
    plan = plan_windows(moved, window=30, history=0.5)
    assert [(g.first_message, g.start_token, g.end, g.messages) for g in plan.groups] == [(0, 10, 28, (1, 3)), (4, 28, 43, (5,))]
    # history 0.6 keeps int(0.6 * 20) = 12: u4 leaves exactly 12 before a5's block, which is enough
    assert plan_windows(moved, window=30, history=0.6).windows[-1].first_message == 4


def test_the_librarys_cap_refuses_an_infinite_floor_too() -> None:
    from backend.hooks.interventions import Cap

    direction = {2: torch.ones(4)}
    for bad in (math.inf, float("nan"), False):
        with pytest.raises(InterventionError) as e:
            Cap(direction, {2: bad})
        assert str(e.value) == f"layer 2: cap threshold must be a finite number or -inf, got {bad!r}"
    assert Cap(direction, {2: -math.inf}).thresholds == {2: -math.inf}
    assert Cap(direction, {2: 1}).thresholds == {2: 1.0}
