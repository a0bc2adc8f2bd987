"""The persona-space builder on a tiny random chat model: full build, resume, shards, store and bad input."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import backend.builder as builder
from backend.builder import BuildSettings, WorkFolder, build, chunks_of, generate_chunk, plan_units, teacher_forced_means
from backend.catalogue import load_catalogue
from backend.errors import CatalogueError, PersonaSpaceError, SpaceError, SpaceMismatchError
from backend.space_info import space_info
from backend.store import MANIFEST, REQUIRED_TENSORS, TENSOR_FILE, load_space

ROLES = ("pirate", "librarian", "ghost", "accountant", "poet")
SETTINGS = BuildSettings(
    prompts_per_role=2, questions_per_role=2, default_questions=2, max_new_tokens=6, batch_size=8,
    judge="none", min_in_role=1, roles=ROLES, umap_neighbors=3,
)  # fmt: skip


@pytest.fixture(scope="module")
def catalogue():  # type: ignore[no-untyped-def]
    return load_catalogue()


@pytest.fixture(scope="module")
def reference_space(tiny_chat, catalogue, tmp_path_factory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("reference")
    path = build(tiny_chat, catalogue, SETTINGS, root / "space", root / "work", log=lambda m: None)
    assert path is not None
    return load_space(path)


def assert_same_space(a, b) -> None:  # type: ignore[no-untyped-def]
    assert sorted(a.tensors) == sorted(b.tensors)
    for name in a.tensors:
        assert torch.equal(a.tensors[name], b.tensors[name]), name
    assert a.manifest["roles"] == b.manifest["roles"]


def test_full_build_on_a_tiny_model(reference_space, tiny_chat) -> None:  # type: ignore[no-untyped-def]
    space = reference_space
    assert set(REQUIRED_TENSORS) <= set(space.tensors)
    assert space.roles == list(ROLES)
    m, t = space.manifest, space.tensors
    assert m["model"]["fingerprint"] == "tiny-0" and m["n_layers"] == 4 and m["hidden"] == 32
    assert t["role_vectors"].shape == (5, 4, 32) and t["axis"].shape == (4, 32)
    torch.testing.assert_close(t["axis"], t["default_vector"] - t["role_vectors"].mean(0))
    assert bool((t["axis_pc1_cosine"] >= 0).all())  # PC1's sign follows the axis
    assert t["umap_2d"].shape == (5, 2) and t["umap_3d"].shape == (5, 3)
    assert t["thresholds"].shape == (4, 4)
    assert m["counts"]["answers"] == 5 * 2 + 5 * 2 * 2
    # the stored thresholds are the percentiles of the stored pool
    torch.testing.assert_close(space.threshold(75.0), torch.quantile(t["pool_projections"].double(), 0.75, dim=0).float())
    for role in m["roles"]:
        assert role["kept"] and role["example"]["answer"] is not None


def test_info_json_fields(reference_space) -> None:  # type: ignore[no-untyped-def]
    info = json.loads(json.dumps(space_info(reference_space)))
    for key in ("model", "n_layers", "hidden", "target_layer", "roles", "dropped", "axis_pc1_cosine",
                "pc1_variance_ratio", "projections", "thresholds"):  # fmt: skip
        assert key in info
    assert len(info["axis_pc1_cosine"]) == 4 and len(info["pc1_variance_ratio"]) == 4
    assert set(info["projections"]) == set(ROLES)
    assert set(info["thresholds"]["2"]) == {"p1", "p25", "p50", "p75"}


def test_capture_during_generation_matches_teacher_forcing(tiny_chat, catalogue) -> None:  # type: ignore[no-untyped-def]
    units = plan_units(catalogue, SETTINGS, "tiny")[:6]
    means, records = generate_chunk(tiny_chat, units, SETTINGS, seed=5)
    assert [r["n_tokens"] for r in records] == [len(r["tokens"]) for r in records]
    reference = teacher_forced_means(tiny_chat, units, [r["tokens"] for r in records])
    torch.testing.assert_close(means, reference, rtol=1e-4, atol=1e-5)


def test_resume_after_interruption_equals_uninterrupted(tiny_chat, catalogue, reference_space, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    real = builder.generate_chunk
    calls = {"n": 0}

    def dies_on_third(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(builder, "generate_chunk", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        build(tiny_chat, catalogue, SETTINGS, tmp_path / "space", tmp_path / "work", log=lambda m: None)
    assert not (tmp_path / "space").exists()
    assert len(list((tmp_path / "work" / "chunks").glob("*.json"))) == 2
    monkeypatch.setattr(builder, "generate_chunk", real)
    path = build(tiny_chat, catalogue, SETTINGS, tmp_path / "space", tmp_path / "work", log=lambda m: None)
    assert_same_space(load_space(path), reference_space)


def test_shards_merge_into_the_same_space(tiny_chat, catalogue, reference_space, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # two "machines" with their own work folders, then the chunk files copied into one
    assert build(tiny_chat, catalogue, SETTINGS, tmp_path / "s", tmp_path / "w0", shard=(0, 2), log=lambda m: None) is None
    assert build(tiny_chat, catalogue, SETTINGS, tmp_path / "s", tmp_path / "w1", shard=(1, 2), log=lambda m: None) is None
    with pytest.raises(PersonaSpaceError, match="chunks are not built yet"):
        builder.collect(WorkFolder(tmp_path / "w0"), plan_units(catalogue, SETTINGS, "tiny-llama"), SETTINGS)
    for f in (tmp_path / "w1" / "chunks").iterdir():
        shutil.copy(f, tmp_path / "w0" / "chunks" / f.name)
    n_chunks = len(chunks_of(plan_units(catalogue, SETTINGS, "tiny-llama"), SETTINGS.batch_size))
    assert len(list((tmp_path / "w0" / "chunks").glob("*.json"))) == n_chunks
    path = build(tiny_chat, catalogue, SETTINGS, tmp_path / "s", tmp_path / "w0", log=lambda m: None)
    assert_same_space(load_space(path), reference_space)


def test_work_folder_refuses_other_settings(tiny_chat, catalogue, tmp_path) -> None:  # type: ignore[no-untyped-def]
    work = WorkFolder(tmp_path)
    work.open(SETTINGS.generation_key(), "tiny-0")
    with pytest.raises(PersonaSpaceError, match="other settings or another model"):
        WorkFolder(tmp_path).open(replace(SETTINGS, max_new_tokens=7).generation_key(), "tiny-0")
    # judge and space settings do not change the answers
    assert replace(SETTINGS, judge="embedding", min_in_role=4).generation_key() == SETTINGS.generation_key()


def test_roles_with_too_few_in_role_answers_are_dropped_with_a_reason(tiny_chat, catalogue, tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = replace(SETTINGS, judge="embedding", min_in_role=4)  # random text rarely looks like its role
    with pytest.raises(PersonaSpaceError, match="only .* roles kept"):
        build(tiny_chat, catalogue, settings, tmp_path / "s", tmp_path / "w", log=lambda m: None)
    (cache,) = (tmp_path / "w").glob("judge-embedding-*.json")
    scores = json.loads(cache.read_text())
    assert 0 < len(scores) <= 5 * 2 * 2 and all(s[0] in (0, 1, 2, 3) for s in scores.values())


def test_space_mismatch_and_corruption_are_clear_errors(reference_space, tmp_path) -> None:  # type: ignore[no-untyped-def]
    src = reference_space.path
    with pytest.raises(SpaceMismatchError, match="built for 'tiny-llama'.*loaded model is 'SmolLM2'"):
        load_space(src, fingerprint="f" * 64, model_name="SmolLM2")
    corrupt = tmp_path / "corrupt"
    shutil.copytree(src, corrupt)
    data = bytearray((corrupt / TENSOR_FILE).read_bytes())
    data[-10] ^= 0xFF
    (corrupt / TENSOR_FILE).write_bytes(bytes(data))
    with pytest.raises(SpaceError, match="corrupt or was changed"):
        load_space(corrupt)
    truncated = tmp_path / "truncated"
    shutil.copytree(src, truncated)
    text = (truncated / MANIFEST).read_text()
    (truncated / MANIFEST).write_text(text[: len(text) // 2])
    with pytest.raises(SpaceError, match="corrupt or truncated"):
        load_space(truncated)
    cut = tmp_path / "cut"
    shutil.copytree(src, cut)
    blob = (cut / TENSOR_FILE).read_bytes()[:200]
    (cut / TENSOR_FILE).write_bytes(blob)
    manifest = json.loads((cut / MANIFEST).read_text())
    from backend.store import sha256_file

    manifest["files"][TENSOR_FILE] = sha256_file(cut / TENSOR_FILE)  # hash matches, content still unreadable
    (cut / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(SpaceError, match="cannot be read"):
        load_space(cut)
    with pytest.raises(SpaceError, match="no manifest.json"):
        load_space(tmp_path)


def test_catalogue_validation(tmp_path) -> None:  # type: ignore[no-untyped-def]
    shipped = Path(builder.__file__).parent / "catalogue"
    catalogue = load_catalogue()
    assert len(catalogue.archetypes) == 275 and len(catalogue.questions) >= 240 and len(catalogue.defaults) == 5
    assert all(len(a.prompts) == 5 for a in catalogue.archetypes)

    def broken(edit) -> Path:  # type: ignore[no-untyped-def]
        folder = tmp_path / f"c{len(list(tmp_path.iterdir()))}"
        shutil.copytree(shipped, folder)
        archetypes = json.loads((folder / "archetypes.json").read_text())
        edit(archetypes)
        (folder / "archetypes.json").write_text(json.dumps(archetypes))
        return folder

    with pytest.raises(CatalogueError, match=r"unknown field\(s\) \['colour'\]"):
        load_catalogue(broken(lambda a: a[3].update(colour="red")))
    with pytest.raises(CatalogueError, match="lists archetype 'assistant' twice"):
        load_catalogue(broken(lambda a: a.append(dict(a[0]))))
    with pytest.raises(CatalogueError, match="prompt 2 must be non-empty text"):
        load_catalogue(broken(lambda a: a[5]["prompts"].__setitem__(2, "  ")))
    with pytest.raises(CatalogueError, match="has category 'wizardry'"):
        load_catalogue(broken(lambda a: a[7].update(category="wizardry")))
    folder = broken(lambda a: None)
    (folder / "questions.json").write_text('[{"id": "q1", "kind": "self"')
    with pytest.raises(CatalogueError, match="questions.json is not valid JSON"):
        load_catalogue(folder)
