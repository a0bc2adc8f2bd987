"""Red-team defects of issue #27 on a real build and worker: ``build``/``rebuild --out`` replace only a space or an
empty folder (and a resumed build into its own folder still works); ``serve`` refuses an edited space whose manifest
holds text UTF-8 cannot encode or whose tensors are not finite, instead of serving it 'ready' and answering 500; a
windowed transcript of short messages that also occur in the template ("a", "b") is read, each turn on its own
tokens."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from backend.cli import main
from backend.models.chat import encode_conversation, message_layout
from backend.store.space import MANIFEST, TENSOR_FILE, load_space, sha256_file
from tests.helpers.worker_harness import Worker


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --out of build and rebuild ----------------------------------------------------------------------------------------


@pytest.fixture
def places(tiny_world, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:  # type: ignore[no-untyped-def]
    """Copies of the tiny build's space and work folder, a folder with notes, a folder holding a space; cwd tmp/cwd."""
    _, space, root = tiny_world
    shutil.copytree(space, tmp_path / "space")
    shutil.copytree(root / "work", tmp_path / "work")
    shutil.copytree(space, tmp_path / "spaces" / "one")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "notes.txt").write_text("keep")
    (tmp_path / "cwd").mkdir()
    (tmp_path / "cwd" / "mine.txt").write_text("mine")
    monkeypatch.chdir(tmp_path / "cwd")
    return tmp_path


