"""Placement of a turn in the space, and the worker's start-up that no longer waits for the UMAP refit."""

from __future__ import annotations

import threading

import torch

from backend.store.space import load_space


def test_the_engine_is_ready_while_the_map_is_still_being_built(tiny_world, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import backend.maths.umap_layout
    from backend.models.loading import load_model
    from backend.worker.db import Database
    from backend.worker.engine import Engine

    release, started = threading.Event(), threading.Event()
    real_fit = backend.maths.umap_layout.fit_umap

    def slow_fit(*args, **kwargs):  # type: ignore[no-untyped-def]
        started.set()
        release.wait(60)
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(backend.maths.umap_layout, "fit_umap", slow_fit)
    model, space_path, _ = tiny_world
    engine = Engine(load_model(model), load_space(space_path), Database(tmp_path / "w.sqlite3"))
    engine.start()
    try:
        assert engine.ready.wait(30), "the engine waited for the UMAP refit"
        assert started.wait(30) and engine.placement.phase == "building the map"
        release.set()
        engine.placement._warming.join(60)  # type: ignore[union-attr]
        assert engine.placement.phase == "ready"
        place = engine.placement.place(torch.randn(engine.axis.shape[-1]))
        assert len(place["umap_2d"]) == 2 and len(place["umap_3d"]) == 3 and len(place["nearest"]) == 5
    finally:
        release.set()
        engine.close()
