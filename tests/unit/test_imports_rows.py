"""Import refusals, row by row, called in this thread (the HTTP property test, tests/unit/test_import_property.py,
runs the app in another): each message names the place by its index in the export, which each row plants by hand."""

from __future__ import annotations

from typing import Any

import pytest

from backend.worker.imports import ExportError, check

MALFORMED = "the session export is malformed: "
READING = "must be a finite number, a list of them (one per capped layer) or null"


def export(**parts: Any) -> dict[str, Any]:
    return {"format": "persona-space-session", "session": {"controls": {}}, "turns": [], "events": [], **parts}


def turn(**fields: Any) -> dict[str, Any]:
    return {"id": 1, "role": "assistant", "content": "x", **fields}


def token(**data: Any) -> dict[str, Any]:
    return {"seq": 1, "type": "token", "turn": 1, "data": {"index": 0, "text": "a", "projection": 0.5, **data}}


SEVEN = {"id": -1, "role": 1, "content": 2, "status": "x", "seed": "s", "undone": 1, "variant": "v"}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (export(turns=[turn(role="system")]), MALFORMED + "turns.0.role: role must be user/assistant"),
        (
            export(turns=[turn(role="system", id=-1)]),
            MALFORMED + "turns.0.id: Input should be greater than or equal to 0; turns.0.role: role must be user/assistant",
        ),
        (
            export(turns=[SEVEN]),  # seven problems: five shown, then how many more
            MALFORMED + "turns.0.id: Input should be greater than or equal to 0; turns.0.role: Input should be a valid "
            "string; turns.0.variant: Input should be 'single', 'capped' or 'uncapped'; turns.0.content: Input should be a "
            "valid string; turns.0.status: Input should be 'done', 'stopped', 'error', 'incomplete', 'queued' or "
            "'running' (and 2 more)",
        ),
        (export(turns=[turn()], events=[token(tau="hot")]), MALFORMED + "events.0.data.tau: " + READING),
        (export(turns=[turn()], events=[token(tau=[1.0, True])]), MALFORMED + "events.0.data.tau: " + READING),
        (
            export(turns=[turn()], events=[token(projection_after_cap=10**400)]),
            MALFORMED + "events.0.data.projection_after_cap: " + READING,
        ),
        (
            export(turns=[turn()], events=[dict(token(index=i), seq=i + 1) for i in range(600)] + [{"type": 5}]),
            MALFORMED + "events.600.type: Input should be a valid string",  # in the second batch of 500
        ),
        (
            export(turns=[turn()], events=[{"type": "other"}] * 700 + [token(projection="x")]),
            MALFORMED + "events.700.data.projection: Input should be a valid number",
        ),
        (export(turns=[turn()], events=["x"]), MALFORMED + "events.0: Input should be a valid dictionary or instance of _Event"),
        (
            export(session={"controls": {"cap_enabled": "yes"}}),
            MALFORMED + "session.controls.cap_enabled: Input should be a valid boolean",
        ),
        ({"format": "x"}, "not a Persona Space session export (expected format 'persona-space-session')"),
    ],
)
def test_refusals_name_the_place(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ExportError) as e:
        check(data, 4, (2, 3))
    assert str(e.value) == message


@pytest.mark.parametrize("reading", [None, 1, 2.5, -0.0, [1, 2.5], []])
def test_readings_the_chat_page_can_draw_are_kept(reading: Any) -> None:
    prepared = check(export(turns=[turn()], events=[token(tau=reading, projection_before_cap=reading)]), 4, (2, 3))
    assert len(prepared.tokens[1]) == 1 and prepared.turns[0].status == "done"


def test_many_token_events_in_several_batches_all_arrive_in_order() -> None:
    events = [dict(token(index=i), seq=i + 1) for i in range(1234)]
    prepared = check(export(turns=[turn()], events=events), 4, (2, 3))
    assert [int(t.split('"index":')[1].split(",")[0]) for t in prepared.tokens[1]] == list(range(1234))


def problems(n: int) -> dict[str, Any]:
    """A turn with ``n`` type errors, in field order."""
    fields = {"id": -1, "role": 1, "variant": "v", "content": 2, "status": "x", "seed": "s", "undone": 1}
    return {k: v for i, (k, v) in enumerate(fields.items()) if i < n}


def test_a_validation_message_shows_five_problems_then_counts_the_rest() -> None:
    for n, end in ((5, "'queued' or 'running'"), (6, "'queued' or 'running' (and 1 more)")):
        with pytest.raises(ExportError) as e:
            check(export(turns=[problems(n)]), 4, (2, 3))
        assert str(e.value).count("; ") == 4 and str(e.value).endswith(end)
    with pytest.raises(ExportError) as e:  # a check of the controls as a whole has no field: "body"
        check(export(session={"controls": {"cap_layers": [3, 2]}}), 4, (2, 3))
    assert str(e.value) == (
        MALFORMED + "session.controls.body: cap_layers must be [start, stop) with 0 <= start < stop, got [3, 2]"
    )


