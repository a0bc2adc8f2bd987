"""The model worker as a real server process on a real socket, with a tiny random chat model and its space."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from tests.conftest import WORLD_ROLES as ROLES
from tests.helpers.worker_harness import ROOT, Worker

JOKE = [  # a two-exchange conversation for the /project tests
    {"role": "user", "content": "Hello"},
    {"role": "assistant", "content": "Hi there, how can I help?"},
    {"role": "user", "content": "Tell me a joke."},
    {"role": "assistant", "content": "Why did the chicken cross the road?"},
]


def tokens_of(events, turn):  # type: ignore[no-untyped-def]
    return [e["data"] for e in events if e["type"] == "token" and e["turn"] == turn]


def test_health_and_space(worker) -> None:  # type: ignore[no-untyped-def]
    health = worker.client.get("/health").json()
    assert health["ready"] and health["device"] == "cpu" and health["queue_length"] == 0
    space = worker.client.get("/space").json()
    assert [r["name"] for r in space["roles"]] == list(ROLES)
    assert space["target_layer"] == 2 and space["cap_window"] == [2, 3]
    assert len(space["roles"][0]["pca"]) == 3 and len(space["roles"][0]["umap_2d"]) == 2
    assert worker.client.get("/space", params={"layer": 9}).status_code == 422
    assert "/sessions/{sid}/events" in worker.client.get("/openapi.json").json()["paths"]


def test_stream_reconnect_misses_nothing_and_repeats_nothing(worker) -> None:  # type: ignore[no-untyped-def]
    sid = worker.session(controls={"max_new_tokens": 120, "greedy": False})
    turn = worker.say(sid, "Tell me a long story.")["assistant_turns"][0]
    first = list(worker.stream(sid, max_events=25))  # the client drops the connection mid-turn
    rest = list(worker.stream(sid, after=first[-1]["seq"]))
    seqs = [e["seq"] for e in first + rest]
    assert seqs == sorted(set(seqs))
    assert seqs == [e["seq"] for e in worker.events(sid)]
    tokens = tokens_of(first + rest, turn)
    assert [t["index"] for t in tokens] == list(range(len(tokens)))
    end = next(e for e in rest if e["type"] == "turn_end")["data"]
    assert end["n_tokens"] == len(tokens) and len(end["pca"]) == 3 and len(end["nearest"]) == 5
    session = worker.client.get(f"/sessions/{sid}").json()
    assert session["turns"][-1]["content"] == "".join(t["text"] for t in tokens)


def test_cap_change_mid_turn_applies_from_the_next_token(worker) -> None:  # type: ignore[no-untyped-def]
    controls = {"max_new_tokens": 400, "cap_enabled": False, "cap_percentile": 99.0, "greedy": False, "seed": 7}
    reference = worker.session(controls=controls)
    ref_turn = worker.say(reference, "Describe the sea.")["assistant_turns"][0]
    worker.wait_idle(reference)
    sid = worker.session(controls=controls)
    turn = worker.say(sid, "Describe the sea.")["assistant_turns"][0]
    worker.wait_tokens(sid, turn, 30)
    r = worker.client.patch(f"/sessions/{sid}/controls", json={"cap_enabled": True})
    assert r.status_code == 200 and r.json()["controls_version"] == 1
    worker.wait_idle(sid)
    events = worker.events(sid)
    applied = [e["data"] for e in events if e["type"] == "controls_applied"]
    assert len(applied) == 1
    k = applied[0]["from_token"]
    tokens, ref_tokens = tokens_of(events, turn), tokens_of(worker.events(reference), ref_turn)
    assert 30 <= k < len(tokens)
    # before the change: exactly the uncapped run; from it: capped, and the monitored layer (inside the cap
    # window here) sits at or above the floor
    for t, ref in zip(tokens[:k], ref_tokens[:k], strict=True):
        assert (t["token_id"], t["projection"], t["cap_on"], t["controls_version"]) == (
            ref["token_id"],
            ref["projection"],
            False,
            0,
        )
    for t in tokens[k:]:
        assert t["cap_on"] and t["controls_version"] == 1
        assert t["projection"] >= t["tau"][0] - 1e-3
        assert t["projection_after_cap"] == pytest.approx(max(t["projection_before_cap"], t["tau"][0]), abs=1e-3)
    assert any(t["cap_delta"] > 0 for t in tokens[k:])


def test_stop_and_undo(worker) -> None:  # type: ignore[no-untyped-def]
    sid = worker.session(controls={"max_new_tokens": 1000, "greedy": False})
    turn = worker.say(sid, "Count forever.")["assistant_turns"][0]
    worker.wait_tokens(sid, turn, 10)
    assert worker.client.post(f"/sessions/{sid}/undo").status_code == 409  # busy
    assert turn in worker.client.post(f"/sessions/{sid}/stop").json()["stopped"]
    worker.wait_idle(sid)
    state = worker.client.get(f"/sessions/{sid}").json()
    assert state["turns"][-1]["status"] == "stopped"
    assert 10 <= len(tokens_of(worker.events(sid), turn)) < 1000
    undone = worker.client.post(f"/sessions/{sid}/undo").json()["undone"]
    assert sorted(undone) == [turn - 1, turn]
    assert worker.client.get(f"/sessions/{sid}").json()["turns"] == []
    exported = worker.client.get(f"/sessions/{sid}/export").json()
    assert exported["format"] == "persona-space-session" and len(exported["turns"]) == 2


def test_compare_generates_two_linked_turns_with_one_seed(worker) -> None:  # type: ignore[no-untyped-def]
    sid = worker.session(controls={"max_new_tokens": 30, "cap_threshold": -1e9})  # a floor nothing is below
    accepted = worker.say(sid, "Who are you?", compare=True)
    assert accepted["variants"] == ["capped", "uncapped"]
    worker.wait_idle(sid)
    events = worker.events(sid)
    capped, uncapped = (tokens_of(events, t) for t in accepted["assistant_turns"])
    assert [t["token_id"] for t in capped] == [t["token_id"] for t in uncapped]
    assert all(t["cap_on"] for t in capped) and not any(t["cap_on"] for t in uncapped)
    turns = worker.client.get(f"/sessions/{sid}").json()["turns"]
    assert {t["reply_to"] for t in turns if t["role"] == "assistant"} == {accepted["user_turn"]}
    assert len({t["seed"] for t in turns if t["role"] == "assistant"}) == 1
    # a real floor changes the capped column only
    worker.client.patch(f"/sessions/{sid}/controls", json={"clear_cap_threshold": True, "cap_percentile": 99.0})
    second = worker.say(sid, "And what do you like?", compare=True)
    worker.wait_idle(sid)
    events = worker.events(sid)
    capped, uncapped = (tokens_of(events, t) for t in second["assistant_turns"])
    assert any(t["cap_delta"] > 0 for t in capped) and all(t["cap_delta"] == 0 for t in uncapped)


def test_compare_rows_each_equal_their_single_run(worker) -> None:  # type: ignore[no-untyped-def]
    """A comparison is one batch (left-padded once the columns' histories differ); each row is its own run."""
    controls = {"max_new_tokens": 16, "cap_percentile": 99.0, "greedy": True}
    questions = ["Who are you?", "Tell me more."]
    compared = worker.session(controls=controls)
    turns = []
    for q in questions:
        turns.append(worker.say(compared, q, compare=True)["assistant_turns"])
        worker.wait_idle(compared)
    events = worker.events(compared)
    for column, cap_enabled in ((0, True), (1, False)):
        single = worker.session(controls=dict(controls, cap_enabled=cap_enabled))
        for q, pair in zip(questions, turns, strict=True):
            turn = worker.say(single, q)["assistant_turns"][0]
            worker.wait_idle(single)
            mine, ref = tokens_of(events, pair[column]), tokens_of(worker.events(single), turn)
            assert [t["token_id"] for t in mine] == [t["token_id"] for t in ref]
            assert [t["projection"] for t in mine] == pytest.approx([t["projection"] for t in ref], abs=1e-4)
            assert [t["cap_delta"] for t in mine] == pytest.approx([t["cap_delta"] for t in ref], abs=1e-4)
    assert any(t["cap_delta"] > 0 for t in tokens_of(events, turns[0][0]))


BAD = [
    ("post", "/sessions", "{not json", 422),
    ("post", "/sessions", '{"controls": {"temperature": NaN}}', 422),
    ("post", "/sessions", '{"controls": {"cap_percentile": 101}}', 422),
    ("post", "/sessions", '{"controls": {"cap_layers": [2, 99]}}', 422),
    ("post", "/sessions", '{"controls": {"cap_layers": [3, 1]}}', 422),
    ("post", "/sessions", '{"controls": {"max_new_tokens": 0}}', 422),
    ("post", "/sessions", '{"colour": "red"}', 422),
    ("post", "/sessions", '{"system": "' + "x" * 5000 + '"}', 422),
    ("get", "/sessions/0123456789abcdef", None, 404),
    ("get", "/sessions/not-a-session", None, 422),
    ("get", "/sessions/0123456789abcdef/events?after=-1", None, 422),
]


@pytest.mark.parametrize(("method", "path", "body", "status"), BAD)
def test_bad_input_gets_a_clear_4xx(worker, method, path, body, status) -> None:  # type: ignore[no-untyped-def]
    r = worker.client.request(method.upper(), path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert isinstance(r.json()["error"], str) and r.json()["error"]


def test_bad_messages_and_controls_lose_nothing(worker) -> None:  # type: ignore[no-untyped-def]
    sid = worker.session(controls={"max_new_tokens": 5})
    worker.say(sid, "hello")
    worker.wait_idle(sid)
    before = worker.client.get(f"/sessions/{sid}").json()
    for body in ({"content": ""}, {"content": "x" * 9000}, {"content": 5}, {"text": "hi"}):
        assert worker.client.post(f"/sessions/{sid}/messages", json=body).status_code == 422
    r = worker.client.patch(f"/sessions/{sid}/controls", json={"cap_layers": [0, 40]})
    assert r.status_code == 422 and "reaches past the model's 4 layers" in r.json()["error"]
    assert worker.client.patch(f"/sessions/{sid}/controls", content=b'{"steer_coefficient": Infinity}').status_code == 422
    assert worker.client.get(f"/sessions/{sid}").json() == before


def test_eight_sessions_three_turns_each_none_mixed_up(worker) -> None:  # type: ignore[no-untyped-def]
    results: dict[int, str] = {}
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            sid = worker.session(system=f"You are visitor number {i}.", controls={"max_new_tokens": 6})
            for j in range(3):
                worker.say(sid, f"message {j} from session {i}")
                worker.wait_idle(sid)
            results[i] = sid
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    for i, sid in results.items():
        session = worker.client.get(f"/sessions/{sid}").json()
        assert session["system"] == f"You are visitor number {i}."
        users = [t["content"] for t in session["turns"] if t["role"] == "user"]
        assert users == [f"message {j} from session {i}" for j in range(3)]
        replies = [t for t in session["turns"] if t["role"] == "assistant"]
        assert [t["status"] for t in replies] == ["done"] * 3
        own = {t["id"] for t in session["turns"]}
        assert {e["turn"] for e in worker.events(sid) if e["turn"] is not None} <= own


def test_kill_9_mid_turn_then_restart_keeps_everything(tiny_world, tmp_path) -> None:  # type: ignore[no-untyped-def]
    model, space, _ = tiny_world
    db = tmp_path / "killed.sqlite3"
    w = Worker(model, space, db)
    try:
        w.wait_ready()
        sid = w.session(controls={"max_new_tokens": 1000, "greedy": False})
        turn = w.say(sid, "Tell me everything.")["assistant_turns"][0]
        w.wait_tokens(sid, turn, 25)
        w.kill()
        w.client.close()
    finally:
        w.close()
    w = Worker(model, space, db)
    try:
        w.wait_ready()
        session = w.client.get(f"/sessions/{sid}").json()
        reply = session["turns"][-1]
        assert reply["id"] == turn and reply["status"] == "incomplete"
        events = w.events(sid)
        tokens = tokens_of(events, turn)
        assert len(tokens) >= 25 and [t["index"] for t in tokens] == list(range(len(tokens)))
        assert reply["content"] == "".join(t["text"] for t in tokens)
        assert any(e["type"] == "turn_incomplete" for e in events)
        w.client.patch(f"/sessions/{sid}/controls", json={"max_new_tokens": 5})
        nxt = w.say(sid, "Go on.")["assistant_turns"][0]
        w.wait_idle(sid)
        assert w.client.get(f"/sessions/{sid}").json()["turns"][-1]["id"] == nxt
        assert w.client.get(f"/sessions/{sid}").json()["turns"][-1]["status"] == "done"
    finally:
        w.close()


def test_token_required_and_checked(tiny_world, tmp_path) -> None:  # type: ignore[no-untyped-def]
    model, space, _ = tiny_world
    refused = subprocess.run(
        [sys.executable, "-m", "backend", "serve", "--model", model, "--space", str(space), "--host", "192.0.2.1", "--db", str(tmp_path / "x.db")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert refused.returncode == 2 and "pass --token" in refused.stderr
    w = Worker(model, space, tmp_path / "auth.sqlite3", token="s3cret")
    try:
        w.wait_ready()
        import httpx

        assert httpx.get(f"{w.url}/health").status_code == 401
        assert httpx.get(f"{w.url}/sessions", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert w.client.get("/sessions").status_code == 200
    finally:
        w.close()


def test_mismatched_space_is_refused(tiny_world, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _, space, _ = tiny_world
    done = subprocess.run(
        [sys.executable, "-m", "backend", "serve", "--model", "smollm2-135m", "--space", str(space), "--db", str(tmp_path / "m.db")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and "was built for" in done.stderr and "python -m backend build" in done.stderr


def test_fuzz_the_openapi_schema(worker) -> None:  # type: ignore[no-untyped-def]
    import schemathesis
    from hypothesis import HealthCheck, settings

    schema = schemathesis.openapi.from_url(f"{worker.url}/openapi.json")
    failures: list[str] = []
    sid = worker.session(controls={"max_new_tokens": 3})

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    def check(case) -> None:  # type: ignore[no-untyped-def]
        if case.path_parameters and "sid" in case.path_parameters and case.method != "DELETE":
            case.path_parameters["sid"] = (
                sid if case.path_parameters["sid"][:1] in "0123456789abcdef" else case.path_parameters["sid"]
            )
        if case.path.endswith("/events") and case.query and str(case.query.get("follow", "")).lower() in ("true", "1"):
            case.query["until_idle"] = "true"  # an endless stream is a feature, not a hang
        response = case.call(timeout=30)
        if response.status_code >= 500:
            failures.append(f"{case.method} {case.formatted_path} {case.query} -> {response.status_code} {response.text[:200]}")

    for result in schema.get_all_operations():
        operation = result.ok()
        strategy = operation.as_strategy()
        from hypothesis import given

        given(strategy)(check)()
    assert not failures, failures[:5]
    assert worker.client.get("/health").json()["ready"]


def test_project_transcript_and_session_import(worker) -> None:  # type: ignore[no-untyped-def]
    conversation = JOKE
    r = worker.client.post("/project", json={"model": "x", "turns": 9, "conversation": conversation})
    assert r.status_code == 200, r.text
    assert [t["index"] for t in r.json()["turns"]] == [0, 1]
    bad = worker.client.post("/project", json=[{"role": "assistant", "content": "x"}])
    assert bad.status_code == 400 and "alternate" in bad.json()["error"]
    big = worker.client.post("/project", content=b"[" + b" " * (21 * 2**20) + b"]", headers={"content-type": "application/json"})
    assert big.status_code == 413

    sid = worker.session(controls={"max_new_tokens": 6})
    worker.say(sid, "hello there")
    worker.wait_idle(sid)
    exported = worker.client.get(f"/sessions/{sid}/export").json()
    imported = worker.client.post("/sessions/import", json=exported)
    assert imported.status_code == 201, imported.text
    new = worker.client.get(f"/sessions/{imported.json()['id']}").json()
    old = worker.client.get(f"/sessions/{sid}").json()
    assert [(t["role"], t["content"], t["status"]) for t in new["turns"]] == [
        (t["role"], t["content"], t["status"]) for t in old["turns"]
    ]
    assert worker.client.post("/sessions/import", json={"format": "other"}).status_code == 422


def test_bad_import_writes_nothing_and_concurrent_patches_keep_both(worker) -> None:  # type: ignore[no-untyped-def]
    sid = worker.session(controls={"max_new_tokens": 4})
    exported = worker.client.get(f"/sessions/{sid}/export").json()
    exported["turns"] = [{"id": 1, "role": "system", "content": "x", "status": "done"}]
    before = len(worker.client.get("/sessions").json()["sessions"])
    r = worker.client.post("/sessions/import", json=exported)
    assert r.status_code == 422 and "role must be user/assistant" in r.json()["error"]
    assert len(worker.client.get("/sessions").json()["sessions"]) == before
    results: list[int] = []
    fields = [{"temperature": 0.3}, {"top_p": 0.5}, {"seed": 42}, {"cap_percentile": 10.0}]
    threads = [
        threading.Thread(target=lambda f=f: results.append(worker.client.patch(f"/sessions/{sid}/controls", json=f).status_code))
        for f in fields
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    controls = worker.client.get(f"/sessions/{sid}/controls").json()
    assert results == [200] * 4 and controls["controls_version"] == 4
    c = controls["controls"]
    assert (c["temperature"], c["top_p"], c["seed"], c["cap_percentile"]) == (0.3, 0.5, 42, 10.0)


def test_max_new_tokens_lowered_mid_turn_ends_the_reply(worker) -> None:  # type: ignore[no-untyped-def]
    sid = worker.session(controls={"max_new_tokens": 1000, "greedy": False})
    turn = worker.say(sid, "Talk for a long time.")["assistant_turns"][0]
    worker.wait_tokens(sid, turn, 20)
    worker.client.patch(f"/sessions/{sid}/controls", json={"max_new_tokens": 8})
    worker.wait_idle(sid)
    events = worker.events(sid)
    n = len(tokens_of(events, turn))
    applied = next(e["data"] for e in events if e["type"] == "controls_applied")
    assert (
        n == applied["from_token"]
        and next(e["data"] for e in events if e["type"] == "turn_end")["reason"] == "max_new_tokens reached"
    )


def test_undo_removes_the_last_exchange_only(worker) -> None:  # type: ignore[no-untyped-def]
    sid = worker.session(controls={"max_new_tokens": 3})
    first = worker.say(sid, "First question.")
    worker.wait_idle(sid)
    second = worker.say(sid, "Second question.")
    worker.wait_idle(sid)
    undone = worker.client.post(f"/sessions/{sid}/undo").json()["undone"]
    assert undone == [second["user_turn"], *second["assistant_turns"]]
    turns = worker.client.get(f"/sessions/{sid}").json()["turns"]
    assert [t["id"] for t in turns] == [first["user_turn"], *first["assistant_turns"]]
    assert turns[0]["content"] == "First question."
    assert worker.client.post(f"/sessions/{sid}/undo").json()["undone"] == [first["user_turn"], *first["assistant_turns"]]
    assert worker.client.post(f"/sessions/{sid}/undo").json()["undone"] == []


def test_the_queue_is_first_in_first_out(worker) -> None:  # type: ignore[no-untyped-def]
    blocker = worker.session(controls={"max_new_tokens": 1024, "greedy": False})
    running = worker.say(blocker, "Count forever.")["assistant_turns"][0]
    worker.wait_tokens(blocker, running, 2)
    sessions = [worker.session(controls={"max_new_tokens": 2}) for _ in range(3)]
    accepted = [worker.say(sid, f"Question {i}.") for i, sid in enumerate(sessions)]
    assert [a["queue_position"] for a in accepted] == [1, 2, 3]  # one turn running ahead of them
    worker.client.post(f"/sessions/{blocker}/stop")
    for sid in sessions:
        worker.wait_idle(sid)
    starts = {e["turn"]: e["seq"] for sid in sessions for e in worker.events(sid) if e["type"] == "turn_start"}
    turns = [a["assistant_turns"][0] for a in accepted]
    assert sorted(turns, key=starts.__getitem__) == turns
    # the two columns of a comparison are queued capped first
    sid = worker.session(controls={"max_new_tokens": 2})
    capped, uncapped = worker.say(sid, "Who are you?", compare=True)["assistant_turns"]
    worker.wait_idle(sid)
    starts = {e["turn"]: e["seq"] for e in worker.events(sid) if e["type"] == "turn_start"}
    assert starts[capped] < starts[uncapped]


def test_compare_with_the_cap_on_leaves_the_uncapped_column_uncapped(worker) -> None:  # type: ignore[no-untyped-def]
    sid = worker.session(controls={"max_new_tokens": 20, "cap_enabled": True, "cap_percentile": 99.0})
    accepted = worker.say(sid, "Who are you?", compare=True)
    worker.wait_idle(sid)
    events = worker.events(sid)
    capped, uncapped = (tokens_of(events, t) for t in accepted["assistant_turns"])
    assert len(capped) == len(uncapped) == 20
    assert all(t["cap_on"] for t in capped) and any(t["cap_delta"] > 0 for t in capped)
    assert not any(t["cap_on"] for t in uncapped) and all(t["cap_delta"] == 0 for t in uncapped)
    # and a single reply with the cap on is capped
    single = worker.say(sid, "And then?")["assistant_turns"][0]
    worker.wait_idle(sid)
    assert all(t["cap_on"] for t in tokens_of(worker.events(sid), single))


def test_after_and_last_event_id_resume_exactly_after_the_later_one(worker) -> None:  # type: ignore[no-untyped-def]
    sid = worker.session(controls={"max_new_tokens": 8})
    worker.say(sid, "Hello.")
    worker.wait_idle(sid)
    seqs = [e["seq"] for e in worker.events(sid)]
    assert len(seqs) >= 8
    early, late = seqs[1], seqs[4]

    def fetched(after: int, header: int | None) -> list[int]:
        headers = {"Last-Event-ID": str(header)} if header is not None else {}
        r = worker.client.get(f"/sessions/{sid}/events", params={"after": after}, headers=headers)
        assert r.status_code == 200, r.text
        return [e["seq"] for e in r.json()["events"]]

    assert fetched(late, None) == seqs[5:]
    assert fetched(late, early) == seqs[5:]
    assert fetched(early, late) == seqs[5:]
    assert fetched(0, early) == seqs[2:]
    # the stream resumes right after `after`: no repeat of it, no gap
    assert [e["seq"] for e in worker.stream(sid, after=early, max_events=3)] == seqs[2:5]
    assert [e["seq"] for e in worker.stream(sid, after=late)] == seqs[5:]
    assert [e["seq"] for e in worker.stream(sid, after=seqs[-1])] == []


def test_projection_values_match_an_independent_oracle(worker, tiny_world) -> None:  # type: ignore[no-untyped-def]
    import torch

    from backend.models.loading import load_model
    from backend.store.space import load_space
    from tests.helpers.spans import independent_spans

    conversation = JOKE
    r = worker.client.post("/project", json={"model": "x", "turns": 9, "conversation": conversation})
    assert r.status_code == 200, r.text
    model, space_path, _ = tiny_world
    loaded, space = load_model(model), load_space(space_path)
    ids = loaded.tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=False)
    with torch.no_grad():
        hidden = loaded.model(torch.tensor([ids]), output_hidden_states=True).hidden_states[space.target_layer + 1][0]
    axis = space.tensors["axis"][space.target_layer].double()
    spans = independent_spans(loaded.tokenizer, conversation)
    got = r.json()["turns"]
    assert [(t["message_index"], t["n_tokens"]) for t in got] == [(1, spans[0][1] - spans[0][0]), (3, spans[1][1] - spans[1][0])]
    for turn, (a, b) in zip(got, spans, strict=True):
        assert turn["projection"] == pytest.approx(float(hidden[a:b].double().mean(0) @ axis / axis.norm()), rel=1e-5, abs=1e-6)
    # a live turn's mean projection is the mean of its tokens' projections (same layer, linear in the activations)
    sid = worker.session(controls={"max_new_tokens": 12, "cap_enabled": False})
    turn = worker.say(sid, "Hello.")["assistant_turns"][0]
    worker.wait_idle(sid)
    events = worker.events(sid)
    tokens = tokens_of(events, turn)
    end = next(e["data"] for e in events if e["type"] == "turn_end" and e["turn"] == turn)
    assert end["n_tokens"] == len(tokens) > 0 and all(t["monitor_layer"] == space.target_layer for t in tokens)
    assert end["mean_projection"] == pytest.approx(sum(t["projection"] for t in tokens) / len(tokens), abs=1e-4)


def test_an_int8_worker_serves_and_projects_close_to_float32(worker, tiny_world, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`serve --precision int8`: /health says so, turns stream, and a transcript's projections stay close to the
    float32 worker's (the embedded model's figures are bench/decode.py's); an unknown precision is one clear line."""
    model, space, _ = tiny_world
    assert worker.client.get("/health").json()["precision"] == "float32"
    w = Worker(model, space, tmp_path / "int8.sqlite3", extra=["--precision", "int8"])
    try:
        assert w.wait_ready()["precision"] == "int8"
        body = {"model": "x", "turns": 9, "conversation": JOKE}
        quantized = w.client.post("/project", json=body).json()["turns"]
        exact = worker.client.post("/project", json=body).json()["turns"]
        for q, e in zip(quantized, exact, strict=True):
            assert q["n_tokens"] == e["n_tokens"] and q["projection"] != e["projection"]
            assert q["projection"] == pytest.approx(
                e["projection"], rel=0.05, abs=0.05 * max(abs(t["projection"]) for t in exact)
            )
        sid = w.session(controls={"max_new_tokens": 8})
        turn = w.say(sid, "Hello.")["assistant_turns"][0]
        w.wait_idle(sid)
        assert w.client.get(f"/sessions/{sid}").json()["turns"][-1]["status"] == "done"
        assert len(tokens_of(w.events(sid), turn)) > 0
    finally:
        w.close()
    serve = [sys.executable, "-m", "backend", "serve", "--model", model, "--space", str(space)]
    env = {k: v for k, v in os.environ.items() if k != "PERSONA_SPACE_PRECISION"}
    for extra, environ, says in (
        (["--precision", "int4"], env, "invalid choice: 'int4'"),
        ([], dict(env, PERSONA_SPACE_PRECISION="INT8"), "unknown precision 'INT8' (--precision or PERSONA_SPACE_PRECISION)"),
        (["--precision", "int8", "--device", "cuda"], env, "--precision int8 runs on a CPU only, not on cuda"),
    ):
        refused = subprocess.run(serve + extra, cwd=ROOT, env=environ, capture_output=True, text=True, timeout=120)
        assert refused.returncode == 2 and says in refused.stderr, refused.stderr
