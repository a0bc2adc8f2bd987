"""The persona-space builder on a tiny random chat model: full build, resume, shards, store and bad input."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import pytest
import torch

import backend.build.local as local
import backend.build.pipeline as builder
import backend.catalogue
from backend.build.assemble import build_space
from backend.build.local import generate_chunk
from backend.build.pipeline import build
from backend.build.plan import chunks_of, plan_units
from backend.build.recipes import RECIPES
from backend.build.settings import BuildSettings
from backend.build.workfolder import WorkFolder
from backend.catalogue import load_catalogue
from backend.errors import CatalogueError, PersonaSpaceError, SpaceError, SpaceMismatchError
from backend.reading.teacher_forcing import teacher_forced_means
from backend.store.info import space_info
from backend.store.space import MANIFEST, REQUIRED_TENSORS, TENSOR_FILE, load_space

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


def assert_same_space(a, b, exact: bool = False) -> None:  # type: ignore[no-untyped-def]
    """Same tensors and roles. Two generation runs in one process can differ in the ninth decimal of a captured
    mean (kernel choice), so answers generated twice are compared to float precision; ``exact`` for spaces
    computed from the same answers. UMAP magnifies such a difference, so it is compared only when exact."""
    assert sorted(a.tensors) == sorted(b.tensors)
    for name in a.tensors:
        if name.startswith("umap") and not exact:
            continue
        if exact:
            assert torch.equal(a.tensors[name], b.tensors[name]), name
        else:
            torch.testing.assert_close(a.tensors[name], b.tensors[name], rtol=1e-4, atol=1e-5, msg=name)
    assert a.manifest["roles"] == b.manifest["roles"]
    assert a.manifest.get("recipe") == b.manifest.get("recipe")


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


def test_info_json_values(reference_space) -> None:  # type: ignore[no-untyped-def]
    """`info --json` against values recomputed here from the role vectors and the pool (not the stored derivations)."""
    info = json.loads(json.dumps(space_info(reference_space)))
    t = reference_space.tensors
    assert (info["model"], info["fingerprint"], info["n_layers"], info["hidden"]) == ("tiny-llama", "tiny-0", 4, 32)
    assert info["target_layer"] == 2 and info["roles"] == list(ROLES) and info["dropped"] == {}
    vectors = t["role_vectors"].double()
    axis = t["default_vector"].double() - vectors.mean(0)
    for layer in range(4):
        centred = vectors[:, layer] - vectors[:, layer].mean(0)
        _, s, vh = torch.linalg.svd(centred, full_matrices=False)
        assert info["pc1_variance_ratio"][layer] == pytest.approx(float(s[0] ** 2 / (s**2).sum()), abs=1e-4)
        cos = abs(float(vh[0] @ axis[layer] / axis[layer].norm()))  # PC1's sign follows the axis: cos >= 0
        assert info["axis_pc1_cosine"][layer] == pytest.approx(cos, abs=1e-4)
        pool = sorted(t["pool_projections"][:, layer].double().tolist())
        rank = 0.75 * (len(pool) - 1)
        p75 = pool[int(rank)] + (rank - int(rank)) * (pool[min(int(rank) + 1, len(pool) - 1)] - pool[int(rank)])
        assert info["thresholds"][str(layer)]["p75"] == pytest.approx(p75, abs=1e-4)
        assert info["thresholds"][str(layer)]["p1"] == pytest.approx(
            pool[0] + 0.01 * (len(pool) - 1) * (pool[1] - pool[0]), abs=1e-4
        )
    unit = axis[2] / axis[2].norm()
    assert info["projections"] == pytest.approx({name: float(vectors[i, 2] @ unit) for i, name in enumerate(ROLES)}, abs=1e-4)
    assert info["default_projection"] == pytest.approx(float(t["default_vector"][2].double() @ unit), abs=1e-4)
    assert info["counts"]["answers"] == 30 and info["counts"]["roles_kept"] == 5


def test_capture_during_generation_matches_teacher_forcing(tiny_chat, catalogue) -> None:  # type: ignore[no-untyped-def]
    units = plan_units(catalogue, SETTINGS, "tiny")[:6]
    means, records = generate_chunk(tiny_chat, units, SETTINGS, seed=5)
    assert [r["n_tokens"] for r in records] == [len(r["tokens"]) for r in records]
    reference = teacher_forced_means(tiny_chat, units, [r["tokens"] for r in records])
    torch.testing.assert_close(means, reference, rtol=1e-4, atol=1e-5)


def test_generation_runs_on_the_engine_with_its_own_seeded_generator(tiny_chat, catalogue) -> None:  # type: ignore[no-untyped-def]
    """A chunk's answers depend on its seed only (not on global random state); with a vanishing top-p the sampler
    keeps the top token alone, and each batched, left-padded answer is the model's own greedy `generate` of that
    prompt alone (the reference path), cut at the first stop id."""
    from backend.build.local import stop_ids as _stop_ids
    from backend.models.chat import encode_prompt

    units = plan_units(catalogue, SETTINGS, "tiny")[:6]
    torch.manual_seed(1)
    _, first = generate_chunk(tiny_chat, units, SETTINGS, seed=7)
    torch.manual_seed(2)
    _, again = generate_chunk(tiny_chat, units, SETTINGS, seed=7)
    _, other = generate_chunk(tiny_chat, units, SETTINGS, seed=8)
    assert [r["tokens"] for r in first] == [r["tokens"] for r in again]
    assert [r["tokens"] for r in first] != [r["tokens"] for r in other]

    greedy = replace(SETTINGS, top_p=1e-9)
    _, records = generate_chunk(tiny_chat, units, greedy, seed=7)
    stop = set(_stop_ids(tiny_chat))
    tok = tiny_chat.tokenizer
    for unit, record in zip(units, records, strict=True):
        prompt = encode_prompt(tok, unit.system, [{"role": "user", "content": unit.text}])
        ids = torch.tensor([prompt])
        with torch.inference_mode():
            out = tiny_chat.model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=greedy.max_new_tokens,
                pad_token_id=tok.pad_token_id, temperature=None, top_p=None, top_k=None,
            )  # fmt: skip
        expected = []
        for token in out[0, len(prompt) :].tolist():
            if token in stop:
                break
            expected.append(token)
        assert record["tokens"] == expected


def test_resume_after_interruption_equals_uninterrupted(tiny_chat, catalogue, reference_space, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    real = local.generate_chunk
    calls = {"n": 0}

    def dies_on_third(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(local, "generate_chunk", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        build(tiny_chat, catalogue, SETTINGS, tmp_path / "space", tmp_path / "work", log=lambda m: None)
    assert not (tmp_path / "space").exists()
    assert len(list((tmp_path / "work" / "chunks").glob("*.json"))) == 2
    monkeypatch.setattr(local, "generate_chunk", real)
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


def test_a_space_needs_three_archetypes_in_role(tiny_chat, catalogue, tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = replace(SETTINGS, judge="embedding", min_in_role=4)  # random text rarely looks like its role
    with pytest.raises(PersonaSpaceError, match="only .* archetypes have at least 4 in-role answers"):
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
    from backend.store.space import sha256_file

    manifest["files"][TENSOR_FILE] = sha256_file(cut / TENSOR_FILE)  # hash matches, content still unreadable
    (cut / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(SpaceError, match="cannot be read"):
        load_space(cut)
    with pytest.raises(SpaceError, match="no manifest.json"):
        load_space(tmp_path)


def test_catalogue_validation(tmp_path) -> None:  # type: ignore[no-untyped-def]
    shipped = Path(backend.catalogue.__file__).parent
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


def test_answers_that_stop_early_average_only_their_own_tokens(tiny_chat, catalogue) -> None:  # type: ignore[no-untyped-def]
    """Rows that end at EOS before the others: their EOS and the padding fed after it stay out of the means."""
    units = plan_units(catalogue, SETTINGS, "tiny")[:4]
    eos = int(tiny_chat.tokenizer.eos_token_id)
    limit = SETTINGS.max_new_tokens
    stop_at = {0: 2, 1: limit, 2: 4}  # row -> index of the generated token forced to EOS (2, limit and 4 tokens)
    calls = {"n": 0}

    def force_eos(module, args, output):  # type: ignore[no-untyped-def]
        step = calls["n"]  # forward call k produces generated token k
        calls["n"] += 1
        for row, at in stop_at.items():
            if step == at:
                output[row, -1, :] = -1e4
                output[row, -1, eos] = 1e4
        return output

    hook = tiny_chat.model.get_output_embeddings().register_forward_hook(force_eos)
    try:
        means, records = generate_chunk(tiny_chat, units, SETTINGS, seed=3)
    finally:
        hook.remove()
    assert [r["n_tokens"] for r in records] == [2, limit, 4, limit]
    assert [r["truncated"] for r in records] == [False, False, False, True]  # row 1 ends exactly at the limit
    assert calls["n"] == limit + 1  # the prompt's pass and one per kept token: the token past the limit is not fed
    assert all(eos not in r["tokens"] for r in records)
    reference = teacher_forced_means(tiny_chat, units, [r["tokens"] for r in records])
    torch.testing.assert_close(means, reference, rtol=1e-4, atol=1e-5)


def test_check_model_refuses_another_fingerprint_even_under_the_same_name(reference_space) -> None:  # type: ignore[no-untyped-def]
    name = reference_space.manifest["model"]["name"]
    with pytest.raises(SpaceMismatchError, match="built for 'tiny-llama'"):
        reference_space.check_model("f" * 64, name)
    with pytest.raises(SpaceMismatchError):
        load_space(reference_space.path, fingerprint="f" * 64, model_name=name)
    reference_space.check_model("tiny-0", "a renamed copy")  # same weights under another name: accepted


def test_threshold_for_a_percentile_not_stored(reference_space) -> None:  # type: ignore[no-untyped-def]
    pool = reference_space.tensors["pool_projections"].double().numpy()  # (answers, layers)
    assert 60.0 not in reference_space.percentiles
    got = reference_space.threshold(60.0)
    assert got.shape == (4,)
    for layer in range(4):  # linear interpolation between the two nearest ranks, by hand
        values = sorted(pool[:, layer])
        rank = 0.6 * (len(values) - 1)
        lo = int(rank)
        expected = values[lo] + (rank - lo) * (values[min(lo + 1, len(values) - 1)] - values[lo])
        assert float(got[layer]) == pytest.approx(expected, rel=1e-5, abs=1e-5)
    stored = reference_space.percentiles.index(75.0)
    assert torch.equal(reference_space.threshold(75), reference_space.tensors["thresholds"][stored])


def test_role_vectors_average_only_score_3_answers(tiny_chat, catalogue) -> None:  # type: ignore[no-untyped-def]
    units = plan_units(catalogue, SETTINGS, "tiny")
    assert len(units) == 5 * 2 + 5 * 2 * 2
    means = torch.randn(len(units), 4, 32, generator=torch.Generator().manual_seed(0))
    records = [{"n_tokens": 3, "truncated": False, "text": "x"} for _ in units]
    plan = {
        "pirate": [3, 2, 3, 1],
        "librarian": [2, 2, 2, 2],
        "ghost": [3, 0, 2, 2],
        "accountant": [1, 3, 3, 3],
        "poet": [3, 3, 3, 3],
    }
    scores = {}
    for name, given in plan.items():
        for unit, score in zip([u for u in units if u.role == name], given, strict=True):
            scores[unit.key] = (score, "by hand")
    paper = replace(SETTINGS, recipe="paper")  # the paper's recipe: a role vector is the mean of its score-3 answers
    manifest, tensors = build_space(tiny_chat.info.to_dict(), catalogue, paper, units, means, records, scores, started=0.0)
    entries = {e["name"]: e for e in manifest["roles"]}
    assert {n: e["in_role"] for n, e in entries.items()} == {"pirate": 2, "librarian": 0, "ghost": 1, "accountant": 3, "poet": 4}
    # no score-3 answer: still drawn (from every answer it gave), marked weak, left out of the fit
    assert entries["librarian"]["kept"] is True and entries["librarian"]["weak"] is True
    assert "0 in-role (score 3) answers of 4" in entries["librarian"]["weak_reason"] and manifest["weak"] == {"librarian": 0}
    assert entries["ghost"]["scores"] == {"0": 1, "1": 0, "2": 2, "3": 1}
    assert [n for n in plan if entries[n]["kept"]] == list(plan)
    for row, name in enumerate(plan):
        own = [i for i, u in enumerate(units) if u.role == name]
        chosen = [i for i in own if scores[units[i].key][0] == 3] or own
        torch.testing.assert_close(tensors["role_vectors"][row], means[chosen].double().mean(0).float())
    defaults = [i for i, u in enumerate(units) if u.role == "default"]
    torch.testing.assert_close(tensors["default_vector"], means[defaults].double().mean(0).float())


class TextJudge:
    """A deterministic stand-in judge: the ghost is in role on its first answer only and the poet on its first
    three (prompts then questions, the plan's order), so their in-role answers cover the questions unevenly (the
    recipes differ) and, with a minimum of 4, they are weak. It does not read the (randomly sampled) texts."""

    name = "text"
    in_role: ClassVar[dict[str, int]] = {"ghost": 1, "poet": 3}

    def score(self, roles, texts):  # type: ignore[no-untyped-def]
        from collections import Counter

        from backend.judges.embedding import Judged

        seen: Counter[str] = Counter()
        judged = []
        for role in roles:
            seen[role] += 1
            judged.append(Judged(3 if seen[role] <= self.in_role.get(role, 10**9) else 1, "by order"))
        return judged


@pytest.fixture
def text_judge(monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setattr(builder, "make_judge", lambda name, catalogue: TextJudge())


def test_rebuild_with_each_recipe_equals_a_fresh_build(tiny_chat, catalogue, reference_space, tmp_path, text_judge) -> None:  # type: ignore[no-untyped-def]
    work = reference_space.path.parent / "work"
    # a fresh build (new generation, recipe 'paper') against a rebuild of the reference's answers
    fresh = build(tiny_chat, catalogue, replace(SETTINGS, recipe="paper"), tmp_path / "fresh", tmp_path / "w", log=lambda m: None)
    rebuilt = builder.rebuild(work, catalogue, tmp_path / "re-paper", log=lambda m: None, recipe="paper")
    assert_same_space(load_space(rebuilt), load_space(fresh))
    axes = {}
    for recipe in RECIPES:
        # `build` on a copy of the finished answers (no generation) and `rebuild` from them: the same space
        shutil.copytree(work, tmp_path / f"w-{recipe}")
        built = build(
            tiny_chat,
            catalogue,
            replace(SETTINGS, recipe=recipe),
            tmp_path / recipe,
            tmp_path / f"w-{recipe}",
            log=lambda m: None,
        )
        rebuilt = builder.rebuild(work, catalogue, tmp_path / f"re-{recipe}", log=lambda m: None, recipe=recipe)
        a, b = load_space(built), load_space(rebuilt)
        assert_same_space(a, b, exact=True)
        assert a.manifest["recipe"] == recipe and space_info(a)["recipe"] == recipe
        axes[recipe] = a.tensors["axis"]
    assert not torch.allclose(axes["paper"], axes["centred"])  # the stand-in judge makes the recipes differ
    with pytest.raises(PersonaSpaceError, match="cannot change .*max_new_tokens"):
        builder.rebuild(work, catalogue, tmp_path / "x", log=lambda m: None, max_new_tokens=9)


def test_weak_archetypes_are_drawn_but_not_fitted(tiny_chat, catalogue, reference_space, tmp_path, text_judge) -> None:  # type: ignore[no-untyped-def]
    work = reference_space.path.parent / "work"
    scores = {}
    for recipe in ("paper", "centred"):
        path = builder.rebuild(work, catalogue, tmp_path / recipe, log=lambda m: None, recipe=recipe, min_in_role=4)
        space = load_space(path)
        m, t = space.manifest, space.tensors
        weak = [r["name"] for r in m["roles"] if r.get("weak")]
        assert space.roles == list(ROLES) and 0 < len(weak) < len(ROLES) - 2  # everyone drawn, some weak
        assert m["weak"] == {r["name"]: r["in_role"] for r in m["roles"] if r.get("weak")}
        assert all(m["weak"][n] < 4 for n in weak) and m["counts"]["roles_weak"] == len(weak)
        fitted = torch.tensor([n not in weak for n in space.roles])
        torch.testing.assert_close(t["axis"], t["default_vector"] - t["role_vectors"][fitted].mean(0))
        info = space_info(space)
        assert info["weak"] == m["weak"] and len(info["default_pc1_percentile"]) == 4
        pc1 = t["pca_role_coords"][:, :, 0]
        expected = (pc1 < t["pca_default_coords"][:, None, 0]).double().mean(1)
        assert info["default_pc1_percentile"] == [round(float(x), 4) for x in expected]
        scores[recipe] = weak
    assert scores["paper"] == scores["centred"]  # weak is about the judge, not the recipe
