"""A trait build's settings (``build-traits``): what it generates, how it judges, how trait vectors are kept.

Generation goes through the persona build's executors (in-process, Ray, served), which read a
:class:`~backend.build.settings.BuildSettings`: :meth:`TraitSettings.executor_settings` is that view.
:meth:`TraitSettings.generation_key` hashes only what changes the answers, so a judge or threshold change reuses
a work folder.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from backend.build.settings import BuildSettings, check_generator
from backend.errors import PersonaSpaceError

TRAIT_GENERATION_FIELDS = (
    "pairs_per_trait", "questions_per_instruction", "max_new_tokens", "temperature", "top_p", "seed", "batch_size", "traits",
)  # fmt: skip


@dataclass(frozen=True)
class TraitSettings:
    pairs_per_trait: int = 5
    questions_per_instruction: int = 4
    max_new_tokens: int = 32
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int = 0
    batch_size: int = 48
    judge: str = "embedding"
    threshold: int = 50  # expressing: a positive scoring >= threshold; not expressing: a negative scoring below it
    min_kept: int = 5  # fewer expressing positives or non-expressing negatives: the trait is weak
    traits: tuple[str, ...] | None = None  # a subset of the catalogue (default: every trait)
    generator: str = "hf"
    generator_urls: tuple[str, ...] = ()
    generator_models: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_generator(self)  # type: ignore[arg-type]  # same generator fields as BuildSettings
        if self.traits is not None:
            object.__setattr__(self, "traits", tuple(self.traits))
        from backend.judges.traits import JUDGES

        if self.judge not in JUDGES:
            raise PersonaSpaceError(f"unknown trait judge {self.judge!r}; choose {', '.join(JUDGES)}")
        checks = {
            "pairs_per_trait": (self.pairs_per_trait, 1, 5),
            "questions_per_instruction": (self.questions_per_instruction, 1, 10_000),
            "max_new_tokens": (self.max_new_tokens, 1, 4096),
            "batch_size": (self.batch_size, 1, 4096),
            "threshold": (self.threshold, 1, 100),
            "min_kept": (self.min_kept, 1, 100_000),
        }
        for name, (value, lo, hi) in checks.items():
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise PersonaSpaceError(f"{name} must be an integer in {lo}..{hi}, got {value!r}")
        if not (0 < self.temperature <= 5 and 0 < self.top_p <= 1):
            raise PersonaSpaceError(f"need 0 < temperature <= 5 and 0 < top_p <= 1, got {self.temperature}, {self.top_p}")

    def executor_settings(self) -> BuildSettings:
        """The view the generation executors read (batch, sampling, seed, generator)."""
        return BuildSettings(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            seed=self.seed,
            batch_size=self.batch_size,
            judge="none",
            generator=self.generator,
            generator_urls=self.generator_urls,
            generator_models=self.generator_models,
        )

    def generation_key(self) -> str:
        fields = {k: v for k, v in asdict(self).items() if k in TRAIT_GENERATION_FIELDS}
        fields["kind"] = "traits"
        fields["generator"] = self.generator
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
