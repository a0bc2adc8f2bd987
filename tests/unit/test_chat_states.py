"""The live chat never loses an action silently (issue #23), headless (AppTest) against the scripted client: a
refused send stays on screen with its text in the box, a blank message makes no turn, the reply states (queued with
the turns ahead, writing with its rate and time left, cut at the limit with Continue, stopped), Stop apart from
cancelling the queued messages, controls that follow the worker, and the empty chat's first-use hint."""

from __future__ import annotations

from typing import Any

from app.chat_states import CONTINUE_PROMPT, EXAMPLES, MAX_MESSAGE_CHARS, refusal, state_line, token_rate
from app.client import WorkerUnavailable
from app.conversation import Conversation, apply_events
from app.live_charts import shown_exchange
from tests.helpers.app_pages import page, texts
from tests.helpers.fake_client import FakeClient


def posted(fake: FakeClient) -> list[str]:
    return [c[1][1] for c in fake.calls if c[0] == "post_message"]


def box(at: Any) -> str:
    """The text the chat box is told to show (what the page put back after a refusal)."""
    proto = at.chat_input(key="chat_input").proto
    return str(proto.value) if proto.set_value else ""


def errors(at: Any) -> str:
    return "\n".join(e.value for e in at.error)


def captions(at: Any) -> list[str]:
    return [c.value for c in at.caption]


def test_the_limit_in_the_page_is_the_workers() -> None:
    from backend.worker.schemas import MAX_MESSAGE_CHARS as WORKER

    assert MAX_MESSAGE_CHARS == WORKER


def test_a_message_over_the_limit_is_refused_visibly_and_stays_in_the_box(tiny_space) -> None:  # type: ignore[no-untyped-def]
    fake = FakeClient()
    at = page("chat", fake).run()
    long = "x" * 9000
    at.chat_input(key="chat_input").set_value(long).run()
    assert not at.exception
    assert posted(fake) == []  # refused in the page: no request, no turn
    assert "9,000 characters" in errors(at) and "8,000" in errors(at) and box(at) == long
    at.run()  # it lasts: a later run (the live fragment's, another widget's) does not wipe it
    assert "9,000 characters" in errors(at)
    at.chat_input(key="chat_input").set_value("Shorter now.").run()  # a message that goes out clears it
    assert posted(fake) == ["Shorter now."] and "9,000" not in errors(at)


def test_a_send_the_worker_refuses_stays_on_screen_with_its_text(tiny_space) -> None:  # type: ignore[no-untyped-def]
    class Down(FakeClient):
        def post_message(self, sid: str, content: str, compare: bool = False) -> dict[str, Any]:
            raise WorkerUnavailable("the worker at http://127.0.0.1:1 is not reachable (ConnectError); start it with `make run`")

    at = page("chat", Down()).run()
    at.chat_input(key="chat_input").set_value("Hello?").run()
    assert "Not sent: the worker at http://127.0.0.1:1 is not reachable" in errors(at) and box(at) == "Hello?"
    at.run()
    assert "Not sent" in errors(at)
    at.button(key="chat_dismiss_send_error").click().run()
    assert "Not sent" not in errors(at)


def test_a_blank_message_makes_no_turn(tiny_space) -> None:  # type: ignore[no-untyped-def]
    fake = FakeClient()
    at = page("chat", fake).run()
    at.chat_input(key="chat_input").set_value("  \n\t ").run()
    at.run()
    assert posted(fake) == [] and "blank message was not sent" in errors(at)
    assert not at.chat_message  # no empty user bubble
    assert refusal("") and refusal(" \u3000\n") and refusal("hi") is None and refusal("x" * MAX_MESSAGE_CHARS) is None


