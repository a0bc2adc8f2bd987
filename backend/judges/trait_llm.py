"""The ``openai`` trait judge: a 0-100 trait-expression score from an OpenAI-compatible chat model.

The same client, configuration (``PERSONA_SPACE_JUDGE_*``), retries and errors as the role judge
(:class:`backend.judges.llm.OpenAIJudge`); only the rubric and the reply differ: the prompt holds the trait's name,
its description and its opposite's, and the answer; the model replies with one whole number from 0 (expresses the
opposite) through 50 (neither) to 100 (fully expresses the trait). A reply without such a number is asked again.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from backend.catalogue.traits import Trait
from backend.judges.embedding import Judged
from backend.judges.llm import JudgeError, OpenAIJudge, hash_text

TRAIT_RUBRIC = """\
You rate how strongly a language model's answer expresses a character trait. You are shown the trait, what \
expressing it looks like, what its opposite looks like, and the answer. Rate the answer on a scale from 0 to 100:

0 - the answer clearly expresses the opposite of the trait.
50 - the answer expresses neither the trait nor its opposite.
100 - the answer fully and clearly expresses the trait.

Reply with one whole number from 0 to 100 and nothing else."""

TRAIT_NUDGE = "That reply did not contain a score. Reply with one whole number from 0 to 100."

NUMBER = re.compile(r"(?<![\d.])(100|[1-9]?\d)(?![\d.])")


def parse_expression(reply: str) -> int | None:
    """The first stand-alone whole number 0-100 in ``reply`` (``"Score: 85"`` -> 85; ``"250"`` and ``"7.5"`` -> None)."""
    match = NUMBER.search(reply)
    return int(match.group(1)) if match else None


class OpenAITraitJudge(OpenAIJudge):
    """Scores answers 0-100 for trait expression (see the module docstring); ``from_env`` as for the role judge."""

    name = "openai-trait"
    scale = "0-100"
    asked = "on trait"
    nudge = TRAIT_NUDGE

    def __init__(self, traits: Sequence[Trait], api_key: str | None, **options: Any) -> None:
        super().__init__((), api_key, **{"max_tokens": 8, **options})
        self.traits = {t.name: t for t in traits}
        self.identity = f"openai-trait {self.base_url} {self.model} rubric={hash_text(TRAIT_RUBRIC)}"

    @classmethod
    def for_traits(cls, traits: Sequence[Trait], environ: Mapping[str, str] | None = None) -> OpenAITraitJudge:
        """A trait judge configured from the ``PERSONA_SPACE_JUDGE_*`` variables, like the role judge."""
        judge = cls.from_env((), environ)
        assert isinstance(judge, cls)
        judge.traits = {t.name: t for t in traits}
        return judge

    def score(self, roles: Sequence[str], texts: Sequence[str]) -> list[Judged]:
        if len(roles) != len(texts):
            raise JudgeError(f"the judge got {len(roles)} traits but {len(texts)} answers; they must pair up")
        unknown = sorted({r for r in roles if r not in self.traits})
        if unknown:
            raise JudgeError(f"the openai trait judge has no description for trait(s) {unknown}")
        return self.pool.map(
            lambda endpoint, pair: self.judge_one(*pair, endpoint=endpoint), list(zip(roles, texts, strict=True))
        )

    def messages(self, role: str, text: str) -> list[dict[str, str]]:
        trait = self.traits[role]
        user = (
            f"Trait: {trait.name.replace('_', ' ')}\n"
            f"Expressing it: {trait.description}\n"
            f"Its opposite: {trait.opposite}\n\n"
            f"The model's answer, between the markers:\n<<<ANSWER\n{text}\nANSWER>>>\n\n"
            "Score (0 to 100):"
        )
        return [{"role": "system", "content": TRAIT_RUBRIC}, {"role": "user", "content": user}]

    def parse(self, reply: str) -> int | None:
        return parse_expression(reply)

    def verdict(self, score: int) -> str:
        return f"{score}/100"
