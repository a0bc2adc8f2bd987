"""The import's property (issue #27), on the worker's app in this process: any JSON ``POST /sessions/import`` accepts
is read back (``GET /sessions/{id}``, ``/export``, ``/events`` answer 200), exports within the import limit, imports
again to the same session, and holds only token events the chat page can read; anything else is refused with a 4xx,
never a 5xx, and stores nothing. Export-shaped documents are generated with hostile text (lone surrogates, control
characters), huge numbers, NaN and Infinity, deep nesting, disorder and misplaced events."""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

N_LAYERS, CAP_WINDOW = 4, (2, 3)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The worker's app over a real database, without a model: the import asks only for the model's layer count and
    cap window (a stand-in gives them); the reads need no engine (none is running)."""
    from backend.worker.db import Database
    from backend.worker.server import create_app
    from backend.worker.state import WorkerState

    db = Database(tmp_path_factory.mktemp("import_property") / "sessions.sqlite3")
    state = WorkerState(model_spec="tiny", space_path="space", db=db)
    model = SimpleNamespace(n_layers=N_LAYERS, cap_window=CAP_WINDOW)
    state.need_engine = lambda: model  # type: ignore[method-assign,assignment,return-value]
    with TestClient(create_app(state), base_url="http://127.0.0.1", raise_server_exceptions=False) as c:
        yield c
    db.close()


# strategies ---------------------------------------------------------------------------------------------------------
class Deep:
    """A placeholder for lists nested ``depth`` deep, written into the JSON text (json.dumps cannot nest that far)."""

    def __init__(self, depth: int) -> None:
        self.depth = depth


def _values(hostile: bool) -> tuple[st.SearchStrategy[str], st.SearchStrategy[Any]]:
    """Text and any JSON value. Hostile: lone surrogates (json.dumps writes them as \\ud8xx), huge integers, NaN and
    Infinity (written as those constants), lists nested 1 to 300 deep (refused from 64 levels, the body's)."""
    specials = st.sampled_from(["\x00", "\n", "\x1b", "\x7f", "\u2028", "\ufeff", "\U0001f600", '"', "\\"])
    chars = st.one_of(st.characters(), specials)
    numbers: st.SearchStrategy[Any] = st.one_of(st.integers(-(2**70), 2**70), st.floats(allow_nan=False, allow_infinity=False))
    if hostile:
        chars = st.one_of(chars, st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF))
        numbers = st.one_of(numbers, st.sampled_from([2**63, -(2**63) - 1, 10**300, 10**400, -0.0, 1e308, 5e-324]), st.floats())
    text = st.text(chars, max_size=6)
    free = st.recursive(
        st.one_of(st.none(), st.booleans(), numbers, text),
        lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(text, inner, max_size=3)),
        max_leaves=6,
    )
    return text, st.one_of(free, st.integers(1, 300).map(Deep)) if hostile else free


VALUES = {hostile: _values(hostile) for hostile in (False, True)}
FINITE = st.floats(allow_nan=False, allow_infinity=False)