def test_turn_checks_made_while_preparing() -> None:
    from backend.worker.imports import MAX_JSON_CHARS, MAX_MESSAGE_CHARS

    with pytest.raises(ExportError) as e:
        check(export(turns=[turn(), turn()]), 4, (2, 3))
    assert str(e.value) == "turn 1 appears twice"
    with pytest.raises(ExportError) as e:
        check(export(turns=[turn(summary={"x": float("nan")})]), 4, (2, 3))
    assert str(e.value).startswith("turn 1: summary: must be plain JSON with finite numbers (")
    fits = {"a": "x" * (MAX_JSON_CHARS - 8)}  # {"a":"..."} is 8 characters more: exactly the limit
    assert check(export(turns=[turn(summary=fits)]), 4, (2, 3)).turns[0].summary_json is not None
    with pytest.raises(ExportError) as e:
        check(export(turns=[turn(summary={"a": "x" * (MAX_JSON_CHARS - 7)})]), 4, (2, 3))
    assert str(e.value) == f"turn 1: summary: {MAX_JSON_CHARS + 1} characters of JSON, at most {MAX_JSON_CHARS}"
    long = "y" * (MAX_MESSAGE_CHARS + 1)
    with pytest.raises(ExportError) as e:
        check(export(turns=[turn(role="user", content=long)]), 4, (2, 3))
    assert str(e.value) == f"turn 1: a user message has at most {MAX_MESSAGE_CHARS} characters"
    assert check(export(turns=[turn(role="user", content=long[1:])]), 4, (2, 3)).turns[0].content == long[1:]
    assert check(export(turns=[turn(content=long)]), 4, (2, 3)).turns[0].content == long  # a reply may be longer
    both = check(export(turns=[turn(id=7, role="user", content="hi"), turn(id=9, reply_to=7, content="yo")]), 4, (2, 3))
    assert [(t.id, t.role, t.reply_to, t.content) for t in both.turns] == [(7, "user", None, "hi"), (9, "assistant", 7, "yo")]


def test_a_whole_export_is_prepared_as_the_database_stores_it() -> None:
    import json

    events = [
        {"seq": 3, "type": "turn_start", "turn": 2, "data": {}},  # not a token: made again from the turns, skipped
        dict(token(index=0, turn=2), seq=4, turn=2),
        dict(token(index=1), seq=5, turn=2),
        {"type": "controls", "data": {}},  # no seq: allowed, and not counted in the order
        dict(token(index=2), seq=6, turn=2),
    ]
    data = export(
        session={"system": "Be brief.", "title": "T", "controls": {"cap_enabled": True}},
        turns=[turn(id=1, role="user", content="hi"), turn(id=2, reply_to=1, summary={"turn": 2, "status": "done", "n": 3})],
        events=events,
    )
    p = check(data, 4, (2, 3))
    assert (p.system, p.title) == ("Be brief.", "T")
    assert p.controls["cap_enabled"] is True and json.loads(p.controls_json) == p.controls
    assert p.controls["cap_layers"] == [2, 3]  # fitted to the space's window, as JSON (a list, not a tuple)
    assert p.turns[1].summary_json == '{"turn":2,"status":"done","n":3}' and p.turns[1].end_json == '{"n":3}'
    assert p.turns[0].summary_json is None and p.turns[0].end_json == "{}"
    assert [json.loads(t)["index"] for t in p.tokens[2]] == [0, 1, 2] and all('"turn"' not in t for t in p.tokens[2])
    assert check(export(session={"controls": {}, "title": ""}), 4, (2, 3)).title is None


@pytest.mark.parametrize(
    ("events", "message"),
    [
        ([dict(token(), seq=2), dict(token(index=1), seq=2)], "events.1: seq 2 after seq 2: events must be in sequence order"),
        ([dict(token(), seq=3), dict(token(index=1), seq=2)], "events.1: seq 2 after seq 3: events must be in sequence order"),
        ([dict(token(), turn=None)], "events.0: a token event must name one of the exported turns"),
        ([dict(token(), turn=5)], "events.0: a token event must name one of the exported turns"),
        ([dict(token(), turn=3)], "events.0: a token event of user turn 3: tokens belong to assistant turns"),
        (
            [dict(token(index=1), seq=1), dict(token(index=1), seq=2)],
            "events.1: token 1 of turn 1 after token 1: a turn's tokens must be in order",
        ),
    ],
)
def test_event_order_and_ownership(events: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ExportError) as e:
        check(export(turns=[turn(), turn(id=3, role="user")], events=events), 4, (2, 3))
    assert str(e.value) == message


def test_the_token_limit_counts_every_token_event(monkeypatch: pytest.MonkeyPatch) -> None:
    from backend.worker import imports

    monkeypatch.setattr(imports, "MAX_TOKENS", 3)
    three = [dict(token(index=i), seq=i + 1) for i in range(3)]
    assert len(check(export(turns=[turn()], events=three), 4, (2, 3)).tokens[1]) == 3
    with pytest.raises(ExportError) as e:
        check(export(turns=[turn()], events=[*three, dict(token(index=3), seq=4)]), 4, (2, 3))
    assert str(e.value) == "events.3: more than 3 token events"


def test_a_token_events_extra_fields_must_be_plain_json() -> None:
    with pytest.raises(ExportError) as e:
        check(export(turns=[turn()], events=[token(note=float("inf"))]), 4, (2, 3))
    assert str(e.value).startswith("events.0.data: must be plain JSON with finite numbers (")
