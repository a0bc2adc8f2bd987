"""Trait-expression judges: the offline embedding judge tells a trait from its opposite; the OpenAI-compatible judge
asks for a 0-100 score and reads it back (against the scripted local server)."""

from __future__ import annotations

from typing import Any

import pytest

from backend.catalogue.traits import load_traits, trait_of
from backend.judges.llm import JudgeError
from backend.judges.trait_llm import TRAIT_RUBRIC, OpenAITraitJudge, parse_expression
from backend.judges.traits import EmbeddingTraitJudge, expression_score
from tests.helpers.chat_server import Reply, Server, ok


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def test_expression_score_is_a_monotone_0_100_scale() -> None:
    assert expression_score(0.0) == 50 and expression_score(10.0) == 100 and expression_score(-10.0) == 0
    assert expression_score(0.01) < expression_score(0.02) < expression_score(0.05)


def test_embedding_judge_tells_a_trait_from_its_opposite() -> None:
    traits = [trait_of(load_traits(), n) for n in ("pessimistic", "calm", "verbose")]
    judge = EmbeddingTraitJudge(traits)
    gloomy = "It will probably fail. Things like this always go wrong, and I expect the worst."
    hopeful = "It will almost certainly work out well! There is every reason to be hopeful and look on the bright side."
    scores = [j.score for j in judge.score(["pessimistic", "pessimistic"], [gloomy, hopeful])]
    assert scores[0] > 50 > scores[1]
    rattled = "I'm so tense and flustered, everything is rattling me, I can't cope with this pressure!"
    assert judge.score(["calm"], [rattled])[0].score < 50
    assert "profiles=" in judge.identity and judge.score([], []) == []


def test_parse_expression() -> None:
    assert parse_expression("Score: 85") == 85 and parse_expression("100") == 100 and parse_expression("0") == 0
    assert parse_expression("250") is None and parse_expression("7.5") is None and parse_expression("none") is None


def test_openai_trait_judge_asks_for_0_to_100(server: Server) -> None:
    def respond(body: dict[str, Any], n: int) -> Reply:
        return ok("I think it is quite blunt" if n == 0 else "Score: 85")

    server.respond = respond
    judge = OpenAITraitJudge(load_traits(), "sk-test", base_url=server.base_url, model="judge-test", timeout_s=5.0)
    judged = judge.score(["blunt"], ["Your plan is bad. Start again."])
    assert judged[0].score == 85 and judged[0].reason == "openai-trait judge-test: 85/100"
    first = server.seen[0].body
    assert first["messages"][0]["content"] == TRAIT_RUBRIC and "Trait: blunt" in first["messages"][1]["content"]
    assert "Its opposite: Gentle and tactful" in first["messages"][1]["content"]
    assert len(server.seen) == 2  # the reply without a number was asked again
    with pytest.raises(JudgeError, match="no description for trait"):
        judge.score(["wizardly"], ["hm"])


def test_openai_trait_judge_from_the_environment(server: Server) -> None:
    env = {
        "PERSONA_SPACE_JUDGE_BASE_URL": server.base_url,
        "PERSONA_SPACE_JUDGE_API_KEY": "sk-test",
        "PERSONA_SPACE_JUDGE_MODEL": "m",
    }
    server.respond = lambda body, n: ok("70")
    judge = OpenAITraitJudge.for_traits(load_traits(), env)
    assert judge.model == "m" and judge.score(["calm"], ["All is well."])[0].score == 70
    with pytest.raises(JudgeError, match="no API key"):
        OpenAITraitJudge.for_traits(load_traits(), {})
