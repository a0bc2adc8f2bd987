"""The store's red-team defects (issue #27): writing a space replaces only a folder that is a space or is empty
(``--out`` once deleted whatever folder it was given), and loading refuses a manifest with text UTF-8 cannot encode
or tensors that are not finite (they were served 'ready', then every answer was a 500)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from backend.cli import main
from backend.errors import SpaceError
from backend.store.space import MANIFEST, TENSOR_FILE, load_space, sha256_file, write_space
from tests.unit.test_paper_import import write_release


def _tiny(value: float = 1.0) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """What write_space needs (it checks no schema): a manifest and one tensor."""
    return {"note": "test"}, {"axis": torch.full((2, 3), value)}


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``tmp/work`` is the current folder; beside it a folder with notes, a folder holding a space and a file."""
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "mine.txt").write_text("mine")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "notes.txt").write_text("keep")
    write_space(tmp_path / "spaces" / "one", *_tiny())
    (tmp_path / "a-file").write_text("keep")
    monkeypatch.chdir(tmp_path / "work")
    return tmp_path


REFUSED = {  # --out as typed, from tmp/work -> what the one line says
    "other files": ("../notes", "not a persona space"),
    "holds spaces": ("../spaces", "not a persona space"),
    "a file": ("../a-file", "is a file"),
    "the current folder": (".", "current folder"),
    "empty": ("", "current folder"),
    "the parent folder": ("..", "holds the current folder"),
    "a roundabout path": ("../spaces/one/..", "not a persona space"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_write_space_refuses_a_folder_that_is_not_a_space_and_touches_nothing(folders: Path, case: str) -> None:
    target, said = REFUSED[case]
    before = _tree(folders)
    with pytest.raises(SpaceError, match=said) as caught:
        write_space(Path(target), *_tiny(2.0))
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 400
    assert _tree(folders) == before
    assert sorted(p.name for p in folders.iterdir()) == ["a-file", "notes", "spaces", "work"]  # no temp folder left


def test_write_space_refuses_a_space_folder_holding_other_files(tmp_path: Path) -> None:
    space = write_space(tmp_path / "space", *_tiny())
    (space / "notes.txt").write_text("keep")
    with pytest.raises(SpaceError, match=r"notes\.txt"):
        write_space(space, *_tiny(2.0))
    assert (space / "notes.txt").read_text() == "keep"


def test_write_space_refuses_a_symbolic_link(tmp_path: Path) -> None:
    space = write_space(tmp_path / "space", *_tiny())
    (tmp_path / "link").symlink_to(space)
    with pytest.raises(SpaceError, match="symbolic link"):
        write_space(tmp_path / "link", *_tiny(2.0))
    assert (tmp_path / "link").is_symlink()


def test_write_space_replaces_a_space_fills_an_empty_folder_and_makes_a_new_one(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    space = write_space(tmp_path / "space", *_tiny(1.0))
    (space / ".manifest-x1y2").write_text("{}")  # what a killed `evaluate-cap --write-preset` leaves behind
    write_space(space, *_tiny(2.0))
    assert float(load_file(str(space / TENSOR_FILE))["axis"][0, 0]) == 2.0
    assert sorted(p.name for p in space.iterdir()) == [MANIFEST, TENSOR_FILE]
    (tmp_path / "empty").mkdir()
    write_space(tmp_path / "empty", *_tiny())
    write_space(tmp_path / "new" / "deeper", *_tiny())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "new", "space"]  # no temp or old folder left


@pytest.mark.parametrize("case", list(REFUSED))
def test_import_paper_vectors_out_refuses_with_one_line(folders: Path, case: str, capsys: pytest.CaptureFixture[str]) -> None:
    write_release(folders / "release")
    before = _tree(folders)
    target, said = REFUSED[case]
    assert main(["import-paper-vectors", str(folders / "release"), "--out", target]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and said in err, err
    assert _tree(folders) == before


# loading an edited space ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("release") / "synthetic"
    write_release(folder)
    path, _ = main_import(folder, folder.parent / "space")
    return path


def main_import(folder: Path, out: Path) -> tuple[Path, dict[str, Any]]:
    from backend.build.paper import import_paper_vectors

    return import_paper_vectors(folder, out, model_name="synthetic-model")


def _copy(space: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(space, to)
    return to


def _edit_manifest(space: Path, edit: Any) -> None:
    manifest = json.loads((space / MANIFEST).read_text(encoding="utf-8"))
    edit(manifest)
    (space / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")  # ensure_ascii: "\ud800" is written as an escape


def _edit_tensor(space: Path, name: str, edit: Any) -> None:
    """Change one tensor and update the manifest's hash, as a careful hand edit would."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(space / TENSOR_FILE))
    tensors[name] = edit(tensors[name].clone())
    save_file(tensors, str(space / TENSOR_FILE))
    _edit_manifest(space, lambda m: m["files"].update({TENSOR_FILE: sha256_file(space / TENSOR_FILE)}))


def _set_description(m: dict[str, Any]) -> None:
    m["roles"][1]["description"] = "\ud800"


def _set_key(m: dict[str, Any]) -> None:
    m["counts"]["\udcff"] = 1


MANIFEST_EDITS = {"roles.1.description": _set_description, "counts": _set_key}


@pytest.mark.parametrize("field", list(MANIFEST_EDITS))
def test_a_manifest_with_text_utf8_cannot_encode_is_refused_naming_the_field(imported: Path, tmp_path: Path, field: str) -> None:
    edited = _copy(imported, tmp_path / "edited")
    _edit_manifest(edited, MANIFEST_EDITS[field])
    with pytest.raises(SpaceError, match=rf"field {field}.*UTF-8") as caught:
        load_space(edited)
    assert "\n" not in str(caught.value)


def _nan(t: torch.Tensor) -> torch.Tensor:
    return t * float("nan")


def _one_inf(t: torch.Tensor) -> torch.Tensor:
    t.view(-1)[-1] = float("inf")
    return t


TENSOR_EDITS = {
    "axis": _nan, "role_vectors": _one_inf, "default_vector": _one_inf, "pool_projections": _one_inf,
    "thresholds": _nan, "pca_components": _one_inf, "activation_norm": _nan, "umap_2d": _one_inf,
}  # fmt: skip


@pytest.mark.parametrize("name", list(TENSOR_EDITS))
def test_a_tensor_that_is_not_finite_is_refused_naming_it(imported: Path, tmp_path: Path, name: str) -> None:
    edited = _copy(imported, tmp_path / "edited")
    _edit_tensor(edited, name, TENSOR_EDITS[name])
    with pytest.raises(SpaceError, match=rf"tensor {name} has \d+ non-finite") as caught:
        load_space(edited)
    assert "\n" not in str(caught.value)


def test_info_refuses_an_edited_space_with_one_line(imported: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edited = _copy(imported, tmp_path / "edited")
    _edit_tensor(edited, "axis", _nan)
    assert main(["info", str(edited)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "tensor axis" in err, err


def test_write_space_refuses_what_load_space_would_and_keeps_the_old_space(tmp_path: Path) -> None:
    space = write_space(tmp_path / "space", *_tiny(1.0))
    before = _tree(space)
    with pytest.raises(SpaceError, match=r"tensor axis has 6 non-finite"):
        write_space(space, *_tiny(float("nan")))
    with pytest.raises(SpaceError, match=r"field roles\.0\.name.*UTF-8"):
        write_space(space, {"roles": [{"name": "\ud800"}]}, _tiny()[1])
    assert _tree(space) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space"]


def test_serve_with_an_empty_db_path_refuses_instead_of_opening_the_shared_default(tmp_path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    """#27, defect 13: ``serve --db ""`` opened the default database in the cache folder, which may be another
    worker's. It must refuse with one line, before any model loads and without touching the cache."""
    from backend.cli import main

    monkeypatch.setenv("PERSONA_SPACE_CACHE", str(tmp_path / "cache"))
    for empty in ("", "  "):
        assert main(["serve", "--db", empty, "--model", "no-such-model"]) == 2
        err = capsys.readouterr().err
        assert "--db needs a file path" in err and "Traceback" not in err
    assert not (tmp_path / "cache").exists()


def test_serve_refuses_a_batch_rows_out_of_range_before_loading(tmp_path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    """``serve --batch-rows`` takes 1-16: 0 or 17 is one line naming the flag, before any model loads."""
    from backend.cli import main

    monkeypatch.setenv("PERSONA_SPACE_CACHE", str(tmp_path / "cache"))
    for bad in ("0", "17", "-3"):
        assert main(["serve", "--batch-rows", bad, "--model", "no-such-model"]) == 2
        err = capsys.readouterr().err
        assert "--batch-rows must be 1-16" in err and "Traceback" not in err
    assert not (tmp_path / "cache").exists()
