"""A build's settings: what a build makes (generation) and how its space is computed (judge, recipe, layers).

:meth:`BuildSettings.generation_key` hashes only the fields that change the generated answers, so a work folder
can be reused by a rebuild that changes the judge, the recipe or the space's math. ``BUILD_VERSION`` changes when
the same settings would give other answers.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass

from backend.build.recipes import DEFAULT_RECIPE, check_recipe
from backend.errors import PersonaSpaceError

GENERATORS = ("hf", "openai")


def check_generator(settings: BuildSettings) -> None:
    """Validate the generator fields of :class:`~backend.build.settings.BuildSettings` (lists from JSON become tuples)."""
    for name in ("generator_urls", "generator_models"):
        object.__setattr__(settings, name, tuple(getattr(settings, name)))
    if settings.generator not in GENERATORS:
        raise PersonaSpaceError(f"unknown generator {settings.generator!r}; choose one of {', '.join(GENERATORS)}")
    if settings.generator == "openai" and not settings.generator_urls:
        raise PersonaSpaceError("--generator openai needs --generator-url URL[,URL...] (e.g. http://localhost:8000/v1)")
    if settings.generator == "hf" and settings.generator_urls:
        raise PersonaSpaceError("--generator-url is only used with --generator openai")


# 2: answers sampled on the decode engine (backend/decode/engine.py, a seeded generator per chunk); 1: HF ``generate``
BUILD_VERSION = 2


@dataclass(frozen=True)
class BuildSettings:
    prompts_per_role: int = 5
    questions_per_role: int = 8
    default_questions: int = 40
    max_new_tokens: int = 32
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int = 0
    batch_size: int = 48
    judge: str = "embedding"
    min_in_role: int = 10
    percentiles: tuple[float, ...] = (1.0, 25.0, 50.0, 75.0)
    pca_components: int = 20
    umap_neighbors: int = 15
    roles: tuple[str, ...] | None = None
    recipe: str = DEFAULT_RECIPE
    target_layer: int | None = None  # None: the model's own target layer
    generator: str = "hf"  # "hf": in-process; "openai": a completions server (backend/build/served.py)
    generator_urls: tuple[str, ...] = ()
    generator_models: tuple[str, ...] = ()  # what the servers reported (recorded, not a setting)

    def __post_init__(self) -> None:
        check_recipe(self.recipe)
        check_generator(self)
        if self.target_layer is not None and (isinstance(self.target_layer, bool) or self.target_layer < 0):
            raise PersonaSpaceError(f"target_layer must be a layer index >= 0, got {self.target_layer!r}")
        checks = {
            "prompts_per_role": (self.prompts_per_role, 1, 100),
            "questions_per_role": (self.questions_per_role, 1, 10_000),
            "default_questions": (self.default_questions, 1, 10_000),
            "max_new_tokens": (self.max_new_tokens, 1, 4096),
            "batch_size": (self.batch_size, 1, 4096),
            "min_in_role": (self.min_in_role, 1, 100_000),
            "pca_components": (self.pca_components, 1, 10_000),
            "umap_neighbors": (self.umap_neighbors, 2, 1000),
        }
        for name, (value, lo, hi) in checks.items():
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise PersonaSpaceError(f"{name} must be an integer in {lo}..{hi}, got {value!r}")
        if not (0 < self.temperature <= 5 and 0 < self.top_p <= 1):
            raise PersonaSpaceError(f"need 0 < temperature <= 5 and 0 < top_p <= 1, got {self.temperature}, {self.top_p}")
        for p in self.percentiles:
            if not (math.isfinite(p) and 0 <= p <= 100):
                raise PersonaSpaceError(f"percentiles must be in [0, 100], got {p}")

    def generation_key(self) -> str:
        """Hash of everything that changes the generated answers (not the judge or the space's math)."""
        fields = {k: v for k, v in asdict(self).items() if k in GENERATION_FIELDS}
        if self.generator != "hf":  # another generator gives other answers; "hf" keeps the keys of older folders
            fields["generator"] = self.generator
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


GENERATION_FIELDS = (
    "prompts_per_role", "questions_per_role", "default_questions", "max_new_tokens", "temperature", "top_p",
    "seed", "batch_size", "roles",
)  # fmt: skip
