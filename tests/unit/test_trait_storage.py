"""Compact trait storage: int8 steps with a float32 scale per vector, read back within half a step, refused on load
when hand-edited, and written by ``build-traits --compact`` from the work folder without generating again."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import backend.build.traits as trait_build
from backend.cli import main
from backend.errors import SpaceError
from backend.maths.quantize import dequantize_int8, quantize_int8
from backend.store.space import MANIFEST, TENSOR_FILE, load_space, sha256_file
from backend.store.trait_check import TRAIT_INT8, TRAIT_SCALE, TRAIT_TENSOR
from backend.store.traits import TRAIT_FIELD, add_traits, read_traits


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)


def test_int8_round_trip_is_within_half_a_step() -> None:
    g = torch.Generator().manual_seed(0)
    gaussian = torch.randn(40, 6, 576, generator=g) * torch.logspace(-3, 3, 40).reshape(40, 1, 1)
    spike = torch.full((1, 1, 576), 1e-3)
    spike[0, 0, 7] = 5e4  # one huge component: the rest rounds to 0, the direction survives
    zeros = torch.zeros(1, 1, 576)
    for vectors in (gaussian, spike, zeros):
        q, scale = quantize_int8(vectors)
        assert q.dtype == torch.int8 and scale.dtype == torch.float32 and scale.shape == vectors.shape[:-1]
        back = dequantize_int8(q, scale)
        step = scale.unsqueeze(-1)
        assert bool(((back - vectors).abs() <= step / 2 + 1e-6 * step + 1e-12).all())
        assert int(q.abs().max()) <= 127
    assert bool((_cosine(dequantize_int8(*quantize_int8(gaussian)), gaussian) > 0.9999).all())
    assert _cosine(dequantize_int8(*quantize_int8(spike)), spike).item() > 0.9999
    assert torch.equal(dequantize_int8(*quantize_int8(zeros)), zeros)


def _trait_set(names: list[str]) -> dict:  # type: ignore[type-arg]
    entries = [{"name": n, "description": f"{n}.", "opposite": f"not {n}.", "kept": True, "weak": False} for n in names]
    return {"traits": entries, "kept_order": names, "settings": {}, "counts": {}}


@pytest.fixture()
def spaces(tiny_world, tmp_path):  # type: ignore[no-untyped-def]
    _, space, _ = tiny_world
    plain = load_space(space)
    n_layers, hidden = plain.manifest["n_layers"], plain.manifest["hidden"]
    vectors = torch.randn(3, n_layers, hidden, generator=torch.Generator().manual_seed(1))
    out = {}
    for compact in (False, True):
        target = tmp_path / ("compact" if compact else "float32")
        shutil.copytree(space, target)
        add_traits(
            target, plain.manifest["model"]["fingerprint"], _trait_set(["calm", "blunt", "witty"]), vectors, compact=compact
        )
        out[compact] = target
    return out, vectors


def test_a_compact_space_loads_as_float32_traits_close_to_the_exact_ones(spaces, capsys) -> None:  # type: ignore[no-untyped-def]
    paths, vectors = spaces
    exact, compact = load_space(paths[False]), load_space(paths[True])
    assert set(load_file(str(paths[True] / TENSOR_FILE))) >= {TRAIT_INT8, TRAIT_SCALE}
    assert TRAIT_TENSOR not in load_file(str(paths[True] / TENSOR_FILE))
    assert exact.manifest[TRAIT_FIELD]["storage"] == "float32" and compact.manifest[TRAIT_FIELD]["storage"] == "int8"
    assert torch.equal(exact.tensors[TRAIT_TENSOR], vectors)
    traits = read_traits(compact)
    assert traits is not None and traits.vectors.dtype == torch.float32 and traits.names == ["calm", "blunt", "witty"]
    assert bool((_cosine(traits.vectors, vectors) > 0.9999).all())
    for name, tensor in exact.tensors.items():  # the persona space is the same either way
        if name != TRAIT_TENSOR:
            assert torch.equal(tensor, compact.tensors[name]), name
    # 1 byte a value instead of 4, plus a scale per vector
    saved = (paths[False] / TENSOR_FILE).stat().st_size - (paths[True] / TENSOR_FILE).stat().st_size
    assert saved >= vectors.numel() * 3 - vectors[..., 0].numel() * 4 - 200
    assert main(["info", "--json", str(paths[True])]) == 0
    assert len(json.loads(capsys.readouterr().out)["traits"]["traits"]) == 3
    # writing traits again over a compact space in float32 leaves no compact tensors behind
    add_traits(paths[True], compact.manifest["model"]["fingerprint"], _trait_set(["calm", "blunt", "witty"]), vectors)
    assert TRAIT_INT8 not in load_file(str(paths[True] / TENSOR_FILE))
    assert torch.equal(load_space(paths[True]).tensors[TRAIT_TENSOR], vectors)


def _edit(path: Path, change) -> None:  # type: ignore[no-untyped-def]
    """Rewrite the space's tensors with ``change`` and re-sign the manifest, as a hand edit that knows the format."""
    tensors = load_file(str(path / TENSOR_FILE))
    change(tensors)
    save_file(tensors, str(path / TENSOR_FILE))
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["files"][TENSOR_FILE] = sha256_file(path / TENSOR_FILE)
    (path / MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.__setitem__(TRAIT_SCALE, torch.full_like(t[TRAIT_SCALE], float("nan"))), "trait_vectors_scale must hold finite"),
        (lambda t: t.__setitem__(TRAIT_SCALE, -t[TRAIT_SCALE]), "trait_vectors_scale must hold finite non-negative"),
        (lambda t: t.__setitem__(TRAIT_INT8, t[TRAIT_INT8].float()), "trait_vectors_int8 must hold int8"),
        (lambda t: t.pop(TRAIT_SCALE), "trait_vectors_int8 without trait_vectors_scale"),
        (lambda t: t.__setitem__(TRAIT_SCALE, t[TRAIT_SCALE][:, :2].contiguous()), "tensor trait_vectors_scale has shape"),
        (lambda t: t.__setitem__(TRAIT_INT8, t[TRAIT_INT8][:2].contiguous()), "tensor trait_vectors_int8 has shape"),
        (lambda t: t.__setitem__(TRAIT_TENSOR, torch.zeros(1)), "both trait_vectors and its compact form"),
    ],
)  # fmt: skip
def test_a_hand_edited_compact_space_is_refused_naming_the_tensor(spaces, tmp_path, change, message) -> None:  # type: ignore[no-untyped-def]
    edited = tmp_path / "edited"
    shutil.copytree(spaces[0][True], edited)
    _edit(edited, change)
    with pytest.raises(SpaceError, match=message):
        load_space(edited)


def test_build_traits_compact_rewrites_from_the_work_folder_without_generating(tiny_world, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    model, space, _ = tiny_world
    target = tmp_path / "space"
    shutil.copytree(space, target)
    args = ["build-traits", "--space", str(target), "--model", model, "--device", "cpu", "--traits", "calm,blunt"]
    args += ["--pairs-per-trait", "1", "--questions", "2", "--max-new-tokens", "4", "--batch-size", "16", "--judge", "none"]
    assert main([*args, "--min-kept", "1"]) == 0
    exact = read_traits(load_space(target))
    generated: list[int] = []
    real = trait_build.run_generation
    monkeypatch.setattr(trait_build, "run_generation", lambda *a, **k: generated.append(real(*a, **k)) or generated[-1])
    assert main([*args, "--min-kept", "1", "--compact"]) == 0
    assert generated == [0]  # every chunk was already in the work folder
    compact = load_space(target)
    assert compact.manifest[TRAIT_FIELD]["storage"] == "int8"
    traits = read_traits(compact)
    assert exact is not None and traits is not None and traits.names == exact.names
    assert bool((_cosine(traits.vectors, exact.vectors) > 0.9999).all())
