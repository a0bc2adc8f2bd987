"""The trait catalogue: the shipped file holds the paper's 240 trait names, in our own words, and a hand-edited
broken copy is refused with one line naming the trait and the field."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from backend.catalogue.traits import MAX_DESCRIPTION, MAX_INSTRUCTION, PAIRS, TRAITS_FILE, load_traits, shipped_names
from backend.errors import CatalogueError

SHIPPED = Path(__file__).resolve().parents[2] / "backend" / "catalogue" / TRAITS_FILE
REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "reference" / "traits.txt"


def test_the_shipped_catalogue_holds_every_trait_with_five_distinct_pairs() -> None:
    traits = load_traits()
    assert len(traits) == 240 and len({t.name for t in traits}) == 240
    assert [t.name for t in traits] == list(shipped_names())
    if REFERENCE.exists():  # the paper's list of names, beside the repository
        names = [line.strip() for line in REFERENCE.read_text().splitlines() if line.strip() and not line.startswith("#")]
        assert sorted(names) == sorted(t.name for t in traits)
    instructions = [text for t in traits for pair in t.pairs for text in pair]
    for t in traits:
        assert len(t.pairs) == PAIRS
        assert len({text for pair in t.pairs for text in pair}) == 2 * PAIRS
        assert all(a != b for a, b in t.pairs)
        assert t.description != t.opposite and len(t.description) <= MAX_DESCRIPTION
        assert all(len(text) <= MAX_INSTRUCTION for pair in t.pairs for text in pair)
    # each trait's instructions are its own: no instruction is shared between two traits' trait sides
    trait_sides = [pair[0] for t in traits for pair in t.pairs]
    assert len(set(trait_sides)) == len(trait_sides) and len(instructions) == 240 * 10


def broken(tmp_path: Path, edit: Callable[[list[dict[str, Any]]], None]) -> Path:
    data = json.loads(SHIPPED.read_text(encoding="utf-8"))
    edit(data)
    path = tmp_path / f"traits{len(list(tmp_path.iterdir()))}.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def set_pair(i: int, j: int, side: str, value: Any) -> Callable[[list[dict[str, Any]]], None]:
    return lambda data: data[i]["pairs"][j].__setitem__(side, value)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (set_pair(1, 2, "opposite", "  "), r"trait 'blunt' pairs\[2\] field 'opposite' must be non-empty text"),
        (set_pair(0, 3, "trait", "x" * (MAX_INSTRUCTION + 1)), r"trait 'pessimistic' pairs\[3\] field 'trait' is 601 characters"),
        (
            lambda d: d[2]["pairs"][1].update(opposite=d[2]["pairs"][1]["trait"]),
            r"trait 'rebellious' pairs\[1\]: the 'trait' and 'opposite'",
        ),
        (lambda d: d[3]["pairs"].pop(), r"trait 'meditative' field 'pairs' must be a list of exactly 5 pairs, got 4"),
        (lambda d: d[4]["pairs"].__setitem__(4, dict(d[4]["pairs"][0])), r"trait 'dramatic' pairs\[4\] field 'trait' repeats"),
        (lambda d: d[5].update(description=""), r"trait 'innovative' field 'description' must be non-empty"),
        (lambda d: d[6].update(opposite=d[6]["description"]), r"trait 'arrogant': the fields 'description' and 'opposite'"),
        (lambda d: d[7].update(colour="red"), r"entry 7 has unknown field\(s\) \['colour'\]"),
        (lambda d: d[8].pop("opposite"), r"entry 8 is missing field\(s\) \['opposite'\]"),
        (lambda d: d.append(dict(d[9])), r"lists trait 'adventurous' twice"),
        (lambda d: d[10].update(name="Very Serious"), r"entry 10 name 'Very Serious' must be snake_case"),
        (lambda d: d.pop(11), r"must hold exactly the 240 expected traits; missing \['generous'\]"),
        (lambda d: d[12]["pairs"].__setitem__(0, ["a", "b"]), r"trait 'sycophantic' pairs\[0\] must be an object"),
    ],
)
def test_a_broken_copy_names_the_trait_and_the_field(tmp_path: Path, edit: Any, message: str) -> None:
    with pytest.raises(CatalogueError, match=message):
        load_traits(broken(tmp_path, edit))


def test_bad_json_and_custom_sets(tmp_path: Path) -> None:
    bad = tmp_path / TRAITS_FILE
    bad.write_text('[{"name": "calm"', encoding="utf-8")
    with pytest.raises(CatalogueError, match="traits.json is not valid JSON"):
        load_traits(tmp_path)
    subset = broken(tmp_path, lambda d: d.__delitem__(slice(3, None)))
    assert [t.name for t in load_traits(subset, expected=None)] == ["pessimistic", "blunt", "rebellious"]
    with pytest.raises(CatalogueError, match=r"unexpected \['blunt', 'rebellious'\]"):
        load_traits(subset, expected=["pessimistic", "calm"])
