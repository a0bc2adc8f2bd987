"""The OpenAI API's pure request and response shaping, and its error shape on every /v1 answer (no model)."""

from __future__ import annotations

import argparse
import random
from typing import Any

import pytest

from backend.errors import PersonaSpaceError
from backend.worker import openai_shapes as shapes
from backend.worker.openai_errors import reshape
from backend.worker.openai_shapes import OpenAIError, StopScanner, cut_at_stop, parse_request, to_controls
from backend.worker.schemas import Controls

BASE = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
SERVER = Controls(cap_enabled=True, cap_percentile=60.0, cap_layers=(2, 3))


def refused(body: dict[str, Any]) -> OpenAIError:
    with pytest.raises(OpenAIError) as caught:
        parse_request(body)
    assert caught.value.status == 400
    return caught.value


@pytest.mark.parametrize(
    ("extra", "param", "code"),
    [
        ({"n": 3}, "n", "unsupported_parameter"),
        ({"tools": [{"type": "function"}]}, "tools", "unsupported_parameter"),
        ({"tool_choice": "auto"}, "tool_choice", "unsupported_parameter"),
        ({"functions": [{"name": "f"}]}, "functions", "unsupported_parameter"),
        ({"logprobs": True}, "logprobs", "unsupported_parameter"),
        ({"response_format": {"type": "json_schema"}}, "response_format", "unsupported_parameter"),
        ({"audio": {"voice": "x"}}, "audio", "unsupported_parameter"),
        ({"frequency_penalty": 0.5}, "frequency_penalty", "unsupported_parameter"),
        ({"best_of": 2}, "best_of", "unknown_parameter"),
        ({"temperature": 3}, "temperature", "invalid_value"),
        ({"max_tokens": 0}, "max_tokens", "invalid_value"),
        ({"max_tokens": 5000}, "max_tokens", "invalid_value"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "invalid_value"),
        ({"stop": ""}, "stop", "invalid_value"),
        ({"seed": -1}, "seed", "invalid_value"),
        ({"persona_space": {"cap": {"percentile": -1}}}, "persona_space.cap.percentile", "invalid_value"),
        ({"persona_space": {"cap": {"window": [3, 3]}}}, "persona_space.cap", "invalid_value"),
        ({"persona_space": {"cap": "sometimes"}}, "persona_space.cap", "invalid_value"),
        ({"persona_space": {"steer": {"window": [0, 1]}}}, "persona_space.steer.coefficient", "invalid_value"),
        ({"persona_space": {"cap": {"percentile": 10, "bogus": 1}}}, "persona_space.cap.bogus", "unknown_parameter"),
    ],
)
def test_refused_requests_name_the_field(extra: dict[str, Any], param: str, code: str) -> None:
    error = refused(BASE | extra)
    assert (error.param, error.code) == (param, code) and error.message


def test_messages_are_checked() -> None:
    assert refused({"model": "m", "messages": []}).param == "messages"
    assert refused({"model": "m", "messages": [{"role": "tool", "content": "x"}]}).param == "messages[0].role"
    bad = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "tool_calls": []}]
    assert refused({"model": "m", "messages": bad}).param == "messages[1].tool_calls"
    ends = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    assert "last message" in refused({"model": "m", "messages": ends}).message
    parts = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
    assert refused({"model": "m", "messages": parts}).param is not None
    assert refused({"model": "m", "messages": [{"role": "user", "content": "a"}], "max_tokens": 3,
                    "max_completion_tokens": 4}).code == "invalid_value"  # fmt: skip
    assert refused([]).code == "invalid_request"  # type: ignore[arg-type]


def test_neutral_values_of_unsupported_fields_pass() -> None:
    body = BASE | {"n": 1, "tools": [], "logprobs": False, "response_format": {"type": "text"}, "presence_penalty": 0,
                   "user": "u", "stream_options": {"include_usage": True}, "parallel_tool_calls": True}  # fmt: skip
    req = parse_request(body)
    assert req.stream_options is not None and req.stream_options.include_usage


def test_the_conversation_joins_system_messages_and_text_parts() -> None:
    req = parse_request({"model": "m", "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "developer", "content": "Be kind."},
        {"role": "user", "content": "one"}, {"role": "assistant", "content": "two"},
        {"role": "user", "content": [{"type": "text", "text": "thr"}, {"type": "text", "text": "ee"}]},
    ]})  # fmt: skip
    system, turns = req.conversation()
    assert system == "Be brief.\n\nBe kind."
    assert turns == [{"role": "user", "content": "one"}, {"role": "assistant", "content": "two"},
                     {"role": "user", "content": "three"}]  # fmt: skip


