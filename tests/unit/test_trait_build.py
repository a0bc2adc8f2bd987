"""The trait build on a tiny random chat model: a planted trait is recovered with its sign, resume and shards give
the traits one run gives, and a space with or without traits loads everywhere."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import backend.build.local as local
from backend.build.pipeline import build, collect
from backend.build.plan import chunks_of
from backend.build.settings import BuildSettings
from backend.build.trait_settings import TraitSettings
from backend.build.traits import build_traits, plan_trait_units
from backend.build.workfolder import WorkFolder
from backend.catalogue import load_catalogue
from backend.catalogue.traits import load_traits
from backend.cli import main
from backend.errors import PersonaSpaceError, SpaceError
from backend.maths.contrast import EMPTY, Contrasted, contrast_vectors
from backend.store.info import space_info
from backend.store.space import MANIFEST, TENSOR_FILE, load_space, sha256_file
from backend.store.traits import TRAIT_FIELD, TRAIT_TENSOR, read_traits

TRAITS = ("pessimistic", "blunt", "calm")
PLANTED = "blunt"
SPACE_SETTINGS = BuildSettings(
    prompts_per_role=1, questions_per_role=2, default_questions=2, max_new_tokens=5, batch_size=8,
    judge="none", min_in_role=1, roles=("pirate", "librarian", "ghost", "accountant"), umap_neighbors=2,
)  # fmt: skip
SETTINGS = TraitSettings(
    pairs_per_trait=2, questions_per_instruction=2, max_new_tokens=5, batch_size=8, judge="none", min_kept=1, traits=TRAITS
)
quiet = lambda m: None  # noqa: E731


@pytest.fixture(scope="module")
def persona_space(tiny_chat, tmp_path_factory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("trait_space")
    path = build(tiny_chat, load_catalogue(), SPACE_SETTINGS, root / "space", root / "work", log=quiet)
    assert path is not None
    return path


@pytest.fixture(scope="module")
def catalogue():  # type: ignore[no-untyped-def]
    return load_traits(), load_catalogue().questions


def copy_space(path: Path, to: Path) -> Path:
    shutil.copytree(path, to)
    return to


@pytest.fixture(scope="module")
def reference(tiny_chat, persona_space, catalogue, tmp_path_factory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("trait_reference")
    space = copy_space(persona_space, root / "space")
    assert build_traits(tiny_chat, space, *catalogue, SETTINGS, root / "work", log=quiet) == space
    return load_space(space)


def test_plan_is_traits_pairs_sign_questions(catalogue) -> None:  # type: ignore[no-untyped-def]
    traits, questions = catalogue
    units = plan_trait_units(traits, questions, SETTINGS)
    assert len(units) == 3 * 2 * 2 * 2
    assert [u.prompt for u in units[:8]] == ["0+", "0+", "0-", "0-", "1+", "1+", "1-", "1-"]
    pessimistic = traits[0]
    assert units[0].system == pessimistic.pairs[0][0] and units[2].system == pessimistic.pairs[0][1]
    assert units[0].question == units[2].question and units[0].key != units[2].key


def test_planted_trait_is_recovered_with_its_sign(tiny_chat, persona_space, catalogue, reference, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A known direction added to the activations of the answers made under the planted trait's own instructions
    is that trait's vector (cosine >= 0.9 at every layer) pointing toward the trait; the other traits are those of
    the unplanted build."""
    n_layers, hidden = reference.manifest["n_layers"], reference.manifest["hidden"]
    direction = torch.nn.functional.normalize(torch.randn(n_layers, hidden, generator=torch.Generator().manual_seed(3)), dim=-1)
    scale = 20 * float(reference.tensors["activation_norm"].max())
    real = local.generate_chunk

    def planted(loaded, units, settings, seed):  # type: ignore[no-untyped-def]
        means, records = real(loaded, units, settings, seed)
        means = means.clone()
        for row, unit in enumerate(units):
            if unit.role == PLANTED and unit.prompt.endswith("+"):
                means[row] += scale * direction
        return means, records

    monkeypatch.setattr(local, "generate_chunk", planted)
    space = copy_space(persona_space, tmp_path / "space")
    build_traits(tiny_chat, space, *catalogue, SETTINGS, tmp_path / "work", log=quiet)
    got, before = read_traits(load_space(space)), read_traits(reference)
    assert got is not None and before is not None and got.names == list(TRAITS)
    vector = got.vector(PLANTED).double()
    cos = torch.nn.functional.cosine_similarity(vector, direction.double(), dim=-1)
    assert bool((cos >= 0.9).all()), cos
    # linear in the planted shift: exactly the unplanted vector plus the direction, no other trait moves
    torch.testing.assert_close(vector - before.vector(PLANTED).double(), scale * direction.double(), rtol=1e-4, atol=1e-3)
    for name in TRAITS:
        if name != PLANTED:
            torch.testing.assert_close(got.vector(name), before.vector(name), rtol=1e-4, atol=1e-5)


