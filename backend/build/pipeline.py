"""The persona-space build: generate -> capture -> judge -> role vectors -> space.

Work is cut into fixed *chunks* of ``batch_size`` answers (default-Assistant answers first, then the archetypes in
catalogue order, prompts then questions; :mod:`backend.build.plan`). Each finished chunk is written to the work
folder at once (:mod:`backend.build.workfolder`), so a killed build continues where it stopped and gives the same
result; ``--shard i/n`` builds every n-th chunk, and shards written to one work folder (or copied into one) merge
into exactly the space one run gives. Generation runs in this process (:mod:`backend.build.local`), on Ray actors
(:mod:`backend.cluster`) or on OpenAI-compatible servers (:mod:`backend.build.served`); :func:`rebuild` recomputes a
space from a finished work folder with other space settings.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from backend.build.assemble import build_space
from backend.build.local import ChunkExecutor, run_generation
from backend.build.plan import Unit, chunks_of, plan_units
from backend.build.served import recorded_servers, run_served_generation
from backend.build.settings import GENERATION_FIELDS, BuildSettings
from backend.build.workfolder import WorkFolder, progress
from backend.catalogue import DEFAULT_ROLE, Catalogue
from backend.errors import PersonaSpaceError
from backend.models.loading import LoadedModel
from backend.store.space import check_target, write_space


def collect(
    work: WorkFolder, units: list[Unit], settings: BuildSettings
) -> tuple[list[Unit], torch.Tensor, list[dict[str, Any]]]:
    """All chunks, in order; a missing chunk (an unfinished shard) is an error that says which."""
    chunks = chunks_of(units, settings.batch_size)
    missing = [i for i in range(len(chunks)) if not work.done(i)]
    if missing:
        raise PersonaSpaceError(
            f"{len(missing)} of {len(chunks)} chunks are not built yet (first: {missing[:5]}); run the missing shards"
        )
    all_units: list[Unit] = []
    means: list[torch.Tensor] = []
    records: list[dict[str, Any]] = []
    for i in range(len(chunks)):
        u, m, r = work.load(i)
        if u != chunks[i]:  # same roles, prompts and questions, word for word
            raise PersonaSpaceError(f"chunk {i} in {work.root} does not hold the answers this plan expects")
        all_units += u
        means.append(m)
        records += r
    return all_units, torch.cat(means), records


def make_judge(name: str, catalogue: Catalogue) -> Any:
    from backend.judges.embedding import EmbeddingJudge, NoJudge

    if name == "embedding":
        return EmbeddingJudge(catalogue.archetypes)
    if name == "none":
        return NoJudge()
    if name == "openai":
        from backend.judges.llm import OpenAIJudge

        return OpenAIJudge.from_env(catalogue.archetypes)
    raise PersonaSpaceError(f"unknown judge {name!r}; choose embedding, none or openai")


def run_judge(judge: Any, units: list[Unit], records: list[dict[str, Any]], work: WorkFolder) -> dict[str, tuple[int, str]]:
    """Scores of every role answer (defaults are not judged), cached in the work folder per judge."""
    identity = getattr(judge, "identity", judge.name)
    tag = hashlib.sha256(str(identity).encode()).hexdigest()[:10]
    path = work.root / f"judge-{judge.name}-{tag}.json"  # another judge model or setting gets its own cache
    cached: dict[str, list[Any]] = json.loads(path.read_text()) if path.exists() else {}
    todo = [
        (u, r)
        for u, r in zip(units, records, strict=True)
        if u.role != DEFAULT_ROLE and u.key not in cached and r["n_tokens"] > 0
    ]
    step = 256
    bar = progress(len(todo), f"judge ({judge.name})")
    for start in range(0, len(todo), step):
        part = todo[start : start + step]
        scores = judge.score([u.role for u, _ in part], [r["text"] for _, r in part])
        for (u, _), s in zip(part, scores, strict=True):
            cached[u.key] = [s.score, s.reason]
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cached))
        os.replace(tmp, path)
        bar.update(len(part))
    bar.close()
    return {k: (int(v[0]), str(v[1])) for k, v in cached.items()}


PLAN_FILE = "plan.json"


MODEL_FIELDS = ("spec", "name", "fingerprint", "architecture", "n_layers", "hidden", "target_layer", "cap_window")


def record_plan(work: WorkFolder, settings: BuildSettings, info: dict[str, Any]) -> None:
    """What a rebuild needs besides the answers: the generation settings and the model's shape (no weights)."""
    payload = {"settings": asdict(settings), "model": {k: info[k] for k in MODEL_FIELDS}}
    tmp = work.root / (PLAN_FILE + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, work.root / PLAN_FILE)


