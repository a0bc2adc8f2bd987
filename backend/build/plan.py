"""The build's plan: which answers a build makes, in which fixed order, cut into chunks with their own seeds.

Everything here is plain data and arithmetic (no model): every executor of a build (one process, ``--shard``,
Ray actors) works from the same plan, so they all make the same answers.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass

from backend.build.settings import BuildSettings
from backend.catalogue import DEFAULT_ROLE, QUESTION_KINDS, Catalogue, Question
from backend.errors import PersonaSpaceError


@dataclass(frozen=True)
class Unit:
    """One answer to generate: a role (or the default), one of its system prompts, one question."""

    role: str
    prompt: str  # prompt index ("0".."4") or default prompt id
    question: str  # question id
    system: str | None
    text: str

    @property
    def key(self) -> str:
        return f"{self.role}|{self.prompt}|{self.question}"


def select_questions(questions: Sequence[Question], k: int, seed: int) -> list[Question]:
    """``k`` questions balanced over kinds: a seeded shuffle within each kind, then round-robin across kinds.

    Every selection is a prefix of a longer one, so the roles' questions are also among the defaults'.
    """
    rng = random.Random(seed)
    by_kind: dict[str, list[Question]] = {kind: [q for q in questions if q.kind == kind] for kind in QUESTION_KINDS}
    for pool in by_kind.values():
        rng.shuffle(pool)
    ordered: list[Question] = []
    while len(ordered) < min(k, len(questions)):
        for kind in QUESTION_KINDS:
            if by_kind[kind] and len(ordered) < k:
                ordered.append(by_kind[kind].pop(0))
    return ordered


def plan_units(catalogue: Catalogue, settings: BuildSettings, model_name: str) -> list[Unit]:
    """Every answer of the build, in a fixed order: defaults first, then roles (prompts, then questions)."""
    selection = select_questions(catalogue.questions, max(settings.questions_per_role, settings.default_questions), settings.seed)
    role_questions = selection[: settings.questions_per_role]
    default_questions = selection[: settings.default_questions]
    units = [Unit(DEFAULT_ROLE, d.id, q.id, d.render(model_name), q.text) for d in catalogue.defaults for q in default_questions]
    names = settings.roles if settings.roles is not None else tuple(a.name for a in catalogue.archetypes)
    for name in names:
        archetype = catalogue.archetype(name)
        for p, system in enumerate(archetype.prompts[: settings.prompts_per_role]):
            units.extend(Unit(name, str(p), q.id, system, q.text) for q in role_questions)
    return units


def chunks_of(units: Sequence[Unit], batch_size: int) -> list[list[Unit]]:
    return [list(units[i : i + batch_size]) for i in range(0, len(units), batch_size)]


def parse_shard(text: str | None) -> tuple[int, int]:
    if text is None:
        return 0, 1
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError as exc:
        raise PersonaSpaceError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from exc
    if not (n >= 1 and 0 <= i < n):
        raise PersonaSpaceError(f"--shard {text}: need 0 <= i < n")
    return i, n


def chunk_seed(seed: int, index: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{index}".encode()).digest()[:4], "little")
