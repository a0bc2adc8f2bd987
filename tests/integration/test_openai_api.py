"""The OpenAI-compatible API of a real worker process, through the official ``openai`` client (tiny random model)."""

from __future__ import annotations

import time
from typing import Any

import openai
import pytest

from tests.helpers.worker_harness import Worker

HELLO = [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Who are you?"}]


@pytest.fixture(scope="module")
def api(tiny_world):  # type: ignore[no-untyped-def]
    """A worker of its own (other tests' sessions stay apart) and an ``openai`` client pointed at it."""
    model, space, root = tiny_world
    worker = Worker(model, space, root / "openai.sqlite3")
    try:
        worker.wait_ready()
        client = openai.OpenAI(base_url=worker.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        name = client.models.list().data[0].id
        yield worker, client, name
    finally:
        worker.close()


def ext(obj: Any) -> dict[str, Any]:
    """The ``persona_space`` extension of a response object (the client keeps unknown fields as extras)."""
    extra = obj.model_extra or {}
    assert "persona_space" in extra, obj
    return dict(extra["persona_space"])


def collect(stream: Any) -> tuple[str, list[Any]]:
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


def test_models_and_a_greedy_reply_streamed_and_not(api) -> None:  # type: ignore[no-untyped-def]
    worker, client, name = api
    models = client.models.list().data
    assert [m.id for m in models] == [name] and models[0].object == "model"
    whole = client.chat.completions.create(model=name, messages=HELLO, temperature=0, max_tokens=12, seed=3)
    streamed = client.chat.completions.create(
        model=name, messages=HELLO, temperature=0, max_tokens=12, seed=3, stream=True, stream_options={"include_usage": True}
    )
    text, chunks = collect(streamed)
    assert whole.choices[0].message.role == "assistant"
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    # usage counts equal the tokens: one projection per generated token, the prompt as the template encodes it
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None and usage.model_dump() == whole.usage.model_dump()
    per_token = [p for c in chunks[1:] if c.choices for p in ext(c).get("projections", [])]
    assert len(per_token) == usage.completion_tokens == len(ext(whole)["projections"])
    assert per_token == pytest.approx(ext(whole)["projections"], abs=1e-4)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    from transformers import AutoTokenizer

    from backend.models.chat import encode_prompt

    tokenizer = AutoTokenizer.from_pretrained(worker.proc.args[worker.proc.args.index("--model") + 1])
    assert usage.prompt_tokens == len(encode_prompt(tokenizer, "You are a pirate.", HELLO[1:]))


def test_the_extension_is_there_and_parses(api) -> None:  # type: ignore[no-untyped-def]
    worker, client, name = api
    reply = client.chat.completions.create(model=name, messages=HELLO, temperature=0, max_tokens=6)
    ps = ext(reply)
    turn = ps["turn"]
    assert isinstance(turn["mean_projection"], float) and len(turn["pca"]) == 3 and len(turn["umap_2d"]) == 2
    assert {n["name"] for n in turn["nearest"]} and turn["layer"] == 2
    assert isinstance(ps["prompt_projection"], float)
    assert len(ps["cap_deltas"]) == len(ps["projections"]) == reply.usage.completion_tokens
    stream = list(client.chat.completions.create(model=name, messages=HELLO, temperature=0, max_tokens=6, stream=True))
    last = [c for c in stream if c.choices and c.choices[0].finish_reason][-1]
    assert ext(last)["turn"]["mean_projection"] == pytest.approx(turn["mean_projection"], abs=1e-4)
    assert ext(last)["prompt_projection"] == pytest.approx(ps["prompt_projection"], abs=1e-4)
    # stored as a session marked as API, with the conversation and the reply
    session = worker.client.get(f"/sessions/{ps['session']}").json()
    assert session["kind"] == "api" and session["system"] == "You are a pirate."
    assert [t["content"] for t in session["turns"]] == ["Who are you?", reply.choices[0].message.content]
    listed = {s["id"]: s for s in worker.client.get("/sessions").json()["sessions"]}
    assert listed[ps["session"]]["kind"] == "api"
    # and stays one through an export and an import (it was imported as a chat)
    exported = worker.client.get(f"/sessions/{ps['session']}/export").json()
    copy = worker.client.post("/sessions/import", json=exported)
    assert copy.status_code == 201, copy.text
    again = worker.client.get(f"/sessions/{copy.json()['id']}").json()
    assert again["kind"] == "api" and [t["content"] for t in again["turns"]] == [t["content"] for t in session["turns"]]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
        ({"logprobs": True}, "logprobs"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"extra_body": {"persona_space": {"cap": {"percentile": 200}}}}, "persona_space.cap.percentile"),
        ({"extra_body": {"persona_space": {"cap": {"percentile": 50, "threshold": 1.0}}}}, "persona_space.cap"),
        ({"extra_body": {"persona_space": {"cap": {"window": [0, 99]}}}}, "persona_space"),
        ({"extra_body": {"persona_space": {"steer": {"coefficient": 9}}}}, "persona_space.steer.coefficient"),
        ({"extra_body": {"persona_space": {"colour": "red"}}}, "persona_space.colour"),
        ({"extra_body": {"best_of": 3}}, "best_of"),
    ],
)
def test_a_bad_request_gets_openais_error_shape(api, extra, param) -> None:  # type: ignore[no-untyped-def]
    _, client, name = api
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=name, messages=HELLO, max_tokens=4, **extra)
    error = caught.value
    assert error.status_code == 400
    assert set(error.body) == {"message", "type", "param", "code"} and error.body["type"] == "invalid_request_error"
    assert error.body["param"] == param and error.body["message"]
    assert set(error.response.json()) == {"error"}


