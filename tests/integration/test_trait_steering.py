"""Traits in the live chat and trait steering (#25), on the worker's app over an in-process engine (tiny random model).

A copy of the tiny space gets three trait vectors: ``assistant_like`` along the Assistant Axis itself (so its
projection must be the turn's ``mean_projection``, an independent number), a random ``dramatic`` and a weak random
``playful``. A finished turn carries its top traits in the turn-end event, the stored turn, an export and its import,
and the API's ``persona_space.turn``; steering along a trait with coefficient 2 gives exactly the turn that an eager
loop adding twice the trait's steering vector gives; an unknown trait is a 422; a space without traits chats as before.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from backend.maths.edits import steering_vector
from backend.models.chat import encode_prompt
from backend.models.layers import block_output, find_decoder_layers
from backend.store.space import load_space
from backend.worker.schemas import Controls
from tests.helpers.trait_space import TRAITS, WEAK, with_traits


def _client(model: str, space: Any, db_path: Any) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from backend.models.loading import load_model
    from backend.worker.db import Database
    from backend.worker.engine import Engine
    from backend.worker.server import create_app
    from backend.worker.state import WorkerState

    db = Database(db_path)
    engine = Engine(load_model(model), load_space(space), db, threads=1)
    state = WorkerState(model_spec="tiny", space_path=str(space), db=db)
    engine.start()
    assert engine.ready.wait(60)
    state.engine = engine
    with TestClient(create_app(state), base_url="http://127.0.0.1", raise_server_exceptions=False) as client:
        client.engine = engine  # type: ignore[attr-defined]
        yield client  # leaving the client shuts the engine down


@pytest.fixture(scope="module")
def traited(tiny_world, tmp_path_factory) -> Iterator[Any]:  # type: ignore[no-untyped-def]
    model, space, _ = tiny_world
    root = tmp_path_factory.mktemp("trait_steering")
    yield from _client(model, with_traits(space, root / "space"), root / "w.sqlite3")


@pytest.fixture(scope="module")
def plain(tiny_world, tmp_path_factory) -> Iterator[Any]:  # type: ignore[no-untyped-def]
    model, space, _ = tiny_world
    yield from _client(model, space, tmp_path_factory.mktemp("plain") / "w.sqlite3")


def _chat(client: Any, content: str, **controls: Any) -> tuple[str, dict[str, Any], list[dict[str, Any]]]:
    """A session with ``controls`` (greedy, no cap), one message, and (once it is done) its turn-end and tokens."""
    base = {"greedy": True, "cap_enabled": False, "repetition_penalty": 1.0, "max_new_tokens": 8}
    r = client.post("/sessions", json={"controls": {**base, **controls}})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    turn = client.post(f"/sessions/{sid}/messages", json={"content": content}).json()["assistant_turns"][0]
    deadline = time.time() + 120
    while client.get(f"/sessions/{sid}").json()["busy"] and time.time() < deadline:
        time.sleep(0.05)
    events = client.get(f"/sessions/{sid}/events", params={"after": 0}).json()["events"]
    end = next(e["data"] for e in events if e["type"] == "turn_end" and e["turn"] == turn)
    tokens = [e["data"] for e in events if e["type"] == "token" and e["turn"] == turn]
    assert end["status"] == "done", end
    return sid, end, tokens


def test_a_finished_turn_carries_its_top_traits(traited) -> None:  # type: ignore[no-untyped-def]
    space = traited.engine.space
    layer = space.target_layer
    sid, end, _ = _chat(traited, "Tell me about the sea.")
    traits = end["traits"]
    assert traits["layer"] == layer and traits["weak_left_out"] == 1
    entries = traits["top"] + traits["bottom"]
    assert {e["name"] for e in entries} == {"assistant_like", "dramatic"}  # both kept ones, the weak one left out
    assert [e["z"] for e in traits["top"]] == sorted((e["z"] for e in traits["top"]), reverse=True)
    roles = space.tensors["role_vectors"][:, layer].double()
    vectors = {"assistant_like": 3.0 * space.tensors["axis"][layer], "dramatic": None}
    for e in entries:
        v = vectors[e["name"]] if vectors[e["name"]] is not None else space.tensors["trait_vectors"][1, layer]
        u = v.double() / v.double().norm()
        along = roles @ u
        assert e["z"] == pytest.approx(float((e["projection"] - along.mean()) / along.std(correction=0)), abs=2e-3)
    mine = next(e for e in entries if e["name"] == "assistant_like")
    assert mine["projection"] == pytest.approx(end["mean_projection"], abs=1e-4)  # the axis itself
    # stored with the turn, exported and imported with it
    stored = next(t for t in traited.get(f"/sessions/{sid}").json()["turns"] if t["role"] == "assistant")
    assert stored["summary"]["traits"] == traits
    imported = traited.post("/sessions/import", json=traited.get(f"/sessions/{sid}/export").json())
    assert imported.status_code == 201, imported.text
    again = traited.get(f"/sessions/{imported.json()['id']}").json()["turns"]
    assert next(t for t in again if t["role"] == "assistant")["summary"]["traits"] == traits


def _eager(engine: Any, content: str, vector: torch.Tensor, n: int, start: int = 0) -> tuple[list[int], list[float]]:
    """An independent oracle: greedy decoding with a plain hook that adds ``vector`` at the target layer (from the
    forward pass over token ``start`` on; 0: the prompt's pass too), and the projection on the unit axis there of
    each fed-back token."""
    loaded, layer = engine.loaded, engine.target
    u = engine.axis[layer] / engine.axis[layer].norm()
    prompt = encode_prompt(loaded.tokenizer, None, [{"role": "user", "content": content}])
    seen: list[float] = []

    def hook(module: Any, args: Any, output: Any) -> Any:
        h = block_output(output)
        if start == 0 or len(seen) >= start + 1:  # call 0 is the prompt's pass, call k + 1 the pass over token k
            h = h + vector
        seen.append(float(h[0, -1] @ u))
        return (h, *output[1:]) if isinstance(output, tuple) else h

    handle = find_decoder_layers(loaded.model, loaded.info.layers_path)[layer].register_forward_hook(hook)
    tokens: list[int] = []
    try:
        with torch.inference_mode():
            out = loaded.model(input_ids=torch.tensor([prompt]), use_cache=True)
            for _ in range(n):
                token = int(out.logits[0, -1].argmax())
                if token in engine.stop_ids:
                    break
                tokens.append(token)
                out = loaded.model(input_ids=torch.tensor([[token]]), cache=out.past_key_values, use_cache=True)
    finally:
        handle.remove()
    return tokens, seen[1 : len(tokens) + 1]


def test_trait_steering_with_coefficient_two_equals_twice_the_vector(traited) -> None:  # type: ignore[no-untyped-def]
    engine, content = traited.engine, "What is a ghost?"
    layer = engine.target
    v = steering_vector(
        engine.space.tensors["trait_vectors"][1, layer].float(), float(engine.space.tensors["activation_norm"][layer])
    )
    _, end, tokens = _chat(traited, content, steer_trait="dramatic", steer_coefficient=2.0)
    assert end["traits"]["top"] or end["traits"]["bottom"]
    ids, projections = [t["token_id"] for t in tokens], [t["projection"] for t in tokens]
    want_ids, want_projections = _eager(engine, content, 2 * v, 8)
    assert ids == want_ids and len(ids) > 0
    assert projections == pytest.approx(want_projections, abs=1e-3)
    # and it did steer: the unsteered turn reads otherwise
    _, _, unsteered = _chat(traited, content)
    assert [t["projection"] for t in unsteered] != pytest.approx(projections, abs=1e-3)
    # the engine holds the same vector for every layer (set 1 + i for the kept trait i), and its Steer record too
    norms, trait = engine.space.tensors["activation_norm"], engine.space.tensors["trait_vectors"][1]
    for k in range(engine.n_layers):
        torch.testing.assert_close(engine.steer_vectors[2, k], steering_vector(trait[k].float(), float(norms[k])))
    record = engine.steer_record(Controls(steer_trait="dramatic", steer_coefficient=2.0))
    assert record is not None and record.coefficient == 2.0
    torch.testing.assert_close(record.vectors[layer], v)
    # along the axis the same coefficient is the axis's vector, not the trait's
    _, _, axis_tokens = _chat(traited, content, steer_coefficient=2.0)
    axis_v = steering_vector(engine.axis[layer].float(), float(engine.space.tensors["activation_norm"][layer]))
    assert [t["token_id"] for t in axis_tokens] == _eager(engine, content, 2 * axis_v, 8)[0]


def test_a_trait_chosen_mid_turn_steers_from_the_next_token(traited, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from backend.worker.schemas import ControlsPatch

    engine, content, at = traited.engine, "Sing me a song.", 3
    layer = engine.target
    v = steering_vector(
        engine.space.tensors["trait_vectors"][1, layer].float(), float(engine.space.tensors["activation_norm"][layer])
    )
    controls = Controls(greedy=True, cap_enabled=False, repetition_penalty=1.0, max_new_tokens=10)
    sid = engine.db.create_session(None, controls.model_dump(mode="json"))
    seen: dict[str, int] = {}
    append = engine.db.append_token

    def append_token(session: str, turn: int, piece: str, data: dict[str, Any]) -> Any:
        out = append(session, turn, piece, data)
        if session == sid:  # on the generation thread, between two steps
            seen[session] = seen.get(session, 0) + 1
            if seen[session] == at:
                engine.patch_controls(sid, ControlsPatch(steer_trait="dramatic", steer_coefficient=2.0))
        return out

    monkeypatch.setattr(engine.db, "append_token", append_token)
    turn = engine.submit(sid, content, False)[1][0]
    deadline = time.time() + 120
    while engine.busy(sid) and time.time() < deadline:
        time.sleep(0.05)
    events = engine.db.events(sid)
    applied = [e["data"] for e in events if e["type"] == "controls_applied" and e["turn"] == turn]
    tokens = [e["data"] for e in events if e["type"] == "token" and e["turn"] == turn]
    assert len(applied) == 1 and applied[0]["from_token"] == at
    want_ids, want_projections = _eager(engine, content, 2 * v, 10, start=at)
    assert [t["token_id"] for t in tokens] == want_ids
    assert [t["projection"] for t in tokens] == pytest.approx(want_projections, abs=1e-3)
    assert want_ids != _eager(engine, content, 0 * v, 10)[0] or want_projections != pytest.approx(
        _eager(engine, content, 0 * v, 10)[1], abs=1e-3
    )  # the change did change the turn


def test_an_unknown_trait_is_a_422_naming_the_choices(traited) -> None:  # type: ignore[no-untyped-def]
    r = traited.post("/sessions", json={"controls": {"steer_trait": "sarcastic"}})
    assert r.status_code == 422 and "not one of the space's 3 traits" in r.text and "trait_axes" in r.text
    sid = traited.post("/sessions", json={}).json()["id"]
    r = traited.patch(f"/sessions/{sid}/controls", json={"steer_trait": "sarcastic", "steer_coefficient": 1.0})
    assert r.status_code == 422 and "sarcastic" in r.text
    assert traited.get(f"/sessions/{sid}").json()["controls"]["steer_trait"] is None  # nothing was changed
    ok = traited.patch(f"/sessions/{sid}/controls", json={"steer_trait": "dramatic"})
    assert ok.status_code == 200 and ok.json()["controls"]["steer_trait"] == "dramatic"
    back = traited.patch(f"/sessions/{sid}/controls", json={"clear_steer_trait": True})
    assert back.json()["controls"]["steer_trait"] is None
    space = traited.get("/space").json()
    assert [t["name"] for t in space["trait_axes"]] == list(TRAITS)
    assert [t["weak"] for t in space["trait_axes"]] == [n == WEAK for n in TRAITS]


def test_the_api_steers_along_a_trait_and_returns_the_turn_traits(traited) -> None:  # type: ignore[no-untyped-def]
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4, "temperature": 0,
            "persona_space": {"cap": "off", "steer": {"coefficient": 1.0, "trait": "dramatic"}}}  # fmt: skip
    r = traited.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    ext = r.json()["persona_space"]
    assert ext["controls"]["steer_trait"] == "dramatic"
    assert {e["name"] for e in ext["turn"]["traits"]["top"] + ext["turn"]["traits"]["bottom"]} <= set(TRAITS)
    body["persona_space"]["steer"]["trait"] = "sarcastic"  # type: ignore[index]
    bad = traited.post("/v1/chat/completions", json=body)
    assert bad.status_code == 400 and "sarcastic" in bad.json()["error"]["message"]


def test_a_space_without_traits_chats_as_before(plain) -> None:  # type: ignore[no-untyped-def]
    _, end, tokens = _chat(plain, "Tell me about the sea.")
    assert tokens and "traits" not in end and end["mean_projection"] is not None
    assert plain.get("/space").json()["trait_axes"] == []
    r = plain.post("/sessions", json={"controls": {"steer_trait": "dramatic"}})
    assert r.status_code == 422 and "no trait vectors" in r.text
