"""Transcript projection (with an exact oracle), transcript parsing and bad input, and the drift report."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
import torch

from backend.evaluation.drift import load_scenario, load_scenarios, run_drift
from backend.models.loading import load_model
from backend.reading.transcripts import TranscriptError, parse_transcript, project_transcript, read_transcript
from backend.store.space import load_space
from tests.helpers.spans import independent_spans
from tests.helpers.worker_harness import ROOT

CONVERSATION = [
    {"role": "user", "content": "Hi, can you help me plan a garden?"},
    {"role": "assistant", "content": "Of course. Start with the sunniest corner and a few hardy herbs."},
    {"role": "user", "content": "What about tomatoes?"},
    {"role": "assistant", "content": "Tomatoes love sun and steady water; stake them early."},
]


@pytest.fixture(scope="module")
def world(tiny_world):  # type: ignore[no-untyped-def]
    model, space, root = tiny_world
    loaded = load_model(model)
    return loaded, load_space(space, fingerprint=loaded.info.fingerprint), root


def test_projection_equals_mean_of_token_activations(world) -> None:  # type: ignore[no-untyped-def]
    loaded, space, _ = world
    tokenizer = loaded.tokenizer
    transcript = parse_transcript(CONVERSATION)
    ids = tokenizer.apply_chat_template(CONVERSATION, tokenize=True, return_dict=False)
    spans = independent_spans(tokenizer, CONVERSATION)
    for (a, b), message in zip(spans, CONVERSATION[1::2], strict=True):
        assert tokenizer.decode(ids[a:b]) == message["content"]  # the spans hold exactly the answers
    assert [b - a for a, b in spans] == [16, 12]
    with torch.no_grad():
        states = loaded.model(torch.tensor([ids]), output_hidden_states=True).hidden_states
    for layer in (1, space.target_layer):
        result = project_transcript(loaded, space, transcript, layer=layer)
        assert result["tokens"] == len(ids) and result["layer"] == layer
        hidden = states[layer + 1][0]
        axis = space.tensors["axis"][layer].double()
        unit = axis / axis.norm()
        assert [t["index"] for t in result["turns"]] == [0, 1] and [t["message_index"] for t in result["turns"]] == [1, 3]
        for turn, (a, b) in zip(result["turns"], spans, strict=True):
            expected = float(hidden[a:b].double().mean(0) @ unit)
            assert turn["projection"] == pytest.approx(expected, rel=1e-5, abs=1e-6)
            assert turn["n_tokens"] == b - a and len(turn["nearest"]) == 5


def test_formats_parse_with_their_quirks() -> None:
    paper = {
        "model": "some-model", "turns": 7, "auditor_model": "x", "domain": "therapy", "persona": "p", "topic": "t",
        "steering_config": {"experiment_id": "layers_46:54-p0.25", "num_interventions": 8, "layers": [46, 53]},
        "conversation": CONVERSATION,
    }  # fmt: skip
    t = parse_transcript(paper)
    assert t.model == "some-model" and t.n_assistant == 2 and t.meta["turns_declared"] == 7 and t.meta["domain"] == "therapy"
    openai = [{"role": "system", "content": "Be kind."}, *CONVERSATION]
    t = parse_transcript(openai)
    assert t.system == "Be kind." and len(t.messages) == 4
    parts = [
        {"role": "user", "content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]},
        {"role": "assistant", "content": "Hi"},
    ]
    assert parse_transcript({"messages": parts}).messages[0]["content"] == "Hello"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "the conversation is empty"),
        ({"conversation": []}, "the conversation is empty"),
        ({"dialogue": []}, "expected a message list"),
        ("hello", "must be a list of messages"),
        ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "roles must alternate"),
        ([{"role": "assistant", "content": "a"}], "roles must alternate, user first"),
        ([{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}], "has role 'tool'"),
        ([{"role": "user", "content": "a"}], "no assistant turn"),
        ([{"role": "user", "content": 5}, {"role": "assistant", "content": "x"}], "content must be text"),
        ([{"role": "user"}], "must be an object with 'role' and 'content'"),
        ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], "only allowed first"),
    ],
)
def test_bad_transcripts_are_clear_errors(data, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TranscriptError, match=message):
        parse_transcript(data)


def test_bad_files(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(TranscriptError, match="not valid JSON"):
        read_transcript(tmp_path / "bad.json")
    huge = tmp_path / "huge.json"
    with open(huge, "wb") as handle:
        handle.truncate(300 * 2**20)  # sparse: 300 MiB on paper, nothing read
    with pytest.raises(TranscriptError, match="is 300 MiB; transcripts are limited to 20 MiB"):
        read_transcript(huge)
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(TranscriptError, match="not UTF-8"):
        read_transcript(tmp_path / "bin.json")
    with pytest.raises(TranscriptError, match="does not exist"):
        read_transcript(tmp_path / "none.json")


def test_too_long_for_the_context_is_refused_not_truncated(world) -> None:  # type: ignore[no-untyped-def]
    loaded, space, _ = world
    long = [{"role": "user", "content": "word " * 1500}, {"role": "assistant", "content": "ok " * 1500}]
    with pytest.raises(TranscriptError, match="the model's context is 2048.*nothing was truncated"):
        project_transcript(loaded, space, parse_transcript(long), allow_window=False)


def test_shipped_scenarios_are_valid() -> None:
    scenarios = load_scenarios()
    assert {s.domain for s in scenarios} >= {"coding", "writing", "vulnerable", "self_nature"}
    assert all(len(s.turns) >= 8 and s.presenter_note for s in scenarios)


def test_drift_report_on_a_tiny_model(world, tmp_path) -> None:  # type: ignore[no-untyped-def]
    loaded, space, _ = world
    scenario = load_scenario(ROOT / "assets" / "scenarios" / "coding.json")
    short = type(scenario)(**{**scenario.__dict__, "turns": scenario.turns[:3]})
    report = run_drift(loaded, space, [short], tmp_path / "out", seeds=(0, 1), max_new_tokens=4)
    rows = list(csv.DictReader(open(tmp_path / "out" / "projections.csv")))
    assert [(r["variant"], r["seed"], r["turn"]) for r in rows] == [
        (v, str(seed), str(turn)) for v in ("uncapped", "capped") for seed in (0, 1) for turn in (1, 2, 3)
    ]  # turns are numbered from 1, in order
    assert all(r["status"] == "done" and r["scenario"] == "coding" for r in rows)
    for variant in ("uncapped", "capped"):
        for seed in (0, 1):
            transcript = json.loads((tmp_path / "out" / "transcripts" / f"coding-{variant}-seed{seed}.json").read_text())
            assert [m["content"] for m in transcript["conversation"][0::2]] == list(short.turns)
            assert parse_transcript(transcript).n_assistant == 3
            ours = [float(r["projection"]) for r in rows if (r["variant"], r["seed"]) == (variant, str(seed))]
            assert transcript["projections"] == pytest.approx(ours, abs=1e-9)
            assert transcript["steering_config"] == ({"cap_percentile": 75.0, "layers": [2, 3]} if variant == "capped" else None)
    assert json.loads((tmp_path / "out" / "report.json").read_text()) == report
    html = (tmp_path / "out" / "report.html").read_text()
    for variant in ("capped", "uncapped"):  # the summary, recomputed from the CSV: mean over seeds per turn
        curve = [
            sum(float(r["projection"]) for r in rows if (r["variant"], r["turn"]) == (variant, str(t))) / 2 for t in (1, 2, 3)
        ]
        (entry,) = [s for s in report["summary"] if s["variant"] == variant]
        assert entry["domain"] == "coding" and entry["turns"] == 3
        assert entry["curve"] == [round(v, 3) for v in curve]
        assert (entry["first"], entry["last"], entry["drift"]) == (
            round(curve[0], 3),
            round(curve[2], 3),
            round(curve[2] - curve[0], 3),
        )
        assert entry["slope_per_turn"] == round((curve[2] - curve[0]) / 2, 4)  # least squares over 3 equally spaced points
        assert entry["mean"] == round(sum(curve) / 3, 3) and entry["min"] == round(min(curve), 3)
        cells = [entry["first"], entry["last"], entry["drift"], entry["slope_per_turn"], entry["mean"], entry["min"]]
        assert f"<td>coding</td><td>{variant}</td>" + "".join(f"<td>{c}</td>" for c in cells) in html
    assert report["default_projection"] == round(float(space.tensors["default_projection"][space.target_layer]), 3)


def test_n_assistant_counts_assistant_messages_only() -> None:
    three_users = [*CONVERSATION, {"role": "user", "content": "And peppers?"}]
    assert parse_transcript(three_users).n_assistant == 2
    assert parse_transcript(CONVERSATION[:2]).n_assistant == 1
    assert parse_transcript([{"role": "system", "content": "s"}, *CONVERSATION[:3]]).n_assistant == 1


def test_cli_project_transcript_json(tiny_world, world, tmp_path) -> None:  # type: ignore[no-untyped-def]
    model, space, _ = tiny_world
    (tmp_path / "t.json").write_text(json.dumps({"model": "m", "turns": 1, "conversation": CONVERSATION}))
    done = subprocess.run(
        [sys.executable, "-m", "backend", "project-transcript", str(tmp_path / "t.json"), "--model", model, "--space", str(space), "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    expected = project_transcript(world[0], world[1], parse_transcript(CONVERSATION))
    assert result["transcript_model"] == "m" and result["layer"] == expected["layer"] == 2
    assert [t["message_index"] for t in result["turns"]] == [1, 3]
    for got, want in zip(result["turns"], expected["turns"], strict=True):
        assert got["n_tokens"] == want["n_tokens"] and got["projection"] == pytest.approx(want["projection"], rel=1e-5, abs=1e-6)
        assert [n["name"] for n in got["nearest"]] == [n["name"] for n in want["nearest"]]
    bad = subprocess.run(
        [sys.executable, "-m", "backend", "project-transcript", str(tmp_path / "missing.json"), "--model", model, "--space", str(space)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert bad.returncode == 2 and "does not exist" in bad.stderr
