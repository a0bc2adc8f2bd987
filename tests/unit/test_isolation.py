"""The suite never touches the user's cache folder (``~/.cache/persona-space``): a fresh install must not show test
sessions under "Earlier sessions", and a test run must not rewrite the user's converted models."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from tests.helpers.scratch import changes, snapshot, user_cache


def test_the_worker_database_and_the_model_cache_default_to_a_scratch_folder() -> None:
    from backend.models.loading import cache_dir

    scratch = Path(os.environ["PERSONA_SPACE_CACHE"])
    assert cache_dir() == scratch  # where `serve` puts worker.sqlite3 without --db, and converted models
    assert scratch.resolve().is_relative_to(Path(tempfile.gettempdir()).resolve())
    assert not scratch.resolve().is_relative_to(user_cache().resolve()) and scratch.resolve() != user_cache().resolve()
    assert not (scratch / "worker.sqlite3").resolve().is_relative_to(user_cache().resolve())


def test_a_snapshot_sees_a_new_a_changed_and_a_removed_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "kept").write_text("a")
    (tmp_path / "gone").write_text("b")
    before = snapshot(tmp_path)
    (tmp_path / "gone").unlink()
    (tmp_path / "kept").write_text("longer")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "new.sqlite3").write_text("c")
    assert changes(before, snapshot(tmp_path)) == ["added sub/new.sqlite3", "removed gone", "changed kept"]
    assert changes(before, before) == []


@pytest.mark.last
def test_the_suite_left_the_users_cache_unchanged(user_cache_before) -> None:  # type: ignore[no-untyped-def]
    """Runs after every other test of the run (``last``): the user's folder is as it was when the suite started.
    (A `make run` of the user's own, running at the same time, would change it too.)"""
    folder, before = user_cache_before
    assert changes(before, snapshot(folder)) == [], f"the suite wrote into {folder}"
