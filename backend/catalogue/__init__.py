"""The archetype catalogue, the extraction questions and the default-Assistant prompts, validated on load.

Files (JSON, in ``backend/catalogue/`` unless a folder is given):

* ``archetypes.json`` — list of ``{name, category, description, prompts: [5 system prompts]}``;
* ``questions.json`` — list of ``{id, kind, text}``;
* ``default_prompts.json`` — list of ``{id, system}``; ``system`` may be ``null`` (no system prompt) and may contain
  ``{model_name}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend.errors import CatalogueError

CATALOGUE_DIR = Path(__file__).resolve().parent
CATEGORIES = (
    "profession", "creative", "social", "intellectual", "spiritual",
    "fantastical", "non-human", "antagonistic", "playful", "emotional",
)  # fmt: skip
QUESTION_KINDS = ("practical", "personal", "emotional", "philosophical", "self", "opinion", "creative", "social")
DEFAULT_ROLE = "default"


@dataclass(frozen=True)
class Archetype:
    name: str
    category: str
    description: str
    prompts: tuple[str, ...]


@dataclass(frozen=True)
class Question:
    id: str
    kind: str
    text: str


@dataclass(frozen=True)
class DefaultPrompt:
    id: str
    system: str | None

    def render(self, model_name: str) -> str | None:
        return None if self.system is None else self.system.replace("{model_name}", model_name)


@dataclass(frozen=True)
class Catalogue:
    archetypes: tuple[Archetype, ...]
    questions: tuple[Question, ...]
    defaults: tuple[DefaultPrompt, ...]

    def archetype(self, name: str) -> Archetype:
        for a in self.archetypes:
            if a.name == name:
                return a
        raise CatalogueError(f"unknown archetype {name!r}")


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise CatalogueError(f"{path} does not exist") from exc
    except json.JSONDecodeError as exc:
        raise CatalogueError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from exc


def _fields(path: Path, i: int, item: Any, required: set[str]) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise CatalogueError(f"{path.name} entry {i} is a {type(item).__name__}, expected an object")
    keys = set(item)
    if keys - required:
        raise CatalogueError(f"{path.name} entry {i} has unknown field(s) {sorted(keys - required)}; allowed: {sorted(required)}")
    if required - keys:
        raise CatalogueError(f"{path.name} entry {i} is missing field(s) {sorted(required - keys)}")
    return item


def _text(path: Path, where: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise CatalogueError(f"{path.name} {where} must be non-empty text, got {value!r}")
    return value.strip()


def load_archetypes(path: Path) -> tuple[Archetype, ...]:
    data = _read(path)
    if not isinstance(data, list) or not data:
        raise CatalogueError(f"{path.name} must be a non-empty JSON list")
    out: list[Archetype] = []
    seen: set[str] = set()
    for i, raw in enumerate(data):
        item = _fields(path, i, raw, {"name", "category", "description", "prompts"})
        name = _text(path, f"entry {i} name", item["name"])
        if name in seen:
            raise CatalogueError(f"{path.name} lists archetype {name!r} twice")
        if name == DEFAULT_ROLE:
            raise CatalogueError(f"{path.name}: {DEFAULT_ROLE!r} is reserved for the default Assistant")
        seen.add(name)
        if item["category"] not in CATEGORIES:
            raise CatalogueError(
                f"{path.name} archetype {name!r} has category {item['category']!r}; allowed: {', '.join(CATEGORIES)}"
            )
        prompts = item["prompts"]
        if not isinstance(prompts, list) or not prompts:
            raise CatalogueError(f"{path.name} archetype {name!r} needs a non-empty list of prompts")
        texts = tuple(_text(path, f"archetype {name!r} prompt {j}", p) for j, p in enumerate(prompts))
        if len(set(texts)) != len(texts):
            raise CatalogueError(f"{path.name} archetype {name!r} repeats a prompt")
        out.append(Archetype(name, item["category"], _text(path, f"archetype {name!r} description", item["description"]), texts))
    return tuple(out)


def load_questions(path: Path) -> tuple[Question, ...]:
    data = _read(path)
    if not isinstance(data, list) or not data:
        raise CatalogueError(f"{path.name} must be a non-empty JSON list")
    out: list[Question] = []
    ids: set[str] = set()
    texts: set[str] = set()
    for i, raw in enumerate(data):
        item = _fields(path, i, raw, {"id", "kind", "text"})
        qid = _text(path, f"entry {i} id", item["id"])
        text = _text(path, f"question {qid!r} text", item["text"])
        if qid in ids:
            raise CatalogueError(f"{path.name} uses question id {qid!r} twice")
        if text.lower() in texts:
            raise CatalogueError(f"{path.name} repeats the question {text!r}")
        if item["kind"] not in QUESTION_KINDS:
            raise CatalogueError(f"{path.name} question {qid!r} has kind {item['kind']!r}; allowed: {', '.join(QUESTION_KINDS)}")
        ids.add(qid)
        texts.add(text.lower())
        out.append(Question(qid, item["kind"], text))
    return tuple(out)


def load_defaults(path: Path) -> tuple[DefaultPrompt, ...]:
    data = _read(path)
    if not isinstance(data, list) or not data:
        raise CatalogueError(f"{path.name} must be a non-empty JSON list")
    out: list[DefaultPrompt] = []
    for i, raw in enumerate(data):
        item = _fields(path, i, raw, {"id", "system"})
        pid = _text(path, f"entry {i} id", item["id"])
        system = item["system"]
        if system is not None:
            system = _text(path, f"default prompt {pid!r}", system)
        if any(p.id == pid for p in out):
            raise CatalogueError(f"{path.name} uses default prompt id {pid!r} twice")
        out.append(DefaultPrompt(pid, system))
    return tuple(out)


def load_catalogue(folder: str | Path | None = None) -> Catalogue:
    """Load and validate the three catalogue files from ``folder`` (default: the shipped catalogue)."""
    root = Path(folder) if folder is not None else CATALOGUE_DIR
    return Catalogue(
        archetypes=load_archetypes(root / "archetypes.json"),
        questions=load_questions(root / "questions.json"),
        defaults=load_defaults(root / "default_prompts.json"),
    )