REFUSED = {
    "other files": ("../notes", "not a persona space"),
    "holds spaces": ("../spaces", "not a persona space"),
    "its own work folder": ("../work", "not a persona space"),
    "a file": ("../notes/notes.txt", "is a file"),
    "the current folder": (".", "current folder"),
    "empty": ("", "current folder"),
    "the parent folder": ("..", "holds the current folder"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_rebuild_out_refuses_what_is_not_a_space_before_any_work(places: Path, case: str, capsys) -> None:  # type: ignore[no-untyped-def]
    before = _tree(places)
    target, said = REFUSED[case]
    assert main(["rebuild", str(places / "work"), "--out", target]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and said in err, err
    assert _tree(places) == before


@pytest.mark.parametrize("case", [*REFUSED, "work inside out"])
def test_build_out_refuses_before_the_model_loads(places: Path, case: str, capsys) -> None:  # type: ignore[no-untyped-def]
    before = _tree(places)
    target, said = REFUSED.get(case, (str(places / "new"), "inside the space folder"))
    work = ["--work", str(places / "new" / "work")] if case == "work inside out" else []
    # a model that does not exist: had --out not been refused first, the error would be about the model
    assert main(["build", "--model", str(places / "no-such-model"), "--out", target, *work]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and said in err, err
    assert _tree(places) == before and not (places / "new").exists()


def test_a_resumed_build_and_a_rebuild_into_their_own_folder_replace_the_space(tiny_world, places: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from backend.build.pipeline import build
    from backend.build.settings import BuildSettings
    from backend.catalogue import load_catalogue
    from backend.models.loading import load_model
    from tests.conftest import WORLD_ROLES

    model, space, _ = tiny_world
    settings = BuildSettings(
        prompts_per_role=1, questions_per_role=2, default_questions=2, max_new_tokens=4, batch_size=16,
        judge="none", min_in_role=1, roles=WORLD_ROLES, umap_neighbors=3,
    )  # the tiny world's own settings: every chunk is done, so the build only computes the space  # fmt: skip
    chunks = _tree(places / "work" / "chunks")
    out = places / "space"
    assert build(load_model(model), load_catalogue(), settings, out, places / "work", log=lambda m: None) == out
    assert _tree(places / "work" / "chunks") == chunks  # nothing regenerated
    rebuilt = load_space(out)
    original = load_space(space)
    for name, tensor in original.tensors.items():
        torch.testing.assert_close(rebuilt.tensors[name], tensor, msg=name)
    assert main(["rebuild", str(places / "work"), "--out", str(out), "--recipe", "all"]) == 0
    assert load_space(out).manifest["recipe"] == "all"
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, TENSOR_FILE]
    assert sorted(p.name for p in places.iterdir()) == ["cwd", "notes", "space", "spaces", "work"]  # nothing left over
    capsys.readouterr()


# serving an edited space ------------------------------------------------------------------------------------------


def _edit_manifest(space: Path, edit: Any) -> None:
    manifest = json.loads((space / MANIFEST).read_text(encoding="utf-8"))
    edit(manifest)
    (space / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")  # "\ud800" written as an escape


def _surrogate_description(space: Path) -> None:
    _edit_manifest(space, lambda m: m["roles"][0].update(description="\ud800"))


def _nan_axis(space: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(space / TENSOR_FILE))
    tensors["axis"] = tensors["axis"] * float("nan")
    save_file(tensors, str(space / TENSOR_FILE))
    _edit_manifest(space, lambda m: m["files"].update({TENSOR_FILE: sha256_file(space / TENSOR_FILE)}))  # hash updated


EDITS = {"field roles.0.description": _surrogate_description, "tensor axis": _nan_axis}


def _serve_until_it_exits(model: str, space: Path, db: Path, timeout: float = 180) -> tuple[int, str]:
    """Start ``serve``; its exit code and output once it exits. Fails the test if it serves the space instead."""
    w = Worker(model, space, db)
    try:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if w.proc.poll() is not None:
                return int(w.proc.returncode), w.log.read_text()
            try:
                ready = bool(w.client.get("/health").json().get("ready"))
            except (httpx.TransportError, ValueError):
                ready = False
            if ready:
                status = w.client.get("/space").status_code
                pytest.fail(f"the worker serves the edited space as ready; GET /space answers {status}")
            time.sleep(0.3)
        pytest.fail(f"serve neither exited nor got ready in {timeout} s")
    finally:
        w.close()


@pytest.mark.parametrize("edit", list(EDITS))
def test_serve_refuses_an_edited_space_instead_of_serving_500s(tiny_world, tmp_path: Path, edit: str) -> None:  # type: ignore[no-untyped-def]
    model, space, _ = tiny_world
    edited = tmp_path / "edited"
    shutil.copytree(space, edited)
    EDITS[edit](edited)
    code, output = _serve_until_it_exits(model, edited, tmp_path / "s.db")
    last = output.strip().splitlines()[-1]
    assert code == 2 and "Traceback" not in output, output
    assert last.startswith("error: ") and edit in last and len(last) < 400, output


# a windowed transcript of "a" and "b" -------------------------------------------------------------------------------


def alternating(n: int) -> list[dict[str, str]]:
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": "a" if i % 2 == 0 else "b"} for i in range(n)]


def test_short_messages_that_occur_in_the_template_are_located_by_their_blocks(smol_tokenizer) -> None:  # type: ignore[no-untyped-def]
    messages = alternating(300)
    encoded = encode_conversation(smol_tokenizer, None, messages)
    text = encoded.text
    assert "a" in text[: text.index("<|im_start|>user")]  # the default system prompt holds both letters
    header = "<|im_start|>assistant\n"
    contents = [m.end() for m in re.finditer(re.escape(header), text)]  # where each assistant's "b" is
    assert len(contents) == len(encoded.assistant_spans) == 150
    for (start, end), at in zip(encoded.assistant_spans, contents, strict=True):
        assert [encoded.offsets[t] for t in range(start, end)] == [(at, at + 1)] and text[at] == "b"
    layout = message_layout(smol_tokenizer, encoded)
    first_user = encoded.offsets[layout.prefix][0]
    assert text[:first_user].startswith("<|im_start|>system\n") and text[:first_user].endswith("<|im_end|>\n")
    assert text[first_user:].startswith("<|im_start|>user\na<|im_end|>\n")
    blocks = [encoded.offsets[s][0] for s in layout.starts]
    assert blocks == [m.start() for m in re.finditer(re.escape("<|im_start|>"), text)][1:]  # one per message


@pytest.fixture(scope="module")
def world(tiny_world):  # type: ignore[no-untyped-def]
    from backend.models.loading import load_model

    model, space, _ = tiny_world
    loaded = load_model(model)
    return loaded, load_space(space, fingerprint=loaded.info.fingerprint)


def test_a_windowed_transcript_of_a_and_b_is_read_turn_by_turn(world) -> None:  # type: ignore[no-untyped-def]
    from backend.reading.transcripts import parse_transcript, project_transcript

    loaded, space = world
    messages = alternating(300)
    total = len(encode_conversation(loaded.tokenizer, None, messages).input_ids)
    window = 200
    assert total > 5 * window
    layer = 1
    result = project_transcript(loaded, space, parse_transcript(messages), layer=layer, window=window, tokens=True)
    assert result["windowed"] and result["passes"] >= 5 and len(result["turns"]) == 150
    unit = space.tensors["axis"][layer].double() / space.tensors["axis"][layer].double().norm()
    for turn in result["turns"]:
        assert turn["token_texts"] == ["b"] and turn["n_tokens"] == 1, turn
        first, k = turn["first_message"], turn["message_index"]
        assert messages[first]["role"] == "user" and turn["context_tokens"] <= window
        # oracle: a plain pass over exactly the stated context, the turn's "b" found by its header (no search for "b")
        context = encode_conversation(loaded.tokenizer, None, messages[first : k + 1])
        text = context.text
        at = text.rindex("<|im_start|>assistant\n") + len("<|im_start|>assistant\n")
        position = next(t for t, (a, b) in enumerate(context.offsets) if (a, b) == (at, at + 1))
        assert position == turn["context_tokens"]
        with torch.no_grad():
            hidden = loaded.model(torch.tensor([context.input_ids]), output_hidden_states=True).hidden_states[layer + 1][0]
        assert turn["projection"] == pytest.approx(float(hidden[position].double() @ unit), rel=1e-4, abs=1e-4)