def test_a_direction_planted_in_the_model_is_recovered(
    tiny_chat, persona_space, catalogue, reference, tmp_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """The oracle inside the model: a hook adds a known direction to one decoder layer's output on the rows made
    under the planted trait's own instructions, at every position; the captured content tokens carry it, and the
    trait's vector at that layer points along it (trait minus opposite), while the opposite rows stay untouched."""
    layer, hidden = 1, reference.manifest["hidden"]
    direction = torch.nn.functional.normalize(torch.randn(hidden, generator=torch.Generator().manual_seed(4)), dim=0)
    scale = 20 * float(reference.tensors["activation_norm"].max())
    real = local.generate_chunk

    def planted(loaded, units, settings, seed):  # type: ignore[no-untyped-def]
        rows = torch.tensor([u.role == PLANTED and u.prompt.endswith("+") for u in units], dtype=torch.float32)

        def add(module, args, output):  # type: ignore[no-untyped-def]
            hs = output[0] if isinstance(output, tuple) else output
            shifted = hs + scale * rows[: hs.shape[0], None, None] * direction
            return (shifted, *output[1:]) if isinstance(output, tuple) else shifted

        handle = loaded.model.model.layers[layer].register_forward_hook(add)  # before the capture's own hooks
        try:
            return real(loaded, units, settings, seed)
        finally:
            handle.remove()

    monkeypatch.setattr(local, "generate_chunk", planted)
    space = copy_space(persona_space, tmp_path / "space")
    build_traits(tiny_chat, space, *catalogue, SETTINGS, tmp_path / "work", log=quiet)
    got = read_traits(load_space(space))
    assert got is not None
    cos = float(torch.nn.functional.cosine_similarity(got.vector(PLANTED)[layer].double(), direction.double(), dim=0))
    assert cos >= 0.9, cos
    before = read_traits(reference)
    assert before is not None
    for name in TRAITS:  # the other traits' rows were not touched
        if name != PLANTED:
            torch.testing.assert_close(got.vector(name), before.vector(name), rtol=1e-4, atol=1e-5)


def test_contrast_keeps_only_answers_that_did_what_they_were_asked() -> None:
    means = torch.tensor([[[1.0]], [[3.0]], [[10.0]], [[-1.0]], [[-5.0]], [[7.0]]])
    answers = [
        Contrasted("t", True, 80), Contrasted("t", True, 60), Contrasted("t", True, 20),  # 20: did not express it
        Contrasted("t", False, 10), Contrasted("t", False, EMPTY), Contrasted("t", False, 90),  # 90: expressed it anyway
    ]  # fmt: skip
    cv = contrast_vectors(answers, means, ["t", "u"], threshold=50, min_kept=1)
    assert cv.names == ["t"] and cv.weak == [False] and cv.kept["t"] == (2, 1) and "u" in cv.dropped
    assert float(cv.vectors[0, 0, 0]) == pytest.approx(2.0 - (-1.0))  # mean(1, 3) - mean(-1)
    weak = contrast_vectors(answers, means, ["t"], threshold=50, min_kept=2)
    assert weak.weak == [True]  # one non-expressing opposite answer: every non-empty answer of each side counts
    assert float(weak.vectors[0, 0, 0]) == pytest.approx(14 / 3 - 3.0)


def test_resume_after_interruption_equals_one_run(tiny_chat, persona_space, catalogue, reference, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    real = local.generate_chunk
    calls = {"n": 0}

    def dies_on_second(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    space = copy_space(persona_space, tmp_path / "space")
    monkeypatch.setattr(local, "generate_chunk", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        build_traits(tiny_chat, space, *catalogue, SETTINGS, tmp_path / "work", log=quiet)
    assert read_traits(load_space(space)) is None  # the space is untouched until every chunk is in
    assert len(list((tmp_path / "work" / "chunks").glob("*.json"))) == 1
    monkeypatch.setattr(local, "generate_chunk", real)
    build_traits(tiny_chat, space, *catalogue, SETTINGS, tmp_path / "work", log=quiet)
    assert_same_traits(load_space(space), reference)


def test_shards_merge_into_the_same_traits(tiny_chat, persona_space, catalogue, reference, tmp_path) -> None:  # type: ignore[no-untyped-def]
    space = copy_space(persona_space, tmp_path / "space")
    for i in range(2):
        assert build_traits(tiny_chat, space, *catalogue, SETTINGS, tmp_path / f"w{i}", shard=(i, 2), log=quiet) is None
    units = plan_trait_units(*catalogue, SETTINGS)
    with pytest.raises(PersonaSpaceError, match="chunks are not built yet"):
        collect(WorkFolder(tmp_path / "w0"), units, SETTINGS.executor_settings())
    for f in (tmp_path / "w1" / "chunks").iterdir():
        shutil.copy(f, tmp_path / "w0" / "chunks" / f.name)
    assert len(list((tmp_path / "w0" / "chunks").glob("*.json"))) == len(chunks_of(units, SETTINGS.batch_size))
    build_traits(tiny_chat, space, *catalogue, SETTINGS, tmp_path / "w0", log=quiet)
    assert_same_traits(load_space(space), reference)


def assert_same_traits(a, b) -> None:  # type: ignore[no-untyped-def]
    torch.testing.assert_close(a.tensors[TRAIT_TENSOR], b.tensors[TRAIT_TENSOR], rtol=1e-4, atol=1e-5)
    strip = lambda m: {k: v for k, v in m[TRAIT_FIELD].items() if k not in ("created", "build_seconds")}  # noqa: E731
    assert strip(a.manifest) == strip(b.manifest)


def test_adding_traits_keeps_the_space_and_a_space_without_traits_loads(persona_space, reference, capsys) -> None:  # type: ignore[no-untyped-def]
    plain = load_space(persona_space)
    assert read_traits(plain) is None and TRAIT_FIELD not in plain.manifest
    for name, tensor in plain.tensors.items():  # the persona space is unchanged by adding traits
        assert torch.equal(tensor, reference.tensors[name]), name
    assert {k: v for k, v in plain.manifest.items() if k != "files"} == {
        k: v for k, v in reference.manifest.items() if k not in ("files", TRAIT_FIELD)
    }
    traits = read_traits(reference)
    assert traits is not None and traits.vectors.shape == (3, 4, 32) and traits.weak == [False] * 3
    entry = traits.entries[1]
    assert entry["name"] == "blunt" and entry["kept"] and entry["answers"] == 8 and entry["expressing"] == 4
    for path in (persona_space, reference.path):
        space_info(load_space(path))
        assert main(["info", str(path)]) == 0 and main(["info", "--json", str(path)]) == 0
    capsys.readouterr()


def test_a_trait_field_that_does_not_fit_is_refused_on_load(reference, tmp_path) -> None:  # type: ignore[no-untyped-def]
    edited = copy_space(reference.path, tmp_path / "edited")
    manifest = json.loads((edited / MANIFEST).read_text())
    manifest[TRAIT_FIELD]["kept_order"] = manifest[TRAIT_FIELD]["kept_order"][:2]
    (edited / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(SpaceError, match="tensor trait_vectors has shape"):
        load_space(edited)
    del manifest[TRAIT_FIELD]
    (edited / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(SpaceError, match="the tensor trait_vectors without the other"):
        load_space(edited)
    assert sha256_file(edited / TENSOR_FILE) == reference.manifest["files"][TENSOR_FILE]


def test_traits_refuse_another_model_and_a_work_folder_of_other_settings(tiny_chat, persona_space, catalogue, tmp_path) -> None:  # type: ignore[no-untyped-def]
    space = copy_space(persona_space, tmp_path / "space")
    manifest = json.loads((space / MANIFEST).read_text())
    manifest["model"]["fingerprint"] = "another"
    (space / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(SpaceError, match="was built for"):
        build_traits(tiny_chat, space, *catalogue, SETTINGS, tmp_path / "work", log=quiet)
    good = copy_space(persona_space, tmp_path / "good")
    work = WorkFolder(tmp_path / "w")
    work.open(replace(SETTINGS, max_new_tokens=6).generation_key(), "tiny-0")
    with pytest.raises(PersonaSpaceError, match="other settings or another model"):
        build_traits(tiny_chat, good, *catalogue, SETTINGS, tmp_path / "w", log=quiet)
    assert replace(SETTINGS, judge="embedding", threshold=70, min_kept=3).generation_key() == SETTINGS.generation_key()
    with pytest.raises(PersonaSpaceError, match="inside the space folder"):
        build_traits(tiny_chat, good, *catalogue, SETTINGS, good / "work", log=quiet)


def test_info_reports_traits_against_the_axis_and_the_pcs(reference, persona_space, capsys) -> None:  # type: ignore[no-untyped-def]
    from backend.store.info import format_info

    info = json.loads(json.dumps(space_info(reference)))
    assert "traits" not in space_info(load_space(persona_space))
    t, layer = reference.tensors, reference.target_layer
    got = info["traits"]
    assert got["layer"] == layer and list(got["traits"]) == list(TRAITS) and got["weak"] == 0 and got["dropped"] == {}
    for i, name in enumerate(TRAITS):
        v = t[TRAIT_TENSOR][i, layer].double()

        def cos(u: torch.Tensor, v: torch.Tensor = v) -> float:
            return float(v @ u.double() / (v.norm() * u.double().norm()))

        assert got["traits"][name]["axis_cosine"] == pytest.approx(cos(t["axis"][layer]), abs=1e-4)
        pcs = [cos(t["pca_components"][layer, k]) for k in range(min(3, t["pca_components"].shape[1]))]
        assert got["traits"][name]["pc_cosines"] == pytest.approx(pcs, abs=1e-4)
    centred = t[TRAIT_TENSOR][:, layer].double() - t[TRAIT_TENSOR][:, layer].double().mean(0)
    s = torch.linalg.svdvals(centred)
    assert got["pca_variance_ratio"][0] == pytest.approx(float(s[0] ** 2 / (s**2).sum()), abs=1e-4)
    text = format_info(space_info(reference))
    ranked = sorted(TRAITS, key=lambda n: got["traits"][n]["axis_cosine"], reverse=True)
    assert f"traits at the Assistant end (cosine with the axis, layer {layer}): {ranked[0]}" in text
    assert f"traits at the far end: {ranked[-1]}" in text
    assert main(["info", str(reference.path)]) == 0 and "traits at the far end" in capsys.readouterr().out


def test_build_traits_command(tiny_world, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    model, space, _ = tiny_world
    target = copy_space(Path(space), tmp_path / "space")
    args = ["build-traits", "--space", str(target), "--model", model, "--device", "cpu", "--traits", "calm,blunt,witty"]
    args += ["--pairs-per-trait", "1", "--questions", "2", "--max-new-tokens", "4", "--batch-size", "16", "--judge", "none"]
    assert main([*args, "--min-kept", "1"]) == 0
    traits = read_traits(load_space(target))
    assert traits is not None and traits.names == ["calm", "blunt", "witty"]
    assert (tmp_path / ".space.traits.work" / "trait-plan.json").exists()
    assert main(["build-traits", "--space", str(tmp_path / "nothing"), "--model", model]) == 2
    assert main([*args, "--traits", "calm,wizardly"]) == 2
    assert "unknown trait 'wizardly'" in capsys.readouterr().err
