"""A copy of a built space with three trait vectors added (for the tests of traits in the chat and trait steering).

``assistant_like`` lies along the Assistant Axis itself (3 x the axis at every layer), so a turn's projection on it
is its ``mean_projection``; ``dramatic`` and the weak ``playful`` are random (seeded)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from backend.store.space import load_space
from backend.store.traits import add_traits

TRAITS = ("assistant_like", "dramatic", "playful")
WEAK = "playful"


def with_traits(space_path: str | Path, to: Path) -> Path:
    shutil.copytree(space_path, to)
    space = load_space(to)
    axis = space.tensors["axis"]
    g = torch.Generator().manual_seed(11)
    vectors = torch.stack([3.0 * axis, torch.randn(axis.shape, generator=g), torch.randn(axis.shape, generator=g)])
    entries = [
        {"name": n, "description": f"{n} answers", "opposite": f"not {n}", "kept": True, **({"weak": True} if n == WEAK else {})}
        for n in TRAITS
    ]
    trait_set = {"traits": entries, "kept_order": list(TRAITS), "settings": {}, "counts": {}}
    add_traits(to, space.manifest["model"]["fingerprint"], trait_set, vectors)
    return to
