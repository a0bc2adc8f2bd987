"""Tests and benchmarks never touch the user's own cache folder (``~/.cache/persona-space``: the worker's sessions
database, converted models, inductor's compiled steps). :func:`use_scratch_cache` points ``PERSONA_SPACE_CACHE``,
which :func:`backend.models.loading.cache_dir` reads for all three, at a new temporary folder, for this process and
every process it starts (the worker, ``make run``'s launcher).

Converted models and inductor's cache are keyed by content (a GGUF's hash, a graph's hash) and written atomically, so
the scratch folders of all runs share them through links into one store under the temporary directory: the embedded
model is converted once per machine, not once per run, and no run ever sees another's sessions.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

SHARED = ("models", "inductor")  # what the scratch folders share; everything else (the database) is per run


def user_cache() -> Path:
    """The folder a user's ``make run`` writes into (where ``cache_dir()`` points without ``PERSONA_SPACE_CACHE``)."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("persona-space"))


def store() -> Path:
    return Path(os.environ.get("PERSONA_SPACE_TEST_STORE") or Path(tempfile.gettempdir()) / "persona-space-test-store")


def use_scratch_cache() -> Path:
    """Make a new scratch cache folder, put it in ``PERSONA_SPACE_CACHE`` and return it; it is removed when the
    process exits (its links into the shared store are removed, not followed)."""
    scratch = Path(tempfile.mkdtemp(prefix="persona-space-cache-"))
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    for name in SHARED:
        shared = store() / name
        shared.mkdir(parents=True, exist_ok=True)
        (scratch / name).symlink_to(shared, target_is_directory=True)
    os.environ["PERSONA_SPACE_CACHE"] = str(scratch)
    return scratch


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` (links not followed): relative path -> (size, modification time in ns)."""
    out: dict[str, tuple[int, int]] = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = Path(root) / name
            try:
                st = path.lstat()
            except FileNotFoundError:  # removed while walking
                continue
            out[str(path.relative_to(folder))] = (st.st_size, st.st_mtime_ns)
    return out


def changes(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> list[str]:
    """What differs between two snapshots, one line per file (added, removed, changed)."""
    lines = [f"added {p}" for p in sorted(after.keys() - before.keys())]
    lines += [f"removed {p}" for p in sorted(before.keys() - after.keys())]
    lines += [f"changed {p}" for p in sorted(before.keys() & after.keys()) if before[p] != after[p]]
    return lines
