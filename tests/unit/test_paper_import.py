"""Importing the paper's released vectors: synthetic files of the release layout, bf16 like the real ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from backend.build.paper import import_paper_vectors, release_settings
from backend.build.paper_caps import parse_capping_config, released_percentile
from backend.errors import SpaceError
from backend.store.space import load_space

L, D, N_ROLES, N_TRAITS = 6, 16, 12, 4


def _touch(path: str) -> None:  # would run if a pickle were ever executed
    Path(path).write_text("executed")


class Payload:
    """A custom object: ``torch.save`` pickles it; unpickling it would call ``_touch``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (_touch, (self.marker,))


def _vectors(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """bf16 default ``(L, D)``, roles ``(R, L, D)`` and traits ``(T, L, D)``: roles spread along one direction."""
    g = torch.Generator().manual_seed(seed)
    direction = torch.randn(L, D, generator=g)
    base = torch.randn(L, D, generator=g) * 3
    roles = base + torch.randn(N_ROLES, 1, 1, generator=g) * direction + 0.3 * torch.randn(N_ROLES, L, D, generator=g)
    default = base + 2.5 * direction
    traits = base + torch.randn(N_TRAITS, 1, 1, generator=g) * direction
    return default.bfloat16(), roles.bfloat16(), traits.bfloat16()


def _axis(default: torch.Tensor, roles: torch.Tensor) -> torch.Tensor:
    return default.float() - roles.float().mean(0)


def write_release(folder: Path, *, axis_as_dict: bool = False, capping: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write a release folder; returns the tensors written (bf16) and the names."""
    default, roles, traits = _vectors()
    (folder / "role_vectors").mkdir(parents=True)
    (folder / "trait_vectors").mkdir()
    axis = _axis(default, roles).bfloat16()
    torch.save(
        {"axis": axis, "metadata": {"model": "synthetic", "layers": L}} if axis_as_dict else axis, folder / "assistant_axis.pt"
    )
    torch.save(default, folder / "default_vector.pt")
    names = [f"role_{i:02d}" for i in range(N_ROLES)]
    for name, vector in zip(names, roles, strict=True):
        torch.save(vector.clone(), folder / "role_vectors" / f"{name}.pt")
    trait_names = [f"trait_{i}" for i in range(N_TRAITS)]
    for name, vector in zip(trait_names, traits, strict=True):
        torch.save(vector.clone(), folder / "trait_vectors" / f"{name}.pt")
    if capping is not None:
        torch.save(capping, folder / "capping_config.pt")
    return {"default": default, "roles": roles, "traits": traits, "names": names, "trait_names": trait_names}


def capping_config(axis: torch.Tensor, caps: dict[int, float], *, sign: float = -1.0, unit: bool = False) -> dict[str, Any]:
    """The released format: vectors ``sign * axis[L]`` (the paper: ``role - default``, sign -1) keyed ``layer_<L>/...``."""
    vectors: dict[str, Any] = {}
    interventions = []
    for layer, cap in caps.items():
        v = sign * axis[layer].float()
        key = f"layer_{layer}/assistant_axis"
        vectors[key] = {"vector": (v / v.norm() if unit else v).bfloat16(), "layer": layer}
        interventions.append({"vector": key, "cap": cap})
    a, b = min(caps), max(caps) + 1
    return {"vectors": vectors, "experiments": [{"id": f"layers_{a}:{b}-p0.25", "interventions": interventions}]}


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path, dict[str, Any]]:
    folder = tmp_path_factory.mktemp("release") / "qwen-synthetic"
    default, roles, _ = _vectors()
    config = capping_config(_axis(default, roles), {3: -1.5, 4: -2.25})
    written = write_release(folder, capping=config)
    path, report = import_paper_vectors(folder, folder.parent / "space", model_name="synthetic-model")
    return written, path, report


def test_imported_space_loads_with_recomputed_axis(imported: tuple[dict[str, Any], Path, dict[str, Any]]) -> None:
    written, path, report = imported
    space = load_space(path)
    t, m = space.tensors, space.manifest
    assert space.roles == written["names"]
    assert t["role_vectors"].dtype == torch.float32 and t["role_vectors"].shape == (N_ROLES, L, D)
    torch.testing.assert_close(t["default_vector"], written["default"].float())
    torch.testing.assert_close(t["axis"], _axis(written["default"], written["roles"]), rtol=1e-5, atol=1e-5)
    # default + roles + traits, projected on the unit axis; thresholds are its percentiles
    assert t["pool_projections"].shape == (1 + N_ROLES + N_TRAITS, L)
    assert t["thresholds"].shape == (4, L)
    unit = t["axis"] / t["axis"].norm(dim=-1, keepdim=True)
    trait_proj = (written["traits"].float() * unit).sum(-1)  # (T, L)
    expected_pool = torch.cat(
        [(written["roles"].float() * unit).sum(-1), (written["default"].float() * unit).sum(-1)[None], trait_proj]
    )
    torch.testing.assert_close(t["pool_projections"], expected_pool, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(
        t["thresholds"][3], torch.quantile(expected_pool.double(), 0.75, dim=0).float(), rtol=1e-4, atol=1e-4
    )
    torch.testing.assert_close(t["activation_norm"], written["roles"].float().norm(dim=-1).mean(0))
    assert m["model"]["spec"] == m["model"]["name"] == "synthetic-model"
    assert m["model"]["fingerprint"].startswith("paper-release:") and len(m["model"]["fingerprint"]) == len("paper-release:") + 64
    assert m["model"]["architecture"] == "unknown"
    assert all(r["category"] == "imported" and r["kept"] and r["description"] == "" for r in m["roles"])
    assert m["target_layer"] == L // 2 and report["target_layer_source"] == "inferred"
    # traits are not roles: their projections at the target layer sit in the manifest
    assert set(m["traits"]) == set(written["trait_names"])
    for i, name in enumerate(written["trait_names"]):
        assert m["traits"][name] == pytest.approx(float(trait_proj[i, L // 2]), abs=1e-4)
    assert m["import"]["pool"] == report["pool"] == "role and trait vectors"
    assert report["pool_size"] == 1 + N_ROLES + N_TRAITS
    assert {"umap_2d", "umap_3d"} <= set(t)


def test_axis_cosine_report(imported: tuple[dict[str, Any], Path, dict[str, Any]]) -> None:
    _, path, report = imported
    cos = report["axis_cosine"]
    assert cos["min"] > 0.999 and cos["mean"] > 0.999 and len(cos["per_layer"]) == L
    assert report["released_axis_format"] == "tensor"
    assert load_space(path).manifest["import"]["axis_cosine"] == cos
    assert not report["warnings"]


def test_cap_presets_from_released_convention(imported: tuple[dict[str, Any], Path, dict[str, Any]]) -> None:
    _, path, report = imported
    presets = load_space(path).manifest["cap_presets"]
    assert len(presets) == 1
    preset = presets[0]
    assert preset["id"] == "layers_3:5-p0.25" and preset["layers"] == [3, 5]
    assert preset["percentile"] == 75.0  # p0.25 along -axis = the 75th percentile along the axis
    assert preset["thresholds"] == {"3": 1.5, "4": 2.25}  # tau = -cap
    assert preset["sign_cosine"] == pytest.approx(1.0, abs=1e-3) and not preset["flipped"]
    assert all(c == pytest.approx(1.0, abs=1e-3) for c in preset["sign_cosines"].values())
    assert report["cap_presets"][0]["sign_cosine"] == pytest.approx(1.0, abs=1e-3)


def test_dict_axis_and_flipped_capping_config(tmp_path: Path) -> None:
    default, roles, _ = _vectors()
    axis = _axis(default, roles)
    config = capping_config(axis, {2: 0.75, 3: 1.25}, sign=+1.0)  # vectors along +axis, caps at the floor level
    write_release(tmp_path / "release", axis_as_dict=True, capping=config)
    path, report = import_paper_vectors(tmp_path / "release", tmp_path / "space", target_layer=2)
    assert report["released_axis_format"] == "dict" and report["released_axis_extra_keys"] == ["metadata"]
    assert report["axis_cosine"]["min"] > 0.999
    space = load_space(path)
    assert space.target_layer == 2 and report["target_layer_source"] == "override"
    assert space.manifest["model"]["name"] == "release"
    preset = space.manifest["cap_presets"][0]
    assert preset["sign_cosine"] == pytest.approx(-1.0, abs=1e-3) and preset["flipped"]
    assert preset["thresholds"] == {"2": 0.75, "3": 1.25}  # the same level on the Assistant axis
    assert any("+axis" in w for w in report["warnings"])


def test_cap_conversion_ignores_vector_norm_and_skips_unaligned() -> None:
    default, roles, _ = _vectors()
    axis = _axis(default, roles)
    unit_config = capping_config(axis, {1: -3.0}, unit=True)
    scaled_config = capping_config(axis * 40, {1: -3.0})
    for config in (unit_config, scaled_config):
        presets, skipped, _ = parse_capping_config(config, axis)
        assert presets[0]["thresholds"] == {"1": 3.0} and not skipped
    other = torch.zeros(D)
    other[0] = 1.0
    other -= (other @ axis[1]) / axis[1].norm() ** 2 * axis[1]  # orthogonal to the axis
    bad = {
        "vectors": {"layer_1/x": {"vector": other, "layer": 1}},
        "experiments": [{"id": "layers_1:2-p0.5", "interventions": [{"vector": "layer_1/x", "cap": -1.0}]}],
    }
    presets, skipped, _ = parse_capping_config(bad, axis)
    assert not presets and skipped[0]["id"] == "layers_1:2-p0.5" and "not along" in skipped[0]["reason"]
    with pytest.raises(SpaceError, match="'missing'"):
        parse_capping_config(
            {"vectors": {}, "experiments": [{"id": "x", "interventions": [{"vector": "missing", "cap": 1}]}]}, axis
        )
    with pytest.raises(SpaceError, match="not a capping config"):
        parse_capping_config([1, 2], axis)


def test_release_settings_and_percentiles() -> None:
    assert release_settings(46, 4608).target_layer == 22
    assert release_settings(64, 5120).target_layer == 32
    assert release_settings(80, 8192).target_layer == 40
    assert release_settings(6, 16).target_layer == 3
    assert [released_percentile(q) for q in (0.25, 0.5, 0.01, 25)] == [75.0, 50.0, 99.0, 75.0]


def test_shape_mismatch_names_the_file(tmp_path: Path) -> None:
    write_release(tmp_path)
    torch.save(torch.zeros(L, D - 1, dtype=torch.bfloat16), tmp_path / "role_vectors" / "role_05.pt")
    with pytest.raises(SpaceError, match=r"role_vectors/role_05\.pt has shape \(6, 15\).*\(6, 16\)"):
        import_paper_vectors(tmp_path, tmp_path / "space")


def test_pickled_object_is_refused_and_never_run(tmp_path: Path) -> None:
    write_release(tmp_path)
    marker = tmp_path / "marker"
    torch.save(Payload(str(marker)), tmp_path / "role_vectors" / "role_03.pt")
    with pytest.raises(
        SpaceError, match=r"role_vectors/role_03\.pt is not a plain tensor file \(it holds Python objects"
    ) as info:
        import_paper_vectors(tmp_path, tmp_path / "space")
    assert "weights_only=False" not in str(info.value)
    assert not marker.exists()
    assert not (tmp_path / "space").exists()


def test_missing_default_vector(tmp_path: Path) -> None:
    write_release(tmp_path)
    (tmp_path / "default_vector.pt").unlink()
    with pytest.raises(SpaceError, match=r"default_vector\.pt is missing"):
        import_paper_vectors(tmp_path, tmp_path / "space")


def test_empty_role_folder_and_non_finite_values(tmp_path: Path) -> None:
    written = write_release(tmp_path / "a")
    for p in (tmp_path / "a" / "role_vectors").iterdir():
        p.unlink()
    with pytest.raises(SpaceError, match=r"no <role>\.pt files"):
        import_paper_vectors(tmp_path / "a", tmp_path / "space")
    write_release(tmp_path / "b")
    bad = written["traits"][0].clone()
    bad[1, 2] = float("nan")
    torch.save(bad, tmp_path / "b" / "trait_vectors" / "trait_0.pt")
    with pytest.raises(SpaceError, match=r"trait_vectors/trait_0\.pt has 1 non-finite"):
        import_paper_vectors(tmp_path / "b", tmp_path / "space")


def test_garbage_file_is_unreadable(tmp_path: Path) -> None:
    write_release(tmp_path)
    (tmp_path / "assistant_axis.pt").write_bytes(b"not a torch file at all")
    with pytest.raises(SpaceError, match=r"assistant_axis\.pt"):
        import_paper_vectors(tmp_path, tmp_path / "space")
