"""The space's traits: ``GET /traits`` (every trait at a layer: cosines with the axis and PC1-PC3, the trait-space
PCA) and ``GET /traits/{name}/archetypes`` (every archetype projected on one trait). Read with the torch-free view
(:mod:`backend.view.traits`), once per layer, like ``/space``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query

from backend.worker.routes.status import checked_layer
from backend.worker.schemas import Problem
from backend.worker.state import State, WorkerState

router = APIRouter()

NO_TRAITS: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem, "description": "the space has no traits (the message says how to build them)"}
}
UNKNOWN: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem, "description": "the space has no traits, or none of that name"}
}
BAD_LAYER: dict[int | str, dict[str, Any]] = {422: {"model": Problem, "description": "a layer the model does not have"}}


def _at_layer(state: WorkerState, layer: int | None) -> dict[str, Any]:
    engine = state.need_engine()
    chosen = checked_layer(engine, layer)
    if chosen not in state.trait_cache:
        from backend.view.space import SpaceViewError, read_space
        from backend.view.traits import NoTraits, archetype_table, trait_summary

        try:
            view = read_space(engine.space.path)
            summary, table = trait_summary(view, chosen), archetype_table(view, chosen)
        except NoTraits as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from exc
        except SpaceViewError as exc:  # the space's files changed on disk since the worker started
            raise HTTPException(status_code=503, detail=str(exc)) from exc
        state.trait_cache[chosen] = {"summary": summary, "archetypes": table}  # a (traits, archetypes) table: small
    return state.trait_cache[chosen]


@router.get("/traits", responses={**NO_TRAITS, **BAD_LAYER})
def traits(state: State, layer: Annotated[int | None, Query(ge=0, le=10_000)] = None) -> dict[str, Any]:
    return dict(_at_layer(state, layer)["summary"])


@router.get("/traits/{name}/archetypes", responses={**UNKNOWN, **BAD_LAYER})
def trait_archetypes(
    state: State,
    name: Annotated[str, Path(min_length=1, max_length=200)],
    layer: Annotated[int | None, Query(ge=0, le=10_000)] = None,
) -> dict[str, Any]:
    from backend.view.traits import UnknownTrait

    try:
        return _at_layer(state, layer)["archetypes"].for_trait(name)
    except UnknownTrait as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from exc
