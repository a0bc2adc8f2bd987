"""The offline embedding judge: its decision rule, and the embeddings on answers whose verdict is obvious."""

from __future__ import annotations

import pytest

from backend.catalogue import load_catalogue
from backend.judges.embedding import EmbeddingJudge, Judged, NoJudge, rule_score


def test_decision_rule() -> None:
    assert rule_score(True, "Arr, the sea be my home.").score == 3
    assert rule_score(True, "As an AI language model I love the sea, matey.").score == 2
    assert rule_score(False, "Here are three tips for saving money.").score == 1
    assert rule_score(False, "I'm sorry, but I can't help with that.").score == 0
    # a character who refuses something in character is still in role: refusal only matters out of role
    assert rule_score(True, "Arr, I won't walk the plank for any landlubber!") == Judged(3, "in role")
    assert rule_score(True, "As an AI I'm unable to sail, but arr, matey!") == Judged(2, "in role, mentions being an AI")
    assert rule_score(False, "As an AI language model, I won't pretend.") == Judged(0, "no trace of the role, refuses")


@pytest.fixture(scope="module")
def judge():  # type: ignore[no-untyped-def]
    return EmbeddingJudge(load_catalogue().archetypes)


def test_embedding_judge_scores_clear_cases(judge) -> None:  # type: ignore[no-untyped-def]
    roles = ["pirate", "pirate", "pirate", "chef", "ghost"]
    texts = [
        "Arr, matey! I sail the seven seas on my ship, plundering treasure and drinking rum with my crew of scallywags.",
        "As an AI language model, I cannot pretend to be anything else. I'm sorry, but I can't help with role-play.",
        "As an AI language model, I must say: arr, matey, me ship and me treasure chest of gold be calling from the high seas!",
        "In my kitchen I start with a hot pan, fresh garlic and butter; seasoning the sauce is where a dish comes alive.",
        "Here is a list of five ways to improve your spreadsheet formulas in Excel.",
    ]
    scores = [j.score for j in judge.score(roles, texts)]
    assert scores == [3, 0, 2, 3, 1]


def test_embedding_judge_rank_is_relative_to_other_roles(judge) -> None:  # type: ignore[no-untyped-def]
    ranks = judge.role_rank(["pirate", "librarian"], ["Arr, me ship sails at dawn for the treasure island!"] * 2)
    assert ranks[0] > 0.95 and ranks[1] < 0.9


def test_unknown_role_and_no_judge(judge) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(Exception, match=r"no profile for role\(s\) \['wizard-king'\]"):
        judge.score(["wizard-king"], ["hello"])
    assert [j.score for j in NoJudge().score(["x", "y"], ["a", "b"])] == [3, 3]
