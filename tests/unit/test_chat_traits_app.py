"""The chat page with a space that has traits (headless AppTest, scripted worker client): a finished reply reads as
its traits ("more dramatic; less grounded", the z scores on hover), and the steering control steers along a chosen
trait or back along the axis. Without traits the page shows neither."""

from __future__ import annotations

import pytest

from app.turn_traits import AXIS, steer_options, trait_line, trait_numbers
from tests.helpers.app_pages import page
from tests.helpers.fake_client import FakeClient
from tests.helpers.trait_space import TRAITS, with_traits

TURN_TRAITS = {
    "layer": 2,
    "top": [{"name": "dramatic", "z": 1.8, "projection": 0.41}, {"name": "playful", "z": 0.2, "projection": 0.1}],
    "bottom": [{"name": "well_grounded", "z": -1.2, "projection": -0.3}],
}


def test_trait_words_and_numbers() -> None:
    assert trait_line(TURN_TRAITS) == "more dramatic; less well grounded"  # |z| < 0.5 is not worth a word
    assert trait_line({"top": [], "bottom": []}) is None and trait_line(None) is None
    numbers = trait_numbers(TURN_TRAITS)
    assert numbers is not None and "dramatic: z +1.80" in numbers and "well_grounded: z -1.20" in numbers
    assert steer_options({"trait_axes": [{"name": "dramatic"}]}) == [AXIS, "dramatic"]
    assert steer_options({"trait_axes": []}) == [AXIS] == steer_options({})


@pytest.fixture
def traited_space(tiny_world, tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    path = with_traits(tiny_world[1], tmp_path / "space")
    monkeypatch.setenv("PERSONA_SPACE_SPACE", str(path))
    return path


def test_a_reply_shows_its_traits_and_the_control_steers_along_a_trait(traited_space) -> None:  # type: ignore[no-untyped-def]
    fake = FakeClient(turn_traits=TURN_TRAITS)
    at = page("chat", fake).run()
    at.chat_input(key="chat_input").set_value("Who are you?").run()
    at.run()
    assert not at.exception, at.exception
    shown = [c for c in at.caption if c.value.startswith("traits:")]
    assert [c.value for c in shown] == ["traits: more dramatic; less well grounded"]
    assert "dramatic: z +1.80" in (shown[0].help or "")
    select = at.selectbox(key="chat_steer_trait")
    assert select.options == [AXIS, *TRAITS] and select.value == AXIS
    select.set_value("dramatic").run()
    sid = at.session_state["chat_state"]["sid"]
    assert fake.sessions[sid]["controls"]["steer_trait"] == "dramatic"
    assert "toward dramatic" in at.slider(key="chat_steer").label
    at.selectbox(key="chat_steer_trait").set_value(AXIS).run()
    assert ("patch_controls", {"clear_steer_trait": True}) in fake.calls
    assert fake.sessions[sid]["controls"]["steer_trait"] is None and not at.exception


def test_without_traits_the_page_shows_no_trait_control_or_words(tiny_space) -> None:  # type: ignore[no-untyped-def]
    fake = FakeClient()
    at = page("chat", fake).run()
    at.chat_input(key="chat_input").set_value("Who are you?").run()
    at.run()
    assert not at.exception, at.exception
    assert not [s for s in at.selectbox if s.key == "chat_steer_trait"]
    assert not [c for c in at.caption if c.value.startswith("traits:")]
    assert "toward the Assistant" in at.slider(key="chat_steer").label
