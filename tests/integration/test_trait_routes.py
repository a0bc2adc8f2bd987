"""The worker's trait routes, ``GET /traits`` and ``GET /traits/{name}/archetypes``, on a real worker serving the tiny
model and a copy of its space with trait vectors added (random ones: the routes' plumbing, not the build)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from backend.store.traits import add_traits
from tests.helpers.worker_harness import Worker

TRAITS = ["calm", "bold", "wry", "shy"]


def with_traits(space: Path, to: Path) -> Path:
    """A copy of ``space`` with four random trait vectors, ``shy`` weak."""
    shutil.copytree(space, to)
    manifest = json.loads((to / "manifest.json").read_text())
    n_layers, hidden = manifest["n_layers"], manifest["hidden"]
    trait_set = {
        "traits": [
            {"name": n, "description": f"Is {n}.", "opposite": f"Never {n}.", "kept": True, "weak": n == "shy"} for n in TRAITS
        ],
        "kept_order": TRAITS,
        "settings": {},
        "counts": {},
    }
    vectors = torch.randn(len(TRAITS), n_layers, hidden, generator=torch.Generator().manual_seed(0))
    return add_traits(to, manifest["model"]["fingerprint"], trait_set, vectors)


@pytest.fixture(scope="module")
def trait_worker(tiny_world, tmp_path_factory):  # type: ignore[no-untyped-def]
    model, space, _ = tiny_world
    root = tmp_path_factory.mktemp("trait_worker")
    w = Worker(model, with_traits(Path(space), root / "space"), root / "worker.sqlite3")
    w.wait_ready()
    yield w
    w.close()


def test_traits_lists_every_trait_with_its_figures(trait_worker) -> None:  # type: ignore[no-untyped-def]
    from safetensors.numpy import load_file

    space = trait_worker.client.get("/space").json()
    body = trait_worker.client.get("/traits").json()
    assert body["layer"] == space["target_layer"] == body["target_layer"]
    assert [t["name"] for t in body["traits"]] == TRAITS
    assert [t["weak"] for t in body["traits"]] == [False, False, False, True]
    arrays = load_file(str(Path(space["path"]) / "space.safetensors"))
    layer = body["layer"]
    axis = arrays["axis"][layer].astype(np.float64)
    for i, t in enumerate(body["traits"]):
        v = arrays["trait_vectors"][i, layer].astype(np.float64)
        assert t["axis_cosine"] == pytest.approx(v @ axis / np.linalg.norm(v) / np.linalg.norm(axis), abs=1e-6)
        assert len(t["pca_2d"]) == 2 and len(t["pca_3d"]) == 3
        assert t["description"] == f"Is {t['name']}."
    other = trait_worker.client.get("/traits", params={"layer": 0}).json()
    assert other["layer"] == 0 and other["traits"][0]["axis_cosine"] != body["traits"][0]["axis_cosine"]


def test_archetypes_on_a_trait(trait_worker) -> None:  # type: ignore[no-untyped-def]
    space = trait_worker.client.get("/space", params={"layer": 1}).json()
    body = trait_worker.client.get("/traits/bold/archetypes", params={"layer": 1}).json()
    assert body["trait"] == "bold" and body["layer"] == 1
    assert sorted(r["name"] for r in body["archetypes"]) == sorted(r["name"] for r in space["roles"])
    values = [r["projection"] for r in body["archetypes"]]
    assert values == sorted(values, reverse=True) and np.isfinite(body["assistant"])


def test_bad_requests_are_clear_4xx(trait_worker, worker) -> None:  # type: ignore[no-untyped-def]
    unknown = trait_worker.client.get("/traits/nope/archetypes")
    assert unknown.status_code == 404 and "nope" in unknown.text
    n_layers = trait_worker.client.get("/space").json()["n_layers"]
    for path in ("/traits", "/traits/bold/archetypes"):
        for layer in (n_layers, -1, "x"):
            response = trait_worker.client.get(path, params={"layer": layer})
            assert response.status_code == 422, (path, layer, response.text)
    none = worker.client.get("/traits")  # the session's worker: a space without traits
    assert none.status_code == 404 and "build-traits" in none.text
    assert worker.client.get("/traits/calm/archetypes").status_code == 404
    spec = trait_worker.client.get("/openapi.json").json()["paths"]
    assert {"404", "422"} <= set(spec["/traits"]["get"]["responses"])
    assert {"404", "422"} <= set(spec["/traits/{name}/archetypes"]["get"]["responses"])


def test_the_traits_page_over_the_real_worker(trait_worker) -> None:  # type: ignore[no-untyped-def]
    from app.client import WorkerClient
    from tests.helpers.app_pages import page

    at = page("traits", WorkerClient(trait_worker.url)).run()
    assert not at.exception, at.exception
    assert sorted(at.selectbox(key="traits_choice").options) == sorted(TRAITS)
    assert len(at.get("plotly_chart")) == 3
    at.slider(key="traits_layer").set_value(0).run()
    assert not at.exception, at.exception
    assert "layer 0" in " ".join(c.value for c in at.caption)
