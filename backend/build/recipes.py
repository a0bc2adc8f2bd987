"""Role-vector recipes: which answers make each archetype's vector and the default Assistant's, and how.

Pure math on per-answer mean activations; no model, no files. Every recipe returns a vector for every archetype
that said anything (an archetype is *dropped* only when all its answers are empty) and marks an archetype *weak*
when it has fewer than ``min_in_role`` in-role (score 3) answers. Weak archetypes are drawn (their vector comes
from every non-empty answer they gave, by the same recipe) but they never shape the space: the axis and the PCA
are fitted on the other archetypes only (the paper drops them; we keep them on the map, marked).

Recipes (``default`` = the default Assistant's vector):

* ``paper``: the paper's recipe exactly. Roles: mean of score-3 answers. Default: mean of every default answer,
  on all the questions it was asked (a build may ask it more than the roles, e.g. 16 vs 8: the two means then differ by the
  difference of two question sets as well as by persona).
* ``matched``: ``paper`` with the default restricted to the questions the archetypes were asked.
* ``all`` (default): every non-empty answer, judge ignored (it only marks weak archetypes); default on the matched
  questions. Measured best on the embedded model's full build: a weak judge's per-archetype picks add more
  question noise than persona signal.
* ``centred``: score-3 answers, each minus its question's mean (over every archetype's non-empty answers to that
  question) before averaging, plus the mean question effect back (so vectors stay in activation space and
  projections stay comparable with live activations). A role judged in-role on a different subset of questions
  than another then differs by persona only, not by which questions it happened to answer well. Default: the
  same centring on the matched questions.
* ``weighted``: like ``centred`` but every non-empty answer counts, weighted by its judge score / 3.

For a role that answered every question equally often, ``centred`` equals ``matched`` and ``weighted`` with all
scores 3 equals ``all``: centring changes only unbalanced subsets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from backend.errors import PersonaSpaceError

RECIPES = ("paper", "matched", "all", "centred", "weighted")
DEFAULT_RECIPE = "all"  # best on the embedded model's full build (docs/shipped-space.md)
EMPTY = -1  # score of an answer with no token
RECIPE_DOC = {
    "paper": "score-3 answers; default on all its questions (the paper's recipe)",
    "matched": "score-3 answers; default on the archetypes' questions only",
    "all": "every non-empty answer; default on the archetypes' questions",
    "centred": "score-3 answers, each minus its question's mean; default on the archetypes' questions",
    "weighted": "every answer weighted by judge score / 3, each minus its question's mean; default matched",
}


@dataclass(frozen=True)
class Answer:
    """What a recipe needs to know about one answer: whose, to which question, its judge score (-1: empty)."""

    role: str  # DEFAULT for the default Assistant
    question: str
    score: int


@dataclass
class RoleVectors:
    default: torch.Tensor  # (L, d)
    names: list[str]  # archetypes with a vector, in the order asked for
    vectors: torch.Tensor  # (R, L, d)
    weak: list[bool]  # per name
    in_role: dict[str, int]  # score-3 answers per archetype (all asked-for archetypes)
    dropped: dict[str, str]  # archetype -> why it has no vector
    default_questions: int  # how many distinct questions the default vector averages over


def check_recipe(recipe: str) -> str:
    if recipe not in RECIPES:
        raise PersonaSpaceError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    return recipe


def _weighted_mean(x: torch.Tensor, idx: list[int], weights: list[float] | None) -> torch.Tensor | None:
    if not idx:
        return None
    rows = x[idx].double()
    if weights is None:
        return rows.mean(0)
    w = torch.tensor(weights, dtype=torch.float64)
    if float(w.sum()) <= 0:
        return None
    return (rows * w[:, None, None]).sum(0) / w.sum()


def role_vectors(
    answers: Sequence[Answer],
    means: torch.Tensor,
    roles: Sequence[str],
    recipe: str,
    min_in_role: int,
    default_role: str,
) -> RoleVectors:
    """Vectors of the default Assistant and of every archetype in ``roles`` from per-answer means ``(N, L, d)``."""
    check_recipe(recipe)
    if len(answers) != means.shape[0]:
        raise PersonaSpaceError(f"{len(answers)} answers but {means.shape[0]} activation means")
    x = means.double()
    usable = [a.score != EMPTY for a in answers]
    role_questions = {a.question for a, ok in zip(answers, usable, strict=True) if ok and a.role != default_role}
    centre = recipe in ("centred", "weighted")
    shift = torch.zeros_like(x)
    offset = torch.zeros(x.shape[1:], dtype=torch.float64)
    if centre:
        by_q: dict[str, list[int]] = {}
        for i, a in enumerate(answers):
            if usable[i] and a.role != default_role:
                by_q.setdefault(a.question, []).append(i)
        q_mean = {q: x[idx].mean(0) for q, idx in by_q.items()}
        offset = torch.stack(list(q_mean.values())).mean(0) if q_mean else offset
        for i, a in enumerate(answers):
            if a.question in q_mean:
                shift[i] = q_mean[a.question] - offset
    y = x - shift  # centred answers, mean question effect kept

    default_idx = [
        i for i, a in enumerate(answers)
        if a.role == default_role and usable[i] and (recipe == "paper" or a.question in role_questions)
    ]  # fmt: skip
    if not default_idx:
        raise PersonaSpaceError(
            "no usable default-Assistant answer"
            + ("" if recipe == "paper" else " on the archetypes' questions")
            + "; cannot place the Assistant"
        )
    default = y[default_idx].mean(0)

    names: list[str] = []
    vectors: list[torch.Tensor] = []
    weak: list[bool] = []
    in_role: dict[str, int] = {}
    dropped: dict[str, str] = {}
    for name in roles:
        idx = [i for i, a in enumerate(answers) if a.role == name and usable[i]]
        total = sum(1 for a in answers if a.role == name)
        three = [i for i in idx if answers[i].score == 3]
        in_role[name] = len(three)
        if not idx:
            dropped[name] = f"no usable answer: all {total} answers were empty"
            continue
        is_weak = len(three) < min_in_role
        if recipe in ("all",) or is_weak:
            vector = _weighted_mean(y, idx, None)
        elif recipe == "weighted":
            vector = _weighted_mean(y, idx, [max(0, answers[i].score) / 3 for i in idx])
        else:  # paper, matched, centred
            vector = _weighted_mean(y, three, None)
        if vector is None:  # weighted with every score 0: fall back to every answer
            vector = _weighted_mean(y, idx, None)
        assert vector is not None
        names.append(name)
        vectors.append(vector)
        weak.append(is_weak)
    if not vectors:
        raise PersonaSpaceError("no archetype gave any non-empty answer")
    return RoleVectors(
        default=default.float(),
        names=names,
        vectors=torch.stack(vectors).float(),
        weak=weak,
        in_role=in_role,
        dropped=dropped,
        default_questions=len({answers[i].question for i in default_idx}),
    )