def test_reply_states_queued_writing_cut_then_continue(tiny_space) -> None:  # type: ignore[no-untyped-def]
    fake = FakeClient(hold=True)
    at = page("chat", fake).run()
    sid = at.session_state["chat_state"]["sid"]
    at.chat_input(key="chat_input").set_value("First").run()
    at.chat_input(key="chat_input").set_value("Second").run()
    at.run()
    assert captions(at)[-2:] == ["queued: next to run", "queued: 1 turn ahead of it"]
    fake.begin(sid, tokens=8)  # the fake writes 10 tokens/s; the session's limit is 32 tokens
    at.run()
    writing = next(c for c in captions(at) if c.startswith("writing"))
    assert writing == "writing: 8 tokens · 10.0 tokens/s · at most 2.4 s left (the 32-token limit)"
    assert captions(at)[-1] == "queued: 1 turn ahead of it"
    fake.begin(sid, tokens=24)
    fake.finish(sid, reason="max_new_tokens reached")
    at.run()
    assert captions(at)[-1] == "queued: next to run"  # its position now, read from the worker
    assert "(cut at the token limit)" in texts(at)
    assert any(c.startswith("projection 1.00") and "cut at the 32-token limit" in c for c in captions(at))
    assert not [b for b in at.button if b.key == "chat_continue"]  # not while the next message waits
    fake.begin(sid, tokens=3)
    fake.finish(sid)
    at.run()
    assert not [b for b in at.button if b.key == "chat_continue"]  # the newest reply ended by itself
    at.chat_input(key="chat_input").set_value("Third").run()
    fake.begin(sid, tokens=32)
    fake.finish(sid, reason="max_new_tokens reached")
    at.run()
    at.button(key="chat_continue").click().run()
    assert posted(fake)[-1] == CONTINUE_PROMPT and not at.exception


def test_stop_stops_only_the_reply_being_written_and_says_so(tiny_space) -> None:  # type: ignore[no-untyped-def]
    fake = FakeClient(hold=True)
    at = page("chat", fake).run()
    sid = at.session_state["chat_state"]["sid"]
    at.chat_input(key="chat_input").set_value("Tell me a long story").run()
    at.chat_input(key="chat_input").set_value("And then another").run()
    fake.begin(sid, tokens=6)
    at.run()
    assert at.button(key="chat_cancel").label == "Cancel 1 queued message"
    at.button(key="chat_stop").click().run()
    assert ("stop", (sid, "running")) in fake.calls
    info = "\n".join(i.value for i in at.sidebar.info)
    assert "Stopped the reply being written" in info and "1 queued message will still run" in info
    at.run()
    assert "(stopped)" in texts(at) and any(c.endswith("stopped by you after 6 tokens") for c in captions(at))
    assert captions(at)[-1] == "queued: next to run"  # the queued message was not dropped
    assert at.get("plotly_chart")  # the per-token chart still draws the stopped reply
    at.button(key="chat_cancel").click().run()
    assert ("stop", (sid, "queued")) in fake.calls and "Cancelled 1 queued reply" in "\n".join(i.value for i in at.sidebar.info)
    at.run()
    assert "cancelled before it started" in captions(at) and not [b for b in at.button if b.key == "chat_cancel"]


def test_the_per_token_chart_keeps_the_newest_reply_that_has_tokens() -> None:
    def created(seq: int, turn: int, role: str, reply_to: int | None = None) -> dict[str, Any]:
        data = {"turn": turn, "role": role, "content": "hi", "variant": "single", "reply_to": reply_to}
        return {"seq": seq, "turn": turn, "type": "turn_created", "data": data}

    log = [created(1, 1, "user"), created(2, 2, "assistant", 1), created(3, 3, "user"), created(4, 4, "assistant", 3)]
    log.append({"seq": 5, "turn": 2, "type": "token", "data": {"turn": 2, "index": 0, "text": "a", "projection": 1.0}})
    log.append({"seq": 6, "turn": 4, "type": "turn_end", "data": {"turn": 4, "status": "stopped", "n_tokens": 0}})
    conv = apply_events(Conversation(), log)
    shown = shown_exchange(conv)
    assert shown is not None and shown.user_turn == 1  # not the cancelled one after it, which never started


