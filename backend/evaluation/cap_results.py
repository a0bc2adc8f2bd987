"""The cap evaluation's resumable store, ``results.jsonl``: batches are appended whole in a fixed plan order, so a
killed run continues where it stopped and gives the same numbers."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS = "results.jsonl"


class Results:
    """``results.jsonl``: one JSON line per (part, setting, item, seed); batches are appended whole and fsynced."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / RESULTS
        self.records: dict[tuple[str, str, str, int], dict[str, Any]] = {}
        if self.path.exists():
            with open(self.path, encoding="utf-8") as handle:
                for line in handle:
                    try:
                        r = json.loads(line)
                    except json.JSONDecodeError:  # a line cut by a kill: that batch runs again
                        continue
                    if isinstance(r, dict) and {"part", "setting", "item"} <= r.keys():
                        self.records[_key(r)] = r

    def has(self, part: str, setting: str, item: str, seed: int = 0) -> bool:
        return (part, setting, item, seed) in self.records

    def get(self, part: str, setting: str, item: str, seed: int = 0) -> dict[str, Any]:
        return self.records[(part, setting, item, seed)]

    def add(self, records: Sequence[dict[str, Any]]) -> None:
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        for r in records:
            self.records[_key(r)] = r


def _key(record: dict[str, Any]) -> tuple[str, str, str, int]:
    return (record["part"], record["setting"], record["item"], int(record.get("seed", 0)))


def batches(tasks: Sequence[Any], size: int) -> list[list[Any]]:
    return [list(tasks[i : i + size]) for i in range(0, len(tasks), size)]
