"""The chat page's pure folds (issue 26): a change labelled against the controls in force before it when the turn's
start named no version, and a conversation that is busy while a turn is still queued. Hand-made event logs."""

from __future__ import annotations

from typing import Any

import pytest

from app.conversation import Conversation, apply_events
from app.live_charts import control_changes

BASE = {"cap_enabled": False, "cap_percentile": 75.0, "cap_layers": [21, 26], "steer_coefficient": 0.0}


def log(turn_start: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"seq": 1, "turn": None, "type": "session_created", "data": {"controls": BASE, "controls_version": 0}},
        {"seq": 2, "turn": None, "type": "controls", "data": {"controls": {**BASE, "steer_coefficient": 1.0}, "controls_version": 1}},
        {"seq": 3, "turn": 1, "type": "turn_created", "data": {"turn": 1, "role": "user", "content": "hi"}},
        {"seq": 4, "turn": 2, "type": "turn_created", "data": {"turn": 2, "role": "assistant", "variant": "single", "reply_to": 1}},
        {"seq": 5, "turn": 2, "type": "turn_start", "data": turn_start},
        {"seq": 6, "turn": None, "type": "controls", "data": {"controls": {**BASE, "steer_coefficient": 1.0, "cap_enabled": True},
                                                              "controls_version": 2}},
        {"seq": 7, "turn": 2, "type": "controls_applied", "data": {"turn": 2, "controls_version": 2, "from_token": 1}},
    ]  # fmt: skip


@pytest.mark.parametrize("turn_start", [{"turn": 2}, {"turn": 2, "controls_version": 1}])
def test_a_change_is_labelled_against_the_controls_in_force_before_it(turn_start: dict[str, Any]) -> None:
    # versions 0 (cap off), 1 (steering 1, cap off) and 2 (cap on): applied from token 1, the change from 1 to 2 is
    # "cap on", whether or not the turn's start named version 1 (without it, the latest version before 2 is in force)
    conv = apply_events(Conversation(), log(turn_start))
    reply = conv.exchanges[0].replies["single"]
    assert control_changes(conv, reply) == [(1, "cap on from token 1")]


def test_a_conversation_is_busy_while_a_turn_is_queued_or_running() -> None:
    events = log({"turn": 2})
    queued = apply_events(Conversation(), events[:4])
    assert queued.exchanges[0].replies["single"].status == "queued" and queued.busy
    running = apply_events(Conversation(), events)
    assert running.exchanges[0].replies["single"].status == "running" and running.busy
    done = apply_events(running, [{"seq": 8, "turn": 2, "type": "turn_end", "data": {"turn": 2, "status": "done"}}])
    assert not done.busy
    assert not Conversation().busy