def test_controls_from_a_request() -> None:
    plain = to_controls(parse_request(BASE), SERVER)
    assert plain.cap_enabled and plain.cap_percentile == 60.0 and plain.cap_layers == (2, 3)  # the server's cap
    assert not plain.greedy and plain.temperature == 1.0 and plain.top_p == 1.0 and plain.repetition_penalty == 1.0
    assert plain.max_new_tokens == shapes.DEFAULT_MAX_TOKENS
    greedy = to_controls(parse_request(BASE | {"temperature": 0, "seed": 7, "max_tokens": 9, "top_p": 0.5}), SERVER)
    assert greedy.greedy and greedy.seed == 7 and greedy.max_new_tokens == 9 and greedy.top_p == 0.5
    for off in (None, "off"):
        assert not to_controls(parse_request(BASE | {"persona_space": {"cap": off}}), SERVER).cap_enabled
    capped = to_controls(parse_request(BASE | {"persona_space": {"cap": {"threshold": 2.5, "window": [1, 3]}}}),
                         SERVER.model_copy(update={"cap_enabled": False}))  # fmt: skip
    assert capped.cap_enabled and capped.cap_threshold == 2.5 and capped.cap_layers == (1, 3)
    pct = to_controls(parse_request(BASE | {"persona_space": {"cap": {"percentile": 25}}}), SERVER)
    assert pct.cap_percentile == 25 and pct.cap_threshold is None and pct.cap_layers == (2, 3)
    steer = to_controls(parse_request(BASE | {"persona_space": {"steer": {"coefficient": -1.5, "window": [0, 2]}}}), SERVER)
    assert steer.steer_coefficient == -1.5 and steer.steer_layers == (0, 2) and steer.cap_enabled
    assert to_controls(parse_request(BASE | {"temperature": 0.001}), SERVER).temperature == pytest.approx(0.01)


def test_the_cap_flag() -> None:
    from backend.cli.args import cap_setting

    for good in ("default", "off", "p75", "P0", "p100", "p12.5"):
        assert shapes.parse_cap_flag(good) == cap_setting(good) == good.lower()
    for bad in ("p101", "p-1", "75", "on", "p"):
        with pytest.raises(PersonaSpaceError):
            shapes.parse_cap_flag(bad)
        with pytest.raises(argparse.ArgumentTypeError):
            cap_setting(bad)


def test_responses() -> None:
    assert shapes.finish_reason({"reason": "max_new_tokens reached"}) == "length"
    assert shapes.finish_reason({"reason": "stop string"}) == shapes.finish_reason({"reason": "end of turn"}) == "stop"
    assert shapes.usage(5, 3) == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    events = [{"projection": 1.5, "cap_deltas": [0.0], "token_id": 4}, {"projection": -2.0, "token_id": 9}]
    assert shapes.telemetry(events) == {"projections": [1.5, -2.0], "cap_deltas": [[0.0], []], "token_ids": [4, 9]}
    summary = {"mean_projection": 1.0, "pca": [1, 2, 3], "nearest": [], "n_tokens": 3, "reason": "end of turn"}
    assert shapes.turn_summary(summary) == {"mean_projection": 1.0, "pca": [1, 2, 3], "nearest": []}
    chunk = shapes.chunk("c", 1, "m", {"content": "x"}, "stop", persona_space={"projections": []})
    assert chunk["object"] == "chat.completion.chunk" and chunk["choices"][0]["finish_reason"] == "stop"
    whole = shapes.completion("c", 1, "m", "hey", "length", shapes.usage(1, 1), {"turn": {}})
    assert whole["choices"][0]["message"] == {"role": "assistant", "content": "hey", "refusal": None}
    assert shapes.error_body(503, "down")["error"] == {
        "message": "down",
        "type": "service_unavailable",
        "param": None,
        "code": None,
    }


def test_the_official_client_reads_the_shapes() -> None:
    from openai.types.chat import ChatCompletion, ChatCompletionChunk

    chunk = ChatCompletionChunk.model_validate(shapes.chunk("c", 1, "m", {"role": "assistant", "content": ""},
                                                            persona_space={"session": "s"}))  # fmt: skip
    assert chunk.choices[0].delta.role == "assistant" and (chunk.model_extra or {})["persona_space"] == {"session": "s"}
    usage = ChatCompletionChunk.model_validate(shapes.usage_chunk("c", 1, "m", shapes.usage(2, 3)))
    assert usage.usage is not None and usage.usage.total_tokens == 5
    whole = ChatCompletion.model_validate(shapes.completion("c", 1, "m", "hey", "stop", shapes.usage(1, 1), {"turn": {}}))
    assert whole.choices[0].message.content == "hey" and whole.choices[0].finish_reason == "stop"


