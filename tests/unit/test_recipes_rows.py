"""Role-vector recipes on a hand-made table (the mutation pass's survivors, ``make mutation``): every expected vector
is a mean written out here with plain Python, never the recipe code."""

from __future__ import annotations

import pytest
import torch

from backend.build.recipes import RECIPES, Answer, check_recipe, role_vectors
from backend.errors import PersonaSpaceError

D = "default"


def table(rows: list[tuple[str, str, int, float]]) -> tuple[list[Answer], torch.Tensor]:
    """(role, question, score, value): each answer's mean activation is ``value`` at one layer, one dimension."""
    answers = [Answer(role, q, score) for role, q, score, _ in rows]
    return answers, torch.tensor([[[v]] for *_, v in rows], dtype=torch.float64)


def vec(out, name: str) -> float:  # type: ignore[no-untyped-def]
    return float(out.vectors[out.names.index(name), 0, 0])


def test_weighted_weighs_each_answer_by_its_score_over_3() -> None:
    answers, means = table([(D, "q1", 3, 0.0), ("pirate", "q1", 3, 3.0), ("pirate", "q2", 1, 6.0), ("pirate", "q3", 0, 9.0)])
    # no centring effect to speak of for a single role? centring subtracts each question's mean over the roles'
    # answers and adds the mean question effect back: with one role, every answer becomes that mean, (3+6+9)/3 = 6
    out = role_vectors(answers, means, ["pirate"], "weighted", min_in_role=1, default_role=D)
    assert vec(out, "pirate") == pytest.approx(6.0)
    two = table([(D, "q1", 3, 0.0), ("a", "q1", 3, 3.0), ("a", "q2", 1, 6.0), ("b", "q1", 0, 1.0), ("b", "q2", 3, 2.0)])
    out = role_vectors(*two, ["a", "b"], "weighted", min_in_role=1, default_role=D)
    # question means over roles: q1 (3+1)/2 = 2, q2 (6+2)/2 = 4; offset (2+4)/2 = 3; shifts q1 -1, q2 +1
    # a: centred values 3+1 = 4 (w 1), 6-1 = 5 (w 1/3): (4 + 5/3) / (4/3) = 4.25; b: 1+1 = 2 (w 0), 2-1 = 1 (w 1): 1
    assert vec(out, "a") == pytest.approx(4.25) and vec(out, "b") == pytest.approx(1.0)
    assert float(out.default[0, 0]) == pytest.approx(0.0 + 1.0)  # the default's q1 answer, shifted like q1


def test_weighted_with_weights_summing_to_1_or_0() -> None:
    # scores 3 and 0: weights 1 and 0 sum to 1, so the vector is the score-3 answer alone (not a fallback)
    answers, means = table([(D, "q1", 3, 0.0), ("a", "q1", 3, 2.0), ("a", "q1", 0, 8.0)])
    out = role_vectors(answers, means, ["a"], "weighted", min_in_role=1, default_role=D)
    assert vec(out, "a") == pytest.approx(2.0)
    # every score 0: the weights sum to 0, so every answer counts equally, (2 + 8) / 2
    answers, means = table([(D, "q1", 3, 0.0), ("a", "q1", 0, 2.0), ("a", "q1", 0, 8.0)])
    out = role_vectors(answers, means, ["a"], "weighted", min_in_role=0, default_role=D)
    assert vec(out, "a") == pytest.approx(5.0) and out.weak == [False]


def test_an_archetype_with_exactly_min_in_role_answers_is_not_weak() -> None:
    answers, means = table([(D, "q1", 3, 0.0), ("a", "q1", 3, 2.0), ("a", "q2", 1, 8.0), (D, "q2", 3, 0.0)])
    out = role_vectors(answers, means, ["a"], "paper", min_in_role=1, default_role=D)
    assert out.weak == [False] and vec(out, "a") == pytest.approx(2.0)  # the score-3 answer only
    weak = role_vectors(answers, means, ["a"], "paper", min_in_role=2, default_role=D)
    assert weak.weak == [True] and vec(weak, "a") == pytest.approx(5.0)  # weak: every non-empty answer


def test_recipe_errors_say_what_is_missing() -> None:
    with pytest.raises(PersonaSpaceError) as e:
        check_recipe("nope")
    assert str(e.value) == "unknown recipe 'nope'; choose one of " + ", ".join(RECIPES)
    assert str(e.value).endswith("paper, matched, all, centred, weighted")
    answers, means = table([(D, "q9", 3, 0.0), ("a", "q1", 3, 1.0)])
    with pytest.raises(PersonaSpaceError) as e:
        role_vectors(answers, means[:1].expand(1, 3, 1), ["a"], "all", 1, D)
    assert str(e.value) == "2 answers but 1 activation means"
    for recipe in ("matched", "centred"):
        with pytest.raises(PersonaSpaceError) as e:
            role_vectors(answers, means, ["a"], recipe, 1, D)
        assert str(e.value) == "no usable default-Assistant answer on the archetypes' questions; cannot place the Assistant"
    with pytest.raises(PersonaSpaceError) as e:
        role_vectors([Answer("a", "q1", 3)], means[1:], ["a"], "paper", 1, D)
    assert str(e.value) == "no usable default-Assistant answer; cannot place the Assistant"
    assert role_vectors(answers, means, ["a"], "paper", 1, D).default_questions == 1  # paper: every default answer
    # every archetype answer empty: centring has no question to centre on, and nothing can be placed
    empty = table([(D, "q1", 3, 0.0), ("a", "q1", -1, 1.0)])
    for recipe in ("centred", "weighted"):
        with pytest.raises(PersonaSpaceError, match="no usable default-Assistant answer on the archetypes' questions"):
            role_vectors(*empty, ["a"], recipe, 1, D)
    with pytest.raises(PersonaSpaceError) as e:
        role_vectors(*empty, ["a"], "paper", 1, D)
    assert str(e.value) == "no archetype gave any non-empty answer"
