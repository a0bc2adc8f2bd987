"""Role-vector recipes on synthetic activations with a planted persona direction and planted question effects."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.build.recipes import EMPTY, RECIPES, Answer, role_vectors
from backend.errors import PersonaSpaceError
from backend.maths.pca import fit_pca

D, N_ROLES, ROLE_QS, DEFAULT_QS = 24, 14, 8, 24


def planted(seed: int = 0, subsets: bool = False) -> tuple[list[Answer], torch.Tensor, np.ndarray]:
    """Answers = question effect (large, random) + persona strength x P + noise. The default is at +3 on P and
    is asked 24 questions; each role is at s_r in [-2, 1] and asked the first 8. With ``subsets`` each role is
    judged in role (3) on its own random half of its questions only (1 on the rest)."""
    g = np.random.default_rng(seed)
    persona = np.zeros(D)
    persona[0] = 1.0
    effects = g.normal(0, 20 / np.sqrt(D), (DEFAULT_QS, D))
    effects[:, 0] = 0  # question effects orthogonal to the persona direction, as large as a few personas
    answers, rows = [], []
    for q in range(DEFAULT_QS):
        for _ in range(3):
            answers.append(Answer("default", f"q{q}", 3))
            rows.append(effects[q] + 3 * persona + g.normal(0, 0.1, D))
    strengths = np.linspace(-2, 1, N_ROLES)
    for r in range(N_ROLES):
        good = set(g.choice(ROLE_QS, ROLE_QS // 2, replace=False)) if subsets else set(range(ROLE_QS))
        for q in range(ROLE_QS):
            for _ in range(3):
                answers.append(Answer(f"r{r}", f"q{q}", 3 if q in good else 1))
                rows.append(effects[q] + strengths[r] * persona + g.normal(0, 0.1, D))
    means = torch.tensor(np.array(rows))[:, None, :].float()  # one layer
    return answers, means, persona


def directions(recipe: str, subsets: bool) -> tuple[float, float]:
    """|cos(axis, P)| and |cos(PC1, P)| for a recipe."""
    answers, means, persona = planted(subsets=subsets)
    rv = role_vectors(answers, means, [f"r{r}" for r in range(N_ROLES)], recipe, min_in_role=1, default_role="default")
    axis = (rv.default - rv.vectors.mean(0))[0].double().numpy()
    pc1 = fit_pca(rv.vectors[:, 0]).components[0]
    cos_axis = abs(axis @ persona) / np.linalg.norm(axis)
    return float(cos_axis), float(abs(pc1 @ persona))


def test_matched_questions_recover_the_planted_axis_and_mismatched_do_not() -> None:
    paper_axis, _ = directions("paper", subsets=False)
    for recipe in ("matched", "all", "centred", "weighted"):
        cos_axis, cos_pc1 = directions(recipe, subsets=False)
        assert cos_axis > 0.99 and cos_pc1 > 0.99, recipe
    assert paper_axis < 0.6  # the 24-vs-8 question difference dominates the paper's axis


def test_centring_removes_question_subsets_that_the_judge_lets_in() -> None:
    for recipe in ("centred", "weighted"):
        cos_axis, cos_pc1 = directions(recipe, subsets=True)
        assert cos_axis > 0.97 and cos_pc1 > 0.97, recipe
    cos_axis, cos_pc1 = directions("matched", subsets=True)
    assert cos_pc1 < 0.6  # each role averaged over its own questions: PC1 follows question content
    assert directions("all", subsets=True)[1] > 0.99  # ignoring the judge also avoids the leak


def test_balanced_answers_give_the_same_vectors_with_or_without_centring() -> None:
    answers, means, _ = planted(subsets=False)
    names = [f"r{r}" for r in range(N_ROLES)]
    matched = role_vectors(answers, means, names, "matched", 1, "default")
    centred = role_vectors(answers, means, names, "centred", 1, "default")
    torch.testing.assert_close(centred.vectors, matched.vectors, rtol=0, atol=1e-4)
    torch.testing.assert_close(centred.default, matched.default, rtol=0, atol=1e-4)
    assert matched.default_questions == ROLE_QS
    assert role_vectors(answers, means, names, "paper", 1, "default").default_questions == DEFAULT_QS


def test_every_archetype_that_said_something_gets_a_vector_weak_or_not() -> None:
    answers, means, _ = planted(subsets=True)
    answers = [Answer(a.role, a.question, 1) if a.role == "r2" else a for a in answers]  # never in role
    answers = [Answer(a.role, a.question, EMPTY) if a.role == "r3" else a for a in answers]  # never said anything
    names = [f"r{r}" for r in range(N_ROLES)]
    for recipe in RECIPES:
        rv = role_vectors(answers, means, names, recipe, min_in_role=5, default_role="default")
        assert rv.names == [n for n in names if n != "r3"]
        assert dict(zip(rv.names, rv.weak, strict=True))["r2"] is True and sum(rv.weak) == 1
        assert rv.in_role["r2"] == 0 and rv.in_role["r0"] == 12
        assert "all 24 answers were empty" in rv.dropped["r3"]
        # a weak role's vector is the plain mean of what it said (with the recipe's centring)
        if recipe in ("paper", "matched", "all"):
            idx = [i for i, a in enumerate(answers) if a.role == "r2"]
            torch.testing.assert_close(rv.vectors[rv.names.index("r2")], means[idx].double().mean(0).float())


def test_bad_recipe_and_no_default_are_clear_errors() -> None:
    answers, means, _ = planted()
    with pytest.raises(PersonaSpaceError, match="unknown recipe 'best'"):
        role_vectors(answers, means, ["r0"], "best", 1, "default")
    no_default = [Answer(a.role, "elsewhere", a.score) if a.role == "default" else a for a in answers]
    with pytest.raises(PersonaSpaceError, match="no usable default-Assistant answer on the archetypes' questions"):
        role_vectors(no_default, means, ["r0"], "matched", 1, "default")
    assert role_vectors(no_default, means, ["r0"], "paper", 1, "default").default_questions == 1


def test_the_paper_recipe_is_the_papers_formula() -> None:
    answers, means, _ = planted(subsets=True)
    names = [f"r{r}" for r in range(N_ROLES)]
    rv = role_vectors(answers, means, names, "paper", min_in_role=1, default_role="default")
    default = [i for i, a in enumerate(answers) if a.role == "default"]  # every default answer, all 24 questions
    torch.testing.assert_close(rv.default, means[default].double().mean(0).float())
    for name, vector in zip(rv.names, rv.vectors, strict=True):
        three = [i for i, a in enumerate(answers) if a.role == name and a.score == 3]  # score-3 answers only
        torch.testing.assert_close(vector, means[three].double().mean(0).float())