def test_cut_at_stop() -> None:
    assert cut_at_stop("hello world", ["wor", "lo"]) == ("hel", True)
    assert cut_at_stop("hello", ["xyz"]) == ("hello", False)
    assert cut_at_stop("hello", []) == ("hello", False)


def test_the_scanner_releases_a_prefix_of_the_cut_text_whatever_the_pieces() -> None:
    rng = random.Random(0)
    for _ in range(500):
        text = "".join(rng.choice("ab c\n") for _ in range(rng.randint(0, 30)))
        stops = ["".join(rng.choice("ab c\n") for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(0, 3))]
        scanner = StopScanner(stops)
        out, at = "", 0
        cut, _ = cut_at_stop(text, stops)
        while at < len(text):
            step = rng.randint(1, 4)
            out += scanner.feed(text[at : at + step])
            at += step
            assert cut.startswith(out), (text, stops, out)
        assert out + scanner.rest(cut) == cut


def test_the_scanner_holds_back_what_may_begin_a_stop_string() -> None:
    scanner = StopScanner(["END"])
    assert scanner.feed("one E") == "one "
    assert scanner.feed("N") == ""
    assert scanner.feed("X two") == "ENX two"
    assert scanner.feed(" EN") == " "
    assert scanner.feed("D and more") == "" and scanner.stopped
    assert scanner.rest("one ENX two ") == ""


def test_worker_errors_are_reshaped() -> None:
    body = reshape(401, b'{"error": "missing or wrong bearer token", "detail": null}')
    assert body is not None and b'"type": "authentication_error"' in body and b'"code": "invalid_api_key"' in body
    assert reshape(400, b'{"error": {"message": "m"}}') is None  # already OpenAI's
    assert reshape(400, b"not json") is None


def test_every_v1_error_is_in_openais_shape_and_the_rest_keep_the_workers() -> None:
    from fastapi.testclient import TestClient

    from backend.worker.db import Database
    from backend.worker.server import MAX_BODY, create_app
    from backend.worker.state import WorkerState

    state = WorkerState(model_spec="m", space_path="s", db=Database(":memory:"))
    app = create_app(state, token="secret")
    client = TestClient(app, raise_server_exceptions=False)

    def shape(r: Any) -> set[str]:
        return set(r.json()["error"])

    r = client.get("/v1/models")
    assert r.status_code == 401 and shape(r) == {"message", "type", "param", "code"}
    assert r.json()["error"]["type"] == "authentication_error"
    assert isinstance(client.get("/health").json()["error"], str)  # the worker's shape elsewhere
    auth = {"Authorization": "Bearer secret"}
    r = client.get("/v1/models", headers=auth)  # the model is not loaded
    assert r.status_code == 503 and r.json()["error"]["type"] == "service_unavailable"
    r = client.post("/v1/chat/completions", headers=auth, json=BASE)
    assert r.status_code == 503 and shape(r) == {"message", "type", "param", "code"}
    r = client.post("/v1/chat/completions", headers=auth, json=BASE | {"n": 2})  # refused before the model is needed
    assert r.status_code == 400 and r.json()["error"]["param"] == "n"
    big = b'{"model": "' + b"x" * (MAX_BODY + 10) + b'"}'
    r = client.post("/v1/chat/completions", headers=auth | {"content-type": "application/json"}, content=big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    wide = {f"k{i}": i for i in range(1001)}
    r = client.post("/v1/chat/completions", headers=auth, json=wide)
    assert r.status_code == 422 and shape(r) == {"message", "type", "param", "code"}
    r = client.delete("/v1/models", headers=auth)
    assert r.status_code == 405 and shape(r) == {"message", "type", "param", "code"}
    r = client.get("/sessions/0123456789abcdef", headers=auth)
    assert r.status_code == 404 and isinstance(r.json()["error"], str)


def test_the_servers_default_cap() -> None:
    from types import SimpleNamespace

    from backend.worker.openai_turns import default_controls

    chat = Controls(cap_percentile=40.0, cap_layers=(2, 3))  # the chat's default: the preset's setting, cap off

    def engine(flag: str) -> Any:
        return SimpleNamespace(api_cap=flag, default_controls=lambda: chat)

    on = default_controls(engine("default"))
    assert on.cap_enabled and on.cap_percentile == 40.0 and on.cap_layers == (2, 3)
    assert not default_controls(engine("off")).cap_enabled
    p20 = default_controls(engine("p20"))
    assert p20.cap_enabled and p20.cap_percentile == 20.0 and p20.cap_layers == (2, 3)
