"""The repository is an installable package: a wheel builds, holds the catalogue, and its `persona-space` command
is `python -m backend` (every subcommand listed) without this checkout on the path."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SUBCOMMANDS = (
    "model-info", "chat", "build", "rebuild", "import-paper-vectors", "serve", "project-transcript", "drift",
    "evaluate-cap", "info",
)  # fmt: skip


def test_the_wheel_builds_and_its_command_lists_every_subcommand(tmp_path: Path) -> None:
    source = tmp_path / "source"  # a copy: building in the checkout would leave build/ and *.egg-info in it
    for name in ("backend", "app"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("persona_space-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        scripts = configparser.ConfigParser()
        scripts.read_string(z.read(entry_points).decode())
        z.extractall(tmp_path / "site")
    assert scripts["console_scripts"]["persona-space"] == "backend.cli:main"
    assert {"backend/catalogue/archetypes.json", "backend/catalogue/questions.json", "app/client.py"} <= names
    assert not any(n.startswith(("tests/", "bench/")) for n in names)
    # the installed copy, not this checkout: run from elsewhere with only the unpacked wheel on the path
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(tmp_path / "site")}
    code = "import sys, backend.cli; print(backend.cli.__file__); sys.exit(backend.cli.main(['--help']))"
    shown = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert shown.stdout.startswith(str(tmp_path / "site"))
    for name in SUBCOMMANDS:
        assert name in shown.stdout


def test_the_checkout_is_installed_so_the_app_imports_without_a_path_patch() -> None:
    code = "import app.client, backend; print(app.client.__file__, backend.__file__)"
    done = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [str(ROOT / "app" / "client.py"), str(ROOT / "backend" / "__init__.py")]
    assert "sys.path" not in (ROOT / "app" / "main.py").read_text()
