"""The trait catalogue (``traits.json`` beside the archetypes), validated on load like the archetypes.

``traits.json`` is a list of ``{name, description, opposite, pairs: [{trait, opposite}] x 5}``: ``description`` says in
one line what expressing the trait looks like, ``opposite`` what its opposite pole looks like, and each pair holds a
system instruction that asks for the trait and one that asks for its opposite. The shipped file holds exactly the
names of ``trait_names.txt`` (the 240 traits of the paper; the wording of every entry is our own).

Checked on load, each failure one :class:`~backend.errors.CatalogueError` naming the trait and the field: known
fields only, a snake_case name of at most :data:`MAX_NAME` characters used once, non-empty texts within the length
limits, exactly :data:`PAIRS` pairs, no instruction used twice, and a trait instruction that differs from its
opposite.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend.catalogue import CATALOGUE_DIR, _fields, _read, _text
from backend.errors import CatalogueError

TRAITS_FILE = "traits.json"
NAMES_FILE = "trait_names.txt"
PAIRS = 5
MAX_NAME = 60
MAX_DESCRIPTION = 240
MAX_INSTRUCTION = 600
NAME = re.compile(r"^[a-z][a-z0-9_]*$")
SHIPPED = "shipped"  # ``expected`` default: the names of the shipped trait_names.txt


@dataclass(frozen=True)
class Trait:
    name: str
    description: str
    opposite: str
    pairs: tuple[tuple[str, str], ...]  # (express the trait, express its opposite)

    def instruction(self, pair: int, positive: bool) -> str:
        return self.pairs[pair][0 if positive else 1]


def shipped_names() -> tuple[str, ...]:
    lines = (CATALOGUE_DIR / NAMES_FILE).read_text(encoding="utf-8").splitlines()
    return tuple(line.strip() for line in lines if line.strip() and not line.startswith("#"))


def _limited(path: Path, where: str, value: Any, limit: int) -> str:
    text = _text(path, where, value)
    if len(text) > limit:
        raise CatalogueError(f"{path.name} {where} is {len(text)} characters long; at most {limit} allowed")
    return text


def _pairs(path: Path, name: str, raw: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(raw, list) or len(raw) != PAIRS:
        got = f"{len(raw)} pairs" if isinstance(raw, list) else f"a {type(raw).__name__}"
        raise CatalogueError(f"{path.name} trait {name!r} field 'pairs' must be a list of exactly {PAIRS} pairs, got {got}")
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for j, pair in enumerate(raw):
        if not isinstance(pair, dict) or set(pair) != {"trait", "opposite"}:
            raise CatalogueError(
                f"{path.name} trait {name!r} pairs[{j}] must be an object with exactly the fields 'trait' and 'opposite', got {pair!r}"
            )
        texts = tuple(
            _limited(path, f"trait {name!r} pairs[{j}] field {side!r}", pair[side], MAX_INSTRUCTION)
            for side in ("trait", "opposite")
        )
        if texts[0].lower() == texts[1].lower():
            raise CatalogueError(f"{path.name} trait {name!r} pairs[{j}]: the 'trait' and 'opposite' instructions are the same")
        for side, text in zip(("trait", "opposite"), texts, strict=True):
            if text.lower() in seen:
                raise CatalogueError(
                    f"{path.name} trait {name!r} pairs[{j}] field {side!r} repeats an instruction of an earlier pair"
                )
            seen.add(text.lower())
        out.append((texts[0], texts[1]))
    return tuple(out)


def load_traits(path: str | Path | None = None, expected: Sequence[str] | str | None = SHIPPED) -> tuple[Trait, ...]:
    """Load and validate a trait catalogue (default: the shipped ``traits.json``).

    ``expected``: the exact set of names the file must hold (default: the shipped ``trait_names.txt``); ``None``
    accepts any set (a custom catalogue, e.g. a handful of traits for a quick build)."""
    file = Path(path) if path is not None else CATALOGUE_DIR / TRAITS_FILE
    if file.is_dir():
        file = file / TRAITS_FILE
    data = _read(file)
    if not isinstance(data, list) or not data:
        raise CatalogueError(f"{file.name} must be a non-empty JSON list")
    out: list[Trait] = []
    seen: set[str] = set()
    for i, raw in enumerate(data):
        item = _fields(file, i, raw, {"name", "description", "opposite", "pairs"})
        name = _text(file, f"entry {i} name", item["name"])
        if not NAME.match(name) or len(name) > MAX_NAME:
            raise CatalogueError(
                f"{file.name} entry {i} name {name!r} must be snake_case (a-z, 0-9, _) and at most {MAX_NAME} characters"
            )
        if name in seen:
            raise CatalogueError(f"{file.name} lists trait {name!r} twice")
        seen.add(name)
        description = _limited(file, f"trait {name!r} field 'description'", item["description"], MAX_DESCRIPTION)
        opposite = _limited(file, f"trait {name!r} field 'opposite'", item["opposite"], MAX_DESCRIPTION)
        if description.lower() == opposite.lower():
            raise CatalogueError(f"{file.name} trait {name!r}: the fields 'description' and 'opposite' are the same")
        out.append(Trait(name, description, opposite, _pairs(file, name, item["pairs"])))
    names = shipped_names() if expected == SHIPPED else expected
    if names is not None:
        missing, extra = sorted(set(names) - seen), sorted(seen - set(names))
        if missing or extra:
            raise CatalogueError(
                f"{file.name} must hold exactly the {len(set(names))} expected traits; "
                + "; ".join(
                    p for p in (f"missing {missing[:10]}" if missing else "", f"unexpected {extra[:10]}" if extra else "") if p
                )
            )
    return tuple(out)


def trait_of(traits: Sequence[Trait], name: str) -> Trait:
    for t in traits:
        if t.name == name:
            return t
    raise CatalogueError(f"unknown trait {name!r}")
