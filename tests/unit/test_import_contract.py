"""The import contract (`make lint` runs `lint-imports`): the layers hold on the tree, and an import that breaks one
is caught, naming the contract and the import."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).with_name("lint-imports")


def lint(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LINT), "--no-cache"], cwd=tree, capture_output=True, text=True, timeout=120)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for name in ("backend", "app"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "*.json"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_tree_keeps_every_contract(tree: Path) -> None:
    done = lint(tree)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "4 kept, 0 broken" in done.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract", "culprit"),
    [
        ("backend/maths/axis.py", "import backend.worker.db", "backend layers", "backend.maths.axis -> backend.worker.db"),
        (
            "backend/hooks/rows.py",
            "from backend.decode import engine",
            "backend layers",
            "backend.hooks.rows -> backend.decode.engine",
        ),
        ("backend/view/space.py", "import torch", "never import torch", "backend.view.space -> torch"),
        (
            "backend/worker/turn.py",
            "from backend.worker import engine",
            "never imports the engine",
            "backend.worker.turn -> backend.worker.engine",
        ),
        (
            "app/client.py",
            "from backend.store import space",
            "only through its torch-free view",
            "app.client -> backend.store.space",
        ),
    ],
)
def test_an_import_against_the_layers_is_caught(tree: Path, module: str, line: str, contract: str, culprit: str) -> None:
    path = tree / module
    path.write_text(path.read_text() + f"\n{line}  # noqa\n")
    done = lint(tree)
    assert done.returncode != 0
    broken = done.stdout[done.stdout.index("Broken contracts") :]
    assert contract in broken and culprit in broken, broken
