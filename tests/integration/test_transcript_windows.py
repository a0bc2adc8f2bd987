"""Transcripts of any length: window plans (pure arithmetic), windowed projection against a direct teacher-forced
pass over exactly the stated context, per-token readings, sets of transcripts and their formats."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest
import torch

from backend.models.chat import encode_conversation
from backend.models.loading import load_model
from backend.reading.transcripts import TranscriptError, parse_transcript, project_transcript, read_transcripts
from backend.reading.windows import Layout, WindowError, plan_windows
from backend.store.space import load_space
from tests.helpers.worker_harness import ROOT


def conversation(exchanges: int, seed: int = 0, words: tuple[int, int] = (4, 30)) -> list[dict[str, str]]:
    rng = random.Random(seed)
    vocab = "river map garden tomato lantern harbour violin orbit meadow copper thunder whisper".split()
    out = []
    for i in range(exchanges):
        out.append({"role": "user", "content": f"Question {i}: " + " ".join(rng.choices(vocab, k=rng.randint(*words)))})
        out.append({"role": "assistant", "content": f"Answer {i}. " + " ".join(rng.choices(vocab, k=rng.randint(*words)))})
    return out


# window plans --------------------------------------------------------------------------------------------------


def synthetic_layout(sizes: list[int], prefix: int = 10) -> Layout:
    starts, position = [], prefix
    for size in sizes:
        starts.append(position)
        position += size
    roles = tuple("user" if i % 2 == 0 else "assistant" for i in range(len(sizes)))
    return Layout(prefix=prefix, starts=tuple(starts), roles=roles, total=position)


@pytest.mark.parametrize("history", [0.0, 0.25, 0.5, 1.0])
def test_every_window_holds_its_turn_and_fits(history: float) -> None:
    rng = random.Random(1)
    sizes = [rng.randint(5, 60) for _ in range(80)]
    layout = synthetic_layout(sizes)
    window = 200
    plan = plan_windows(layout, window, history)
    assert not plan.unreadable and len(plan.windows) == 40
    for w in plan.windows:
        assert layout.roles[w.message] == "assistant" and layout.roles[w.first_message] == "user"
        assert w.start_token == layout.starts[w.first_message] and w.end == layout.end(w.message)
        assert layout.prefix + w.end - w.start_token <= window  # prefix + messages fit
        assert w.context == layout.prefix + layout.starts[w.message] - w.start_token
    # groups are one pass each, in order, and every turn is read exactly once
    assert [m for g in plan.groups for m in g.messages] == [w.message for w in plan.windows]
    for g in plan.groups:
        assert g.length(layout.prefix) <= window
    starts = [w.first_message for w in plan.windows]
    assert starts == sorted(starts)  # the window only moves forward


def test_history_one_gives_every_turn_the_most_context_that_fits() -> None:
    rng = random.Random(2)
    sizes = [rng.randint(5, 60) for _ in range(60)]
    layout = synthetic_layout(sizes)
    window = 180
    plan = plan_windows(layout, window, 1.0)
    for w in plan.windows:  # brute force: the earliest user message from which the turn still fits
        fitting = [
            i
            for i in range(w.message)
            if layout.roles[i] == "user" and layout.prefix + layout.end(w.message) - layout.starts[i] <= window
        ]
        assert w.first_message == fitting[0]


def test_history_bounds_the_tokens_read() -> None:
    rng = random.Random(3)
    layout = synthetic_layout([rng.randint(5, 40) for _ in range(400)])
    window = 500
    read = {h: plan_windows(layout, window, h).tokens_read(layout.prefix) for h in (0.0, 0.25, 0.5, 1.0)}
    body = layout.total - layout.prefix
    assert read[0.0] < read[0.25] < read[0.5] < read[1.0]
    assert read[0.5] <= 2.2 * body and read[0.25] <= 1.5 * body  # about 1 / (1 - history)
    assert read[1.0] > 5 * body  # the most context per turn re-reads about a window per turn


def test_a_turn_longer_than_the_window_is_reported_not_cut() -> None:
    layout = synthetic_layout([10, 20, 10, 500, 10, 20])
    plan = plan_windows(layout, 300, 0.5)
    assert set(plan.unreadable) == {3} and "500 tokens" in plan.unreadable[3]
    assert [w.message for w in plan.windows] == [1, 5]
    with pytest.raises(WindowError, match="opening"):
        plan_windows(layout, 10, 0.5)
    with pytest.raises(WindowError, match="history"):
        plan_windows(layout, 300, 1.5)


# windowed projection on a tiny model ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tiny_world):  # type: ignore[no-untyped-def]
    model, space, root = tiny_world
    loaded = load_model(model)
    return loaded, load_space(space, fingerprint=loaded.info.fingerprint), root


def direct_reading(loaded, space, system, messages, layer):  # type: ignore[no-untyped-def]
    """The last assistant turn's projection and per-token readings from a plain teacher-forced pass over exactly
    ``messages``, rendered by the chat template on their own (not sliced from a longer conversation)."""
    encoded = encode_conversation(loaded.tokenizer, system, messages)
    with torch.no_grad():
        hidden = loaded.model(torch.tensor([encoded.input_ids]), output_hidden_states=True).hidden_states[layer + 1][0]
    a, b = encoded.assistant_spans[-1]
    unit = space.tensors["axis"][layer].double()
    unit = unit / unit.norm()
    tokens = hidden[a:b].double() @ unit
    return float(hidden[a:b].double().mean(0) @ unit), tokens.tolist(), a


@pytest.mark.parametrize("system", [None, "You are a careful librarian."])
def test_windowed_turns_equal_a_direct_pass_over_their_stated_context(world, system) -> None:  # type: ignore[no-untyped-def]
    loaded, space, _ = world
    messages = conversation(14, seed=4)
    transcript = parse_transcript(([{"role": "system", "content": system}] if system else []) + messages)
    total = len(encode_conversation(loaded.tokenizer, system, messages).input_ids)
    window = total // 3
    layer = 1
    result = project_transcript(loaded, space, transcript, layer=layer, window=window, tokens=True)
    assert result["windowed"] and result["passes"] >= 3 and result["window"] == window
    moved = 0
    for turn in result["turns"]:
        k = turn["message_index"]
        first = turn["first_message"]
        moved += first > 0
        assert turn["left_out_messages"] == first and messages[first]["role"] == "user"
        projection, tokens, context = direct_reading(loaded, space, system, messages[first : k + 1], layer)
        assert turn["projection"] == pytest.approx(projection, rel=1e-4, abs=1e-4)
        assert turn["token_projections"] == pytest.approx(tokens, rel=1e-4, abs=1e-4)
        assert turn["context_tokens"] == context <= window
    assert moved >= 5  # the window really slid


def test_a_conversation_that_fits_is_read_in_one_pass_as_before(world) -> None:  # type: ignore[no-untyped-def]
    loaded, space, _ = world
    messages = conversation(5, seed=5)
    transcript = parse_transcript(messages)
    encoded = encode_conversation(loaded.tokenizer, None, messages)
    plain = project_transcript(loaded, space, transcript, layer=2)
    roomy = project_transcript(loaded, space, transcript, layer=2, window=len(encoded.input_ids))
    assert plain["windowed"] is False and roomy["windowed"] is False and plain["tokens_read"] == len(encoded.input_ids)
    with torch.no_grad():
        hidden = loaded.model(torch.tensor([encoded.input_ids]), output_hidden_states=True).hidden_states[3][0]
    unit = space.tensors["axis"][2].double() / space.tensors["axis"][2].double().norm()
    for a, b, (start, end) in zip(plain["turns"], roomy["turns"], encoded.assistant_spans, strict=True):
        assert a["projection"] == b["projection"] == pytest.approx(float(hidden[start:end].double().mean(0) @ unit), rel=1e-5)
        assert a["context_tokens"] == start and a["left_out_messages"] == 0


def test_per_token_readings_and_their_text(world) -> None:  # type: ignore[no-untyped-def]
    loaded, space, _ = world
    messages = conversation(3, seed=6)
    result = project_transcript(loaded, space, parse_transcript(messages), tokens=True)
    for turn in result["turns"]:
        content = messages[turn["message_index"]]["content"]
        assert "".join(turn["token_texts"]) == content
        assert len(turn["token_projections"]) == turn["n_tokens"] == len(turn["token_texts"])
        mean = sum(turn["token_projections"]) / turn["n_tokens"]
        assert mean == pytest.approx(turn["projection"], rel=1e-4, abs=1e-4)


def test_no_window_keeps_the_old_refusal(world) -> None:  # type: ignore[no-untyped-def]
    loaded, space, _ = world
    transcript = parse_transcript(conversation(6, seed=7))
    with pytest.raises(TranscriptError, match=r"the window is 40\..*nothing was truncated"):
        project_transcript(loaded, space, transcript, window=40, allow_window=False)
    result = project_transcript(loaded, space, transcript, window=40)  # each turn alone is longer than 40 - 21
    assert all(t["projection"] is None and "needs" in t["error"] for t in result["turns"])


# formats and sets ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([{"role": "user", "content": "hi"}, {"role": "tool", "content": "x"}], r"message 1 has role 'tool'"),
        ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}], r"message 1 \(assistant\) is empty"),
        ([{"role": "user", "content": ""}, {"role": "assistant", "content": "ok"}], r"message 0 \(user\) is empty"),
        ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": {"x": 1}}], r"message 1: content must be text"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": "a"}]}], r"message 0: content parts must be text"),
    ],
)
def test_bad_messages_are_named(data, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TranscriptError, match=message):
        parse_transcript(data)


def test_sets_of_files_folders_and_jsonl(tmp_path) -> None:  # type: ignore[no-untyped-def]
    a, b = conversation(2, seed=8), conversation(3, seed=9)
    (tmp_path / "a.json").write_text(json.dumps({"model": "m", "turns": 99, "conversation": a, "domain": "x"}))
    (tmp_path / "b.json").write_text(json.dumps([{"role": "system", "content": "Be brief."}, *b]))
    (tmp_path / "c.jsonl").write_text(json.dumps({"messages": a}) + "\n\n" + json.dumps(b) + "\n")
    (tmp_path / "notes.txt").write_text("not a transcript")
    named = read_transcripts([tmp_path])
    assert [n.rsplit("/", 1)[-1] for n, _ in named] == ["a.json", "b.json", "c.jsonl:1", "c.jsonl:3"]
    assert [t.n_assistant for _, t in named] == [2, 3, 2, 3] and named[1][1].system == "Be brief."
    (tmp_path / "d.jsonl").write_text(
        json.dumps(a) + "\n" + json.dumps([{"role": "user", "content": "x"}, {"role": "bot", "content": "y"}])
    )
    with pytest.raises(TranscriptError, match=r"d\.jsonl:2: message 1 has role 'bot'"):
        read_transcripts([tmp_path / "d.jsonl"])
    (tmp_path / "e.jsonl").write_text("\n \n")
    with pytest.raises(TranscriptError, match="no conversation"):
        read_transcripts([tmp_path / "e.jsonl"])


def test_cli_projects_a_set_with_windows(tiny_world, tmp_path) -> None:  # type: ignore[no-untyped-def]
    model, space, _ = tiny_world
    for i in range(3):
        (tmp_path / f"t{i}.json").write_text(json.dumps(conversation(4 + i, seed=10 + i)))
    files = [str(tmp_path / f"t{i}.json") for i in range(3)]
    done = subprocess.run(
        [sys.executable, "-m", "backend", "project-transcript", *files, "--model", model, "--space", str(space),
         "--window", "150", "--tokens", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    entries = result["transcripts"]
    assert [e["file"] for e in entries] == files
    assert [len(e["turns"]) for e in entries] == [4, 5, 6]
    assert all(e["windowed"] and e["window"] == 150 for e in entries)
    assert all(len(t["token_projections"]) == t["n_tokens"] for e in entries for t in e["turns"])
    refused = subprocess.run(
        [sys.executable, "-m", "backend", "project-transcript", files[2], "--model", model, "--space", str(space),
         "--window", "150", "--no-window"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )  # fmt: skip
    assert refused.returncode == 2 and "nothing was truncated" in refused.stderr and "Traceback" not in refused.stderr


# the embedded model ------------------------------------------------------------------------------------------------


@pytest.mark.timeout(1500)  # about 2 minutes on 2 idle cores; much more when the machine is shared
def test_a_30k_token_conversation_projects_with_the_embedded_model(smollm) -> None:  # type: ignore[no-untyped-def]
    space = load_space(ROOT / "cached_activations" / "smollm2-135m", fingerprint=smollm.info.fingerprint)
    messages = conversation(275, seed=11, words=(30, 60))
    transcript = parse_transcript(messages)
    result = project_transcript(smollm, space, transcript)
    assert result["tokens"] > 30_000 and result["window"] == 8192 and result["windowed"]
    turns = result["turns"]
    assert len(turns) == 275 and all(t["projection"] is not None for t in turns)
    assert all(t["context_tokens"] <= 8192 for t in turns)
    assert turns[0]["left_out_messages"] == 0 and turns[-1]["left_out_messages"] > 300
    # with history 0.5 every turn after the first window still sees at least about half a window of context
    assert min(t["context_tokens"] for t in turns if t["left_out_messages"]) >= 0.45 * 8192
    assert result["tokens_read"] <= 2.2 * result["tokens"]