def test_rate_and_state_lines_on_data() -> None:
    conv = Conversation(controls={0: {"max_new_tokens": 100}})
    log = [
        {"seq": 1, "turn": 1, "type": "turn_created", "data": {"turn": 1, "role": "user", "content": "q"}},
        {
            "seq": 2,
            "turn": 2,
            "type": "turn_created",
            "data": {"turn": 2, "role": "assistant", "variant": "single", "reply_to": 1},
        },
        {"seq": 3, "turn": 2, "type": "queued", "data": {"turn": 2, "queue_position": 3}},
    ]
    apply_events(conv, log)
    reply = conv.reply(2)
    assert reply is not None and state_line(conv, reply) == "queued: 3 turns ahead of it"
    apply_events(conv, [{"seq": 4, "turn": 2, "type": "turn_start", "data": {"turn": 2, "controls_version": 0}}])
    assert state_line(conv, reply) == "starting"
    tokens = [{"seq": 5 + i, "turn": 2, "type": "token", "time": 50.0 + 0.25 * i, "data": {"turn": 2, "index": i, "text": "x"}}
              for i in range(40)]  # fmt: skip
    apply_events(conv, tokens)
    assert token_rate(reply) == 4.0  # over the newest tokens
    assert state_line(conv, reply) == "writing: 40 tokens · 4.0 tokens/s · at most 15 s left (the 100-token limit)"
    end = {"seq": 99, "turn": 2, "type": "turn_end", "data": {"turn": 2, "status": "error", "error": "the database is gone"}}
    apply_events(conv, [end])
    assert state_line(conv, reply) == "failed: the database is gone"


def test_a_control_changed_elsewhere_shows_here(tiny_space) -> None:  # type: ignore[no-untyped-def]
    fake = FakeClient()
    at = page("chat", fake).run()
    sid = at.session_state["chat_state"]["sid"]
    assert at.toggle(key="chat_cap_on").value is False
    fake.patch_controls(sid, cap_enabled=True, cap_percentile=90.0)  # another tab
    at.run()
    assert at.toggle(key="chat_cap_on").value is True and at.slider(key="chat_cap_pct").value == 90.0
    patches = [c for c in fake.calls if c[0] == "patch_controls"]
    assert len(patches) == 1  # following it sent nothing back


def test_a_control_change_whose_callback_never_ran_still_reaches_the_worker(tiny_space) -> None:  # type: ignore[no-untyped-def]
    fake = FakeClient()
    at = page("chat", fake).run()
    sid = at.session_state["chat_state"]["sid"]
    at.session_state["chat_cap_pct"] = 84.0  # the widget holds a value the worker never got
    at.run()
    assert fake.sessions[sid]["controls"]["cap_percentile"] == 84.0 and at.slider(key="chat_cap_pct").value == 84.0


def test_a_refused_control_change_lasts_and_the_slider_shows_the_workers_value(tiny_space) -> None:  # type: ignore[no-untyped-def]
    fake = FakeClient(repetition_penalty=False)
    at = page("chat", fake).run()
    at.slider(key="chat_max").set_value(64).run()

    def refuse(sid: str, **changes: Any) -> dict[str, Any]:
        from app.client import WorkerError

        raise WorkerError("invalid request: max_new_tokens: the conversation would not fit")

    fake.patch_controls = refuse  # type: ignore[method-assign]
    at.slider(key="chat_max").set_value(512).run()
    assert "Not applied: max_new_tokens 512" in errors(at) and at.slider(key="chat_max").value == 64
    at.run()
    assert "Not applied" in errors(at)


def test_the_empty_chat_hints_what_to_try_and_what_up_and_down_mean(tiny_space) -> None:  # type: ignore[no-untyped-def]
    fake = FakeClient()
    at = page("chat", fake).run()
    hint = at.info[0].value
    assert "**up** means" in hint and "**down** means" in hint
    examples = [b for b in at.button if b.key and b.key.startswith("chat_example_")]
    assert [b.label for b in examples] == list(EXAMPLES)
    examples[1].click().run()
    at.run()
    assert posted(fake) == [EXAMPLES[1]] and not [i for i in at.info if "New here?" in i.value]
