"""The persona space shipped in git for the embedded default: it loads, matches the model, has what the app needs.

CI never rebuilds it (docs/shipped-space.md: how it was built); these checks only read it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from backend.catalogue import load_catalogue
from backend.store.info import space_info
from backend.store.space import REQUIRED_TENSORS, load_space
from backend.view.space import read_space, summary
from tests.helpers.worker_harness import ROOT, Worker

SHIPPED = ROOT / "cached_activations" / "smollm2-135m"


def test_shipped_space_matches_the_embedded_model_and_is_complete(smollm) -> None:  # type: ignore[no-untyped-def]
    space = load_space(SHIPPED, fingerprint=smollm.info.fingerprint, model_name=smollm.info.name)
    m, t = space.manifest, space.tensors
    assert m["model"]["spec"] == "smollm2-135m" and m["n_layers"] == 30 and m["hidden"] == 576
    assert set(REQUIRED_TENSORS) <= set(t) and {"umap_2d", "umap_3d", "umap_default_2d", "umap_default_3d"} <= set(t)
    names = [r["name"] for r in m["roles"]]
    assert names == [a.name for a in load_catalogue().archetypes]  # all 275 archetypes were built
    kept = space.roles
    assert len(kept) == t["role_vectors"].shape[0] >= 270  # every archetype on the map; weak ones marked
    for role in m["roles"]:
        assert role["kept"] == ("dropped" not in role)
        if role["kept"]:
            assert role["example"]["answer"]
    assert m["percentiles"] == [1.0, 25.0, 50.0, 75.0]
    fitted = torch.tensor([not r.get("weak") for r in m["roles"] if r["kept"]])
    assert 3 <= int(fitted.sum()) < len(kept) and len(m["weak"]) == len(kept) - int(fitted.sum())
    torch.testing.assert_close(t["axis"], t["default_vector"] - t["role_vectors"][fitted].mean(0), rtol=1e-5, atol=1e-4)
    view = summary(read_space(SHIPPED))
    assert len(view["roles"]) == len(kept) and view["assistant"]["umap_2d"] is not None
    info = space_info(space)
    assert len(info["axis_pc1_cosine"]) == 30 and set(info["projections"]) == set(kept)
    # issue #9's targets for the shipped space, at its target layer (docs/shipped-space.md)
    target = info["target_layer"]
    assert info["axis_pc1_cosine"][target] >= 0.6 and info["default_pc1_percentile"][target] >= 0.9
    assert info["default_projection"] > max(info["projections"].values())
    size = sum(p.stat().st_size for p in Path(SHIPPED).iterdir())
    assert size <= 30 * 2**20, f"the shipped space is {size / 2**20:.1f} MiB"


def test_worker_on_the_embedded_model_and_shipped_space(tmp_path) -> None:  # type: ignore[no-untyped-def]
    w = Worker("smollm2-135m", SHIPPED, tmp_path / "embedded.sqlite3")
    try:
        w.wait_ready()
        sid = w.session(controls={"max_new_tokens": 12, "cap_enabled": True})
        turn = w.say(sid, "What is the capital of France?")["assistant_turns"][0]
        events = list(w.stream(sid))
        tokens = [e["data"] for e in events if e["type"] == "token" and e["turn"] == turn]
        assert tokens and all(isinstance(t["projection"], float) and t["cap_on"] for t in tokens)
        assert "Paris" in "".join(t["text"] for t in tokens)
        end = next(e["data"] for e in events if e["type"] == "turn_end")
        roles = set(load_space(SHIPPED).roles)
        assert len(end["nearest"]) == 5 and {n["name"] for n in end["nearest"]} <= roles
        assert len(end["umap_2d"]) == 2 and len(end["pca"]) == 3
    finally:
        w.close()