def _token(index: int, text: st.SearchStrategy[str], anything: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A token event's data: the worker's shape, with one field replaced by anything at all, or anything at all."""
    reading = st.one_of(st.none(), FINITE, st.lists(FINITE, max_size=3))
    shaped = st.fixed_dictionaries(
        {"index": st.just(index), "text": text, "projection": st.one_of(FINITE, st.integers(-(2**70), 2**70))},
        optional={
            "token_id": st.integers(0, 2**20), "monitor_layer": st.integers(0, N_LAYERS), "controls_version": st.integers(0, 9),
            "variant": st.sampled_from(["single", "capped", "uncapped"]), "cap_on": st.booleans(), "tau": reading,
            "cap_delta": st.one_of(st.none(), FINITE), "cap_deltas": st.lists(FINITE, max_size=3),
            "projection_before_cap": reading, "projection_after_cap": reading,
            "cap_layers": st.lists(st.integers(0, N_LAYERS), min_size=2, max_size=2), "extra": anything,
        },
    )  # fmt: skip
    keys = st.sampled_from(["index", "text", "projection", "cap_on", "tau", "cap_delta", "cap_layers", "projection_after_cap"])
    return st.one_of(shaped, st.tuples(shaped, keys, anything).map(lambda t: {**t[0], t[1]: t[2]}), anything)


@st.composite
def exports(draw: st.DrawFn) -> dict[str, Any]:
    """An export-shaped document: valid in the main, every part of it sometimes wrong. One in two is hostile."""
    text, anything = VALUES[draw(st.booleans())]
    wrong = st.integers(0, 7).map(lambda n: n == 3)  # true one time in eight (not 0: hypothesis favours the ends)
    turns: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    for i in range(draw(st.integers(0, 3)) or draw(st.integers(0, 3))):  # an empty session now and then
        user, reply = 2 * i + 1, 2 * i + 2
        turns.append({"id": user, "role": "user", "content": draw(text), "status": "done", "undone": draw(st.booleans())})
        turns.append(
            {
                "id": reply, "role": "assistant", "reply_to": user, "content": draw(text),
                "variant": draw(st.sampled_from(["single", "capped", "uncapped"])),
                "status": draw(st.sampled_from(["done", "stopped", "error", "incomplete", "queued", "running"])),
                "seed": draw(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1))),
                "summary": draw(st.one_of(st.none(), st.dictionaries(text, anything, max_size=3))),
                "undone": draw(st.booleans()),
            }
        )  # fmt: skip
        for k in range(draw(st.integers(0, 4))):
            turn = draw(st.sampled_from([user, 99])) if draw(wrong) else reply
            data = draw(_token(k, text, anything)) if draw(wrong) else draw(_token(k, text, anything).filter(_shaped))
            events.append({"type": "token", "turn": turn, "data": data})
    if draw(wrong):
        events += draw(st.lists(st.fixed_dictionaries({"type": st.sampled_from(["turn_start", "controls", "queued"]),
                                                       "turn": st.one_of(st.none(), st.integers(0, 9)),
                                                       "data": st.dictionaries(text, anything, max_size=2)}), max_size=2))  # fmt: skip
    if draw(wrong):
        events = draw(st.permutations(events))
    for seq, event in enumerate(events, start=1):
        event["seq"] = seq
    controls = draw(st.sampled_from([{}, {"cap_enabled": True}, {"cap_layers": [0, N_LAYERS]}]))
    doc: dict[str, Any] = {
        "format": "persona-space-session", "version": 1, "model": "tiny",
        "session": {"controls": {"cap_layers": [0, 99]} if draw(wrong) else controls,
                    "title": draw(st.one_of(st.none(), text)), "system": draw(st.one_of(st.none(), text))},
        "turns": turns, "events": events,
    }  # fmt: skip
    if draw(wrong):
        doc["ignored"] = draw(anything)
    return doc


def _shaped(data: Any) -> bool:
    """Token data that keeps the worker's shape (its values may still be hostile)."""
    return isinstance(data, dict) and {"index", "text", "projection"} <= set(data)


def _encode(doc: dict[str, Any], ascii_only: bool) -> bytes:
    deep: list[int] = []

    def placeholder(value: Any) -> str:
        deep.append(value.depth)
        return f"@DEEP{len(deep) - 1}@"

    text = json.dumps(doc, ensure_ascii=ascii_only, default=placeholder)  # NaN/Infinity as JS constants
    for i, depth in enumerate(deep):
        text = text.replace(f'"@DEEP{i}@"', "[" * depth + "]" * depth)
    return text.encode("utf-8", "surrogatepass")  # unescaped, a lone surrogate is its 3-byte CESU-8 form


# oracles ------------------------------------------------------------------------------------------------------------
def _same_session(export: dict[str, Any]) -> Any:
    """What must survive export -> import -> export: everything but ids, sequence numbers and times (turn ids become
    their position in the export, wherever they appear)."""
    ids = {t["id"]: n for n, t in enumerate(export["turns"])}

    def data(d: dict[str, Any]) -> dict[str, Any]:
        out = dict(d)
        for key in ("turn", "reply_to"):
            if key in out:
                out[key] = ids.get(out[key], out[key])
        if "turns" in out:
            out["turns"] = [ids.get(t, t) for t in out["turns"]]
        return out

    s = export["session"]
    turns = [
        (t["role"], t["variant"], ids.get(t["reply_to"]), t["content"], t["status"], t["seed"], t["summary"], t["undone"])
        for t in export["turns"]
    ]
    events = [(e["type"], ids.get(e["turn"]), data(e["data"])) for e in export["events"]]
    return (s["title"], s["system"], s["controls"], s["controls_version"]), turns, events


def _the_chat_page_reads(events: list[dict[str, Any]]) -> None:
    """What the chat page does with a session's events, short of drawing them."""
    from app.conversation import Conversation, apply_events, per_turn_rows
    from app.live_charts import control_changes, token_series

    conv = apply_events(Conversation(), events)
    for exchange in conv.exchanges:
        for reply in exchange.replies.values():
            token_series(reply)
            control_changes(conv, reply)
    per_turn_rows(conv)


def _import(client: TestClient, raw: bytes) -> Any:
    return client.post("/sessions/import", content=raw, headers={"content-type": "application/json"})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(doc=exports(), ascii_only=st.booleans())
def test_what_the_import_accepts_is_read_exported_and_imported_again(
    client: TestClient, doc: dict[str, Any], ascii_only: bool
) -> None:
    raw = _encode(doc, ascii_only)
    before = client.get("/sessions").json()["sessions"]
    r = _import(client, raw)
    assert r.status_code < 500, r.text[:500]
    if r.status_code != 201:
        assert r.status_code >= 400 and isinstance(r.json()["error"], str) and r.json()["error"], r.text[:500]
        assert client.get("/sessions").json()["sessions"] == before
        return
    sid = r.json()["id"]
    answers = {p: client.get(p) for p in (f"/sessions/{sid}", f"/sessions/{sid}/export", f"/sessions/{sid}/events")}
    assert [a.status_code for a in answers.values()] == [200, 200, 200], [a.text[:300] for a in answers.values()]
    exported = answers[f"/sessions/{sid}/export"]
    again = _import(client, exported.content)
    assert again.status_code == 201, again.text[:500]
    second = client.get(f"/sessions/{again.json()['id']}/export")
    assert second.status_code == 200
    assert _same_session(second.json()) == _same_session(exported.json())
    _the_chat_page_reads(answers[f"/sessions/{sid}/events"].json()["events"])
    # the import's bound on the export's size holds (it is what keeps every export importable)
    from backend.worker.db_import import export_bytes
    from backend.worker.imports import EXPORT_HEADROOM, check

    bound = export_bytes(check(json.loads(raw), N_LAYERS, CAP_WINDOW))
    assert len(exported.content) <= bound + EXPORT_HEADROOM
    assert len(second.content) <= bound + EXPORT_HEADROOM


def test_the_import_limit_is_the_body_limit() -> None:
    from backend.worker.imports import MAX_IMPORT_BYTES
    from backend.worker.server import MAX_BODY

    assert MAX_BODY == MAX_IMPORT_BYTES


def test_the_export_bound_is_an_upper_bound_within_a_margin(client: TestClient) -> None:
    """The bound counts every id and time at its widest; on a session like the worker's own it stays within ~30 %."""
    from backend.worker.db_import import export_bytes
    from backend.worker.imports import check
    from tests.helpers.worker_harness import big_export

    doc = big_export(n_turns=4, tokens_per_turn=50)
    doc["turns"][1]["content"] = "ünïcödé " * 20
    r = _import(client, json.dumps(doc).encode())
    assert r.status_code == 201, r.text[:300]
    size = len(client.get(f"/sessions/{r.json()['id']}/export").content)
    bound = export_bytes(check(doc, N_LAYERS, CAP_WINDOW))
    assert size <= bound < 1.3 * size, (size, bound)


def test_a_lone_surrogate_stored_by_an_older_version_reads_as_a_replacement_character(client: TestClient) -> None:
    """Sessions stored before the import refused them stay readable (the character reads as U+FFFD)."""
    state = client.app.state.worker  # type: ignore[attr-defined]
    sid = state.db.create_session(None, {})
    state.db.event(sid, None, "token", {"text": "a\ud800b", "\udc00": "key"})
    r = client.get(f"/sessions/{sid}/events")
    assert r.status_code == 200, r.text[:300]
    assert r.json()["events"][-1]["data"] == {"text": "a\ufffdb", "\ufffd": "key"}
    assert client.get(f"/sessions/{sid}/export").status_code == 200
