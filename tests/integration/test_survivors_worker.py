"""Engine features no test drove (issue 26), through a real worker process on the tiny model: the steering sign,
the repetition penalty over the reply only, and the history a single turn takes after a comparison.

Oracles: the algebra of steering (the prompt's reading at the steered layer moves by exactly ``c`` times one
step, in the axis's direction), and a brute-force greedy decode written here (a full forward pass per token, no
cache, the penalty applied by hand) over the prompt the conversation should give."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from backend.models.chat import encode_prompt


def tokens_of(events: list[dict[str, Any]], turn: int) -> list[dict[str, Any]]:
    return [e["data"] for e in events if e["type"] == "token" and e["turn"] == turn]


def end_of(events: list[dict[str, Any]], turn: int) -> dict[str, Any]:
    return next(e["data"] for e in events if e["type"] == "turn_end" and e["turn"] == turn)


@pytest.fixture(scope="module")
def loaded(tiny_world):  # type: ignore[no-untyped-def]
    from backend.models.loading import load_model

    return load_model(tiny_world[0])


def greedy(loaded: Any, prompt: list[int], n: int, penalty: float = 1.0, hook: Callable[[], Any] | None = None) -> list[int]:
    """Brute-force greedy decoding: one full forward pass per token; the penalty divides a positive logit (and
    multiplies a negative one) of each token already in the reply, and no other token's."""
    ids, reply = list(prompt), []
    handle = hook() if hook is not None else None
    try:
        for _ in range(n):
            with torch.no_grad():
                logits = loaded.model(torch.tensor([ids])).logits[0, -1].double()
            for t in set(reply):
                logits[t] = logits[t] * penalty if logits[t] < 0 else logits[t] / penalty
            token = int(torch.argmax(logits))
            reply.append(token)
            ids.append(token)
    finally:
        if handle is not None:
            handle.remove()
    return reply


def test_steering_moves_the_prompts_reading_by_c_steps_toward_the_assistant(worker, tiny_world) -> None:  # type: ignore[no-untyped-def]
    from backend.store.space import load_space

    space = load_space(tiny_world[1])
    step = float(space.tensors["activation_norm"][space.target_layer])  # coefficient 1 = the layer's typical norm
    readings = {}
    for c in (-1.0, 0.0, 1.0, 2.0):
        sid = worker.session(controls={"max_new_tokens": 1, "steer_coefficient": c, "cap_enabled": False})
        turn = worker.say(sid, "Who are you?")["assistant_turns"][0]
        worker.wait_idle(sid)
        readings[c] = end_of(worker.events(sid), turn)["prompt_projection"]
    # the steering vector lies along the unit axis, which points toward the Assistant: coefficient c adds c steps to
    # the reading at the steered layer (the target layer by default, the monitored one); rounded to 5 decimals
    assert step > 0
    for c in (-1.0, 1.0, 2.0):
        assert readings[c] - readings[0.0] == pytest.approx(c * step, abs=1e-4), (c, readings)


def test_the_repetition_penalty_counts_the_reply_only(worker, loaded) -> None:  # type: ignore[no-untyped-def]
    def prompt(content: str) -> list[int]:
        return encode_prompt(loaded.tokenizer, None, [{"role": "user", "content": content}])

    def first(ids: list[int]) -> torch.Tensor:
        with torch.no_grad():
            return loaded.model(torch.tensor([ids])).logits[0, -1]

    # a message whose reply would start with one of its own tokens: the worker must not penalise it (the reply is
    # empty), while penalising the prompt too would pick another token
    base = "Tell me a joke."
    candidates = [f"{base} {loaded.tokenizer.decode([t])}" for t in torch.topk(first(prompt(base)), 40).indices.tolist()]
    content = next((c for c in candidates if int(torch.argmax(first(prompt(c)))) in prompt(c)), None)
    assert content is not None, "no message of the search repeats its own token first"
    n, penalty = 16, 2.0
    sid = worker.session(controls={"max_new_tokens": n, "repetition_penalty": penalty, "cap_enabled": False})
    turn = worker.say(sid, content)["assistant_turns"][0]
    worker.wait_idle(sid)
    served = [t["token_id"] for t in tokens_of(worker.events(sid), turn)]
    assert served and served[0] in prompt(content)
    assert served == greedy(loaded, prompt(content), len(served), penalty)


@pytest.mark.parametrize("cap_on", [True, False])
def test_a_single_turn_after_a_comparison_continues_the_column_of_the_sessions_cap(worker, loaded, tiny_world, cap_on) -> None:  # type: ignore[no-untyped-def]
    from backend.hooks.rows import RowControls
    from backend.store.space import load_space

    controls = {"max_new_tokens": 12, "cap_enabled": cap_on, "cap_percentile": 99.0, "repetition_penalty": 1.0}
    sid = worker.session(controls=controls)
    capped_turn, uncapped_turn = worker.say(sid, "Who are you?", compare=True)["assistant_turns"]
    worker.wait_idle(sid)
    turns = {t["id"]: t for t in worker.client.get(f"/sessions/{sid}").json()["turns"]}
    capped, uncapped = turns[capped_turn]["content"], turns[uncapped_turn]["content"]
    assert capped != uncapped  # the cap changed the reply: the two histories differ
    single = worker.say(sid, "And then?")["assistant_turns"][0]
    worker.wait_idle(sid)
    events = worker.events(sid)
    served = tokens_of(events, single)
    assert served and all(t["cap_on"] is cap_on for t in served)

    def prompt(reply: str) -> list[int]:
        messages = [
            {"role": "user", "content": "Who are you?"},
            {"role": "assistant", "content": reply},
            {"role": "user", "content": "And then?"},
        ]
        return encode_prompt(loaded.tokenizer, None, messages)

    def cap() -> Any:  # the floors the worker reported for this turn, at its cap layers
        space = load_space(tiny_world[1])
        start, stop = served[0]["cap_layers"]
        rows = RowControls(
            1, space.tensors["axis"].shape[0], space.tensors["axis"].shape[1], cap_directions=space.tensors["axis"]
        )
        rows.set_cap(0, dict(zip(range(start, stop), served[0]["tau"], strict=True)))
        return rows.attach(loaded.model, loaded.info.layers_path)

    own = capped if cap_on else uncapped
    other = uncapped if cap_on else capped
    assert end_of(events, single)["prompt_tokens"] == len(prompt(own))
    ids = [t["token_id"] for t in served]
    assert ids == greedy(loaded, prompt(own), len(ids), hook=cap if cap_on else None)
    assert prompt(own) != prompt(other)