def check_places(out: Path, work_root: Path) -> None:
    """Refuse, before any work, a space folder that writing would not replace cleanly (:func:`check_target`), and a
    work folder that is the space folder or lies inside it: writing the space replaces that folder, answers and all."""
    space = check_target(out)
    work = Path(os.path.abspath(work_root))
    if work == space or space in work.parents:
        raise PersonaSpaceError(
            f"the work folder {str(work_root)!r} is {'the' if work == space else 'inside the'} space folder {str(out)!r}: "
            "writing the space replaces that folder, answers and all; choose a --work folder outside it"
        )


def build(
    loaded: LoadedModel | None,
    catalogue: Catalogue,
    settings: BuildSettings,
    out: Path,
    work_root: Path,
    shard: tuple[int, int] = (0, 1),
    log: Callable[[str], None] = print,
    executor: ChunkExecutor | None = None,
) -> Path | None:
    """Run the build; returns the space's folder, or ``None`` when only a shard was built. With ``executor`` (Ray
    actors that hold the model) ``loaded`` may be ``None``: the executor describes the model."""
    started = time.time()
    check_places(out, work_root)
    info = executor.info if executor is not None else loaded.info if loaded is not None else None
    if info is None:
        raise PersonaSpaceError("build needs a loaded model or an executor that holds one")
    units = plan_units(catalogue, settings, info.name)
    work = WorkFolder(work_root)
    work.open(settings.generation_key(), info.fingerprint)
    record_plan(work, settings, info.to_dict())
    n_chunks = len(chunks_of(units, settings.batch_size))
    log(f"{len(units)} answers in {n_chunks} chunks of {settings.batch_size}; work folder {work_root}")
    if settings.generator == "hf":
        run_generation(loaded, units, settings, work, shard, executor)
    else:
        run_served_generation(loaded, units, settings, work, shard, executor=executor)
    if shard[1] > 1:
        log(f"shard {shard[0]}/{shard[1]} done; run the other shards into {work_root}, then build without --shard")
        return None
    return finish(work, catalogue, settings, info.to_dict(), units, out, started, log)


def finish(
    work: WorkFolder,
    catalogue: Catalogue,
    settings: BuildSettings,
    model: dict[str, Any],
    units: list[Unit],
    out: Path,
    started: float,
    log: Callable[[str], None],
) -> Path:
    units, means, records = collect(work, units, settings)
    settings = recorded_servers(settings, work)  # the served generator's model ids go into the manifest
    judge = make_judge(settings.judge, catalogue)
    scores = run_judge(judge, units, records, work)
    log(f"computing role vectors (recipe {settings.recipe}), axis, PCA, UMAP and thresholds")
    manifest, tensors = build_space(model, catalogue, settings, units, means, records, scores, started)
    path = write_space(out, manifest, tensors)
    c = manifest["counts"]
    log(f"wrote {path} ({c['roles_kept']} archetypes drawn, {c['roles_weak']} of them weak, {c['roles_dropped']} dropped)")
    return path


def rebuild(
    work_root: Path,
    catalogue: Catalogue,
    out: Path,
    log: Callable[[str], None] = print,
    **changes: Any,
) -> Path:
    """Recompute a space from a finished work folder with other space settings (``recipe``, ``min_in_role``,
    ``target_layer``, ``judge``, ...): no generation, no model. Gives the same space a fresh build with those
    settings gives."""
    started = time.time()
    check_places(out, work_root)
    work = WorkFolder(Path(work_root))
    plan = work.root / PLAN_FILE
    if not plan.exists():
        raise PersonaSpaceError(
            f"{work.root} has no {PLAN_FILE} (it was made by an older build); run the same `build` command once "
            "more on it: every chunk is done, so it only records the plan and computes the space"
        )
    payload = json.loads(plan.read_text())
    stored = dict(payload["settings"])
    stored["roles"] = tuple(stored["roles"]) if stored.get("roles") is not None else None
    stored["percentiles"] = tuple(stored["percentiles"])
    unknown = sorted(set(changes) - {f for f in stored if f not in GENERATION_FIELDS})
    if unknown:
        raise PersonaSpaceError(f"a rebuild cannot change {unknown}: they change the answers; run build instead")
    settings = BuildSettings(**{**stored, **changes})
    work.open(settings.generation_key(), payload["model"]["fingerprint"])
    units = plan_units(catalogue, settings, payload["model"]["name"])
    return finish(work, catalogue, settings, payload["model"], units, out, started, log)