def test_other_errors_are_in_openais_shape_too(api) -> None:  # type: ignore[no-untyped-def]
    worker, client, name = api
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert caught.value.body["code"] == "model_not_found" and caught.value.body["param"] == "model"
    # the body guards and FastAPI answer in the OpenAI shape on /v1, in the worker's own elsewhere
    r = worker.client.post("/v1/chat/completions", content=b"{" * 100, headers={"content-type": "application/json"})
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = worker.client.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    assert isinstance(worker.client.get("/sessions/0123456789abcdef").json()["error"], str)
    r = worker.client.post("/v1/chat/completions", json={"model": name, "messages": [{"role": "assistant", "content": "x"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"


def test_a_client_that_leaves_mid_stream_frees_the_worker(api) -> None:  # type: ignore[no-untyped-def]
    worker, client, name = api
    stream = client.chat.completions.create(
        model=name, messages=HELLO, temperature=0.9, max_tokens=1000, stream=True,
        extra_body={"persona_space": {"cap": "off"}},
    )  # fmt: skip
    first = next(iter(stream))
    sid = ext(first)["session"]
    for _ in range(2):  # a few tokens in
        next(stream)
    stream.close()
    deadline = time.time() + 60
    while worker.client.get(f"/sessions/{sid}").json()["busy"]:
        assert time.time() < deadline, "the turn went on after its client left"
        time.sleep(0.1)
    reply = worker.client.get(f"/sessions/{sid}").json()["turns"][-1]
    assert reply["status"] == "stopped" and reply["summary"]["n_tokens"] < 1000
    nxt = client.chat.completions.create(model=name, messages=HELLO, temperature=0, max_tokens=3)
    assert nxt.choices[0].finish_reason == "length" and nxt.usage.completion_tokens == 3


def test_two_requests_with_different_caps_each_get_their_own(api) -> None:  # type: ignore[no-untyped-def]
    _, client, name = api

    def run(cap: Any) -> dict[str, Any]:
        reply = client.chat.completions.create(
            model=name, messages=HELLO, temperature=0, max_tokens=8, extra_body={"persona_space": {"cap": cap}}
        )
        return ext(reply)

    low, high, off = run({"threshold": -1e6}), run({"threshold": 1e6}), run(None)
    assert low["controls"]["cap_threshold"] == -1e6 and high["controls"]["cap_threshold"] == 1e6
    assert not off["controls"]["cap_enabled"] and all(d == [] for d in off["cap_deltas"])
    assert all(d == [0.0] for d in low["cap_deltas"])  # a floor far below moves nothing
    assert all(d[0] > 0 for d in high["cap_deltas"])  # a floor far above moves every token
    assert low["cap_deltas"] != high["cap_deltas"]
    steered = client.chat.completions.create(
        model=name, messages=HELLO, temperature=0, max_tokens=8,
        extra_body={"persona_space": {"cap": "off", "steer": {"coefficient": 2.0, "window": [1, 2]}}},
    )  # fmt: skip
    assert ext(steered)["controls"]["steer_coefficient"] == 2.0 and ext(steered)["controls"]["steer_layers"] == [1, 2]


def test_stop_strings_and_max_tokens_give_finish_reasons(api) -> None:  # type: ignore[no-untyped-def]
    _, client, name = api
    kw: dict[str, Any] = {"model": name, "messages": HELLO, "temperature": 0, "seed": 1}
    full = client.chat.completions.create(max_tokens=20, **kw)
    assert full.choices[0].finish_reason == "length" and full.usage.completion_tokens == 20
    text = full.choices[0].message.content or ""
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    assert len(stop.strip()) > 0, text
    expected = text[: text.find(stop)]
    cut = client.chat.completions.create(max_tokens=20, stop=[stop, "\x00never"], **kw)
    assert cut.choices[0].finish_reason == "stop" and cut.choices[0].message.content == expected
    assert cut.usage.completion_tokens <= 20
    streamed, chunks = collect(client.chat.completions.create(max_tokens=20, stop=stop, stream=True, **kw))
    assert streamed == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    limited = client.chat.completions.create(max_completion_tokens=4, **kw)
    assert limited.choices[0].finish_reason == "length" and limited.usage.completion_tokens == 4


def test_a_client_that_leaves_a_whole_reply_frees_the_worker_too(api) -> None:  # type: ignore[no-untyped-def]
    import httpx

    worker, _, name = api
    body = {"model": name, "messages": HELLO, "temperature": 0.9, "max_tokens": 1000, "persona_space": {"cap": "off"}}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(worker.url + "/v1/chat/completions", json=body, timeout=httpx.Timeout(60, read=1.5))
    newest = worker.client.get("/sessions").json()["sessions"][0]
    assert newest["kind"] == "api"
    deadline = time.time() + 60
    while worker.client.get(f"/sessions/{newest['id']}").json()["busy"]:
        assert time.time() < deadline, "the turn went on after its client left"
        time.sleep(0.1)
    assert worker.client.get(f"/sessions/{newest['id']}").json()["turns"][-1]["status"] == "stopped"


def test_a_prompt_longer_than_the_context_is_a_400(api) -> None:  # type: ignore[no-untyped-def]
    _, client, name = api
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=name, messages=[{"role": "user", "content": "word " * 6000}], stream=True)
    assert caught.value.body["code"] == "context_length_exceeded" and "2048" in caught.value.body["message"]


def test_langchain_chat_openai_works_unchanged(api, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """LangChain's ``ChatOpenAI`` with only a base URL: the same greedy text as the ``openai`` client, whole and
    streamed, and the extension passed through ``extra_body`` reaches the worker (the capped request is stored with
    the cap it asked for)."""
    monkeypatch.setenv("LANGSMITH_TRACING", "false")  # nothing may leave the machine
    from langchain_core.messages import HumanMessage, SystemMessage
    from langchain_openai import ChatOpenAI

    worker, client, name = api
    cap = {"persona_space": {"cap": {"percentile": 50}}}
    llm = ChatOpenAI(
        base_url=worker.url + "/v1", api_key="unused", model=name, temperature=0, max_tokens=10, seed=5, max_retries=0,
        extra_body=cap,
    )  # fmt: skip
    messages = [SystemMessage(HELLO[0]["content"]), HumanMessage(HELLO[1]["content"])]
    reply = llm.invoke(messages)
    expected = (
        client.chat.completions.create(model=name, messages=HELLO, temperature=0, max_tokens=10, seed=5, extra_body=cap)
        .choices[0]
        .message.content
    )
    assert reply.content == expected and reply.response_metadata["finish_reason"] in ("stop", "length")
    assert "".join(str(part.content) for part in llm.stream(messages)) == expected
    api_sessions = [s for s in worker.client.get("/sessions").json()["sessions"] if s["kind"] == "api"]
    newest = worker.client.get(f"/sessions/{max(api_sessions, key=lambda s: s['created'])['id']}").json()
    assert newest["controls"]["cap_enabled"] is True and newest["controls"]["cap_percentile"] == 50
