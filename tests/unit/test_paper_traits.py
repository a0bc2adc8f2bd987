"""Imported paper trait vectors land in the space's trait structure (``trait_vectors`` + ``trait_set``), as
``build-traits`` writes it: a synthetic release (see ``test_paper_import``) with two traits our catalogue knows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from backend.build.paper import import_paper_vectors
from backend.catalogue.traits import load_traits
from backend.cli import main
from backend.store.space import load_space
from backend.store.traits import read_traits
from tests.unit.test_paper_import import N_TRAITS, D, L, write_release

KNOWN = {"trait_0": "pessimistic", "trait_1": "humble"}  # renamed to catalogue names; trait_2, trait_3 stay unknown


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    folder = tmp_path_factory.mktemp("paper-traits") / "release"
    written = write_release(folder)
    by_name: dict[str, torch.Tensor] = {}
    for name, vector in zip(written["trait_names"], written["traits"], strict=True):
        new = KNOWN.get(name, name)
        if new != name:
            (folder / "trait_vectors" / f"{name}.pt").rename(folder / "trait_vectors" / f"{new}.pt")
        by_name[new] = vector
    return folder, by_name


def test_released_traits_are_the_space_traits(release: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path) -> None:
    folder, by_name = release
    path, report = import_paper_vectors(folder, tmp_path / "space", model_name="synthetic-model")
    space = load_space(path)
    traits = read_traits(space)
    assert traits is not None
    assert traits.names == sorted(by_name)  # the file stems, in file order
    assert traits.vectors.dtype == torch.float32 and traits.vectors.shape == (N_TRAITS, L, D)
    for i, name in enumerate(traits.names):
        assert torch.equal(traits.vectors[i], by_name[name].float())  # bf16 -> float32 is exact
    assert traits.weak == [False] * N_TRAITS
    catalogue = {t.name: t for t in load_traits()}
    for entry in traits.entries:
        known = catalogue.get(entry["name"])
        assert entry["kept"] is True and entry["weak"] is False
        assert entry["in_catalogue"] is (known is not None)
        assert entry["description"] == (known.description if known else "")
        assert entry["opposite"] == (known.opposite if known else "")
    assert {e["name"] for e in traits.entries if e["in_catalogue"]} == set(KNOWN.values())
    trait_set = space.manifest["trait_set"]
    assert trait_set["settings"]["source"] == "paper" and trait_set["judge"] is None
    assert trait_set["counts"] == {"traits_kept": N_TRAITS, "traits_weak": 0, "traits_dropped": 0, "in_catalogue": 2}
    # the old field is unchanged: each trait's projection on the unit axis at the target layer
    axis = space.tensors["axis"][space.target_layer]
    for i, name in enumerate(traits.names):
        expected = float(traits.vectors[i, space.target_layer] @ (axis / axis.norm()))
        assert space.manifest["traits"][name] == pytest.approx(expected, abs=1e-4)
    assert report["traits"] == N_TRAITS


def test_info_json_reports_the_released_traits(
    release: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, by_name = release
    path, _ = import_paper_vectors(folder, tmp_path / "space")
    capsys.readouterr()
    assert main(["info", "--json", str(path)]) == 0
    info: dict[str, Any] = json.loads(capsys.readouterr().out)["traits"]
    space = load_space(path)
    axis = space.tensors["axis"][space.target_layer]
    assert set(info["traits"]) == set(by_name) and info["weak"] == 0 and info["dropped"] == {}
    for name, row in info["traits"].items():
        v = by_name[name].float()[space.target_layer]
        assert row["axis_cosine"] == pytest.approx(float(torch.cosine_similarity(v, axis, dim=0)), abs=1e-3)
        assert row["weak"] is False and len(row["pc_cosines"]) == 3
    assert main(["info", str(path)]) == 0 and "traits at the far end" in capsys.readouterr().out


def test_release_without_traits_has_no_trait_structure(tmp_path: Path) -> None:
    write_release(tmp_path / "release")
    for p in (tmp_path / "release" / "trait_vectors").iterdir():
        p.unlink()
    path, report = import_paper_vectors(tmp_path / "release", tmp_path / "space")
    space = load_space(path)
    assert read_traits(space) is None
    assert "trait_set" not in space.manifest and "trait_vectors" not in space.tensors
    assert space.manifest["traits"] == {} and report["traits"] == 0
