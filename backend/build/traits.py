"""The trait build (``build-traits``): answers under each trait's instructions -> capture -> judge -> trait vectors,
added to an existing persona space.

The same pipeline as the persona build (:mod:`backend.build.pipeline`): a fixed plan of answers cut into chunks,
each chunk written to a work folder as it finishes (a killed build resumes; ``--shard i/n`` builds every n-th
chunk; shards merged in one work folder give exactly the traits one run gives), generation in this process, on Ray
actors or on OpenAI-compatible servers, with the residual stream captured on the answer's content tokens. Then a
trait-expression judge scores every answer 0-100 (:mod:`backend.judges.traits`), and each trait's vector is
``mean(expressing trait answers) - mean(non-expressing opposite answers)`` per layer
(:mod:`backend.maths.contrast`), weak traits marked. The vectors and their record go into the space folder
(:mod:`backend.store.traits`).

The plan: traits in catalogue order, then pairs, then the trait's instruction before its opposite's, then the
questions (the persona build's balanced selection of the catalogue's questions). A unit's ``role`` is the trait,
its ``prompt`` ``"<pair>+"`` (the trait's instruction) or ``"<pair>-"`` (the opposite's).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from backend.build.local import ChunkExecutor, run_generation
from backend.build.pipeline import check_places, collect, run_judge
from backend.build.plan import Unit, chunks_of, select_questions
from backend.build.served import recorded_servers, run_served_generation
from backend.build.trait_settings import TraitSettings
from backend.build.workfolder import WorkFolder
from backend.catalogue import Question
from backend.catalogue.traits import Trait, trait_of
from backend.errors import PersonaSpaceError
from backend.maths.contrast import EMPTY, Contrasted, contrast_vectors
from backend.models.loading import LoadedModel
from backend.store.space import load_space
from backend.store.traits import add_traits

PLAN_FILE = "trait-plan.json"


def chosen(traits: Sequence[Trait], settings: TraitSettings) -> list[Trait]:
    if settings.traits is None:
        return list(traits)
    return [trait_of(traits, name) for name in settings.traits]


def plan_trait_units(traits: Sequence[Trait], questions: Sequence[Question], settings: TraitSettings) -> list[Unit]:
    """Every answer of the trait build, in its fixed order (see the module docstring)."""
    selection = select_questions(questions, settings.questions_per_instruction, settings.seed)
    units: list[Unit] = []
    for trait in chosen(traits, settings):
        for p in range(settings.pairs_per_trait):
            for sign, positive in (("+", True), ("-", False)):
                system = trait.instruction(p, positive)
                units.extend(Unit(trait.name, f"{p}{sign}", q.id, system, q.text) for q in selection)
    return units


def is_positive(unit: Unit) -> bool:
    return unit.prompt.endswith("+")


def make_trait_judge(name: str, traits: Sequence[Trait]) -> Any:
    if name == "embedding":
        from backend.judges.traits import EmbeddingTraitJudge

        return EmbeddingTraitJudge(traits)
    if name == "openai":
        from backend.judges.trait_llm import OpenAITraitJudge

        return OpenAITraitJudge.for_traits(traits)
    raise PersonaSpaceError(f"unknown trait judge {name!r}; choose embedding, none or openai")


def judge_answers(
    name: str, traits: Sequence[Trait], units: list[Unit], records: list[dict[str, Any]], work: WorkFolder
) -> dict[str, tuple[int, str]]:
    """Scores 0-100 of every non-empty answer; ``none`` gives 100 under the trait's instruction, 0 under the opposite's."""
    if name == "none":
        return {u.key: ((100, "not judged") if is_positive(u) else (0, "not judged")) for u in units}
    return run_judge(make_trait_judge(name, traits), units, records, work)


def record_plan(work: WorkFolder, settings: TraitSettings, model: dict[str, Any]) -> None:
    payload = {"settings": asdict(settings), "model": model}
    tmp = work.root / (PLAN_FILE + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, work.root / PLAN_FILE)


def build_traits(
    loaded: LoadedModel | None,
    space: Path,
    traits: Sequence[Trait],
    questions: Sequence[Question],
    settings: TraitSettings,
    work_root: Path,
    shard: tuple[int, int] = (0, 1),
    log: Callable[[str], None] = print,
    executor: ChunkExecutor | None = None,
    compact: bool = False,
) -> Path | None:
    """Add trait vectors to the space at ``space``; returns its folder, or ``None`` when only a shard was built.
    ``compact`` stores them as int8 with a scale per vector (:func:`backend.store.traits.add_traits`)."""
    started = time.time()
    info = executor.info if executor is not None else loaded.info if loaded is not None else None
    if info is None:
        raise PersonaSpaceError("build-traits needs a loaded model or an executor that holds one")
    load_space(space, fingerprint=info.fingerprint, model_name=info.name)  # the space exists and fits the model
    check_places(space, work_root)
    units = plan_trait_units(traits, questions, settings)
    run_settings = settings.executor_settings()
    work = WorkFolder(work_root)
    work.open(settings.generation_key(), info.fingerprint)
    record_plan(work, settings, {"name": info.name, "fingerprint": info.fingerprint})
    n_chunks = len(chunks_of(units, settings.batch_size))
    log(f"{len(units)} trait answers in {n_chunks} chunks of {settings.batch_size}; work folder {work_root}")
    if settings.generator == "hf":
        run_generation(loaded, units, run_settings, work, shard, executor)
    else:
        run_served_generation(loaded, units, run_settings, work, shard, executor=executor)
    if shard[1] > 1:
        log(f"shard {shard[0]}/{shard[1]} done; run the other shards into {work_root}, then run without --shard")
        return None
    return finish_traits(work, space, info.fingerprint, traits, settings, units, started, log, compact)


def finish_traits(
    work: WorkFolder,
    space: Path,
    fingerprint: str,
    traits: Sequence[Trait],
    settings: TraitSettings,
    units: list[Unit],
    started: float,
    log: Callable[[str], None],
    compact: bool = False,
) -> Path:
    run_settings = recorded_servers(settings.executor_settings(), work)
    units, means, records = collect(work, units, run_settings)
    scores = judge_answers(settings.judge, chosen(traits, settings), units, records, work)
    log(f"computing trait vectors (judge {settings.judge}, threshold {settings.threshold})")
    trait_set, vectors = trait_record(chosen(traits, settings), settings, units, means, records, scores)
    trait_set["settings"] = dict(asdict(settings), generator_models=list(run_settings.generator_models))
    trait_set["build_seconds"] = round(time.time() - started, 1)
    path = add_traits(space, fingerprint, trait_set, vectors, compact=compact)
    c = trait_set["counts"]
    log(f"wrote {c['traits_kept']} trait vectors ({c['traits_weak']} weak, {c['traits_dropped']} dropped) into {path}")
    return path


def trait_record(
    traits: Sequence[Trait],
    settings: TraitSettings,
    units: list[Unit],
    means: torch.Tensor,
    records: list[dict[str, Any]],
    scores: dict[str, tuple[int, str]],
) -> tuple[dict[str, Any], torch.Tensor]:
    """The manifest's ``trait_set`` and the ``(T, L, d)`` vectors from a finished build's answers and scores."""
    answers = [
        Contrasted(u.role, is_positive(u), EMPTY if r["n_tokens"] == 0 else scores[u.key][0])
        for u, r in zip(units, records, strict=True)
    ]
    names = [t.name for t in traits]
    cv = contrast_vectors(answers, means, names, settings.threshold, settings.min_kept)
    weak_of = dict(zip(cv.names, cv.weak, strict=True))
    entries: list[dict[str, Any]] = []
    for trait in traits:
        idx = [i for i, u in enumerate(units) if u.role == trait.name]
        pos = [i for i in idx if answers[i].positive and answers[i].score != EMPTY]
        neg = [i for i in idx if not answers[i].positive and answers[i].score != EMPTY]
        expressing, not_expressing = cv.kept[trait.name]
        entry: dict[str, Any] = {
            "name": trait.name, "description": trait.description, "opposite": trait.opposite,
            "answers": len(idx), "empty_answers": sum(1 for i in idx if answers[i].score == EMPTY),
            "expressing": expressing, "not_expressing": not_expressing,
            "mean_score_trait": _mean([answers[i].score for i in pos]), "mean_score_opposite": _mean([answers[i].score for i in neg]),
        }  # fmt: skip
        if trait.name in weak_of:
            entry["kept"] = True
            if weak_of[trait.name]:
                entry["weak"] = True
                entry["weak_reason"] = (
                    f"{expressing} expressing and {not_expressing} non-expressing answers, fewer than {settings.min_kept} "
                    "on a side: drawn from every non-empty answer of each side"
                )
        else:
            entry["kept"] = False
            entry["dropped"] = cv.dropped[trait.name]
        entries.append(entry)
    trait_set: dict[str, Any] = {
        "traits": entries,
        "kept_order": cv.names,
        "judge": settings.judge,
        "counts": {
            "answers": len(units),
            "empty_answers": sum(1 for a in answers if a.score == EMPTY),
            "response_tokens": sum(r["n_tokens"] for r in records),
            "traits_kept": len(cv.names),
            "traits_weak": sum(cv.weak),
            "traits_dropped": len(cv.dropped),
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return trait_set, cv.vectors


def _mean(values: list[int]) -> float | None:
    return round(sum(values) / len(values), 2) if values else None
