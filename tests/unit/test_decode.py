"""The decode engine against the eager path it replaces: same greedy tokens, same readouts, row by row."""

from __future__ import annotations

import math
import os

import pytest
import torch

from backend.decode.engine import Decoder, generate_rows
from backend.errors import InterventionError
from backend.hooks.rows import RowControls
from backend.models.layers import block_output, find_decoder_layers
from tests.helpers.decode_oracle import HIDDEN, MONITOR, N_LAYERS, STOP, assert_same, eager_reference, engine_rows, world
from tests.helpers.tiny import random_ids, tiny_model

ARCHS = ("llama", "gpt2", "gemma3", "gpt_neox", "qwen3", "phi3")


@pytest.fixture(scope="module", params=ARCHS)
def model(request):  # type: ignore[no-untyped-def]
    return tiny_model(request.param)


def test_plain_equals_hf_generate(model) -> None:  # type: ignore[no-untyped-def]
    ids = random_ids(batch=1, length=9)
    with torch.inference_mode():
        ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False, pad_token_id=STOP)
    expected = ref[0, 9:].tolist()
    expected = expected[: expected.index(STOP)] if STOP in expected else expected
    assert generate_rows(Decoder(model, pad_id=STOP), ids.tolist(), 12, stop_ids={STOP}) == [expected]


CASES = {
    "monitor": dict(caps=None),
    "capped": dict(caps={1: 0.5, 2: 0.0, 3: 1.0}),
    "steered": dict(caps=None, steer=(-1.5, [1, 2])),
    "capped_and_steered": dict(caps={2: 0.3}, steer=(1.0, [0])),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_single_row_equals_the_eager_hooks(model, case) -> None:  # type: ignore[no-untyped-def]
    spec = CASES[case]
    prompt = random_ids(batch=1, length=7, seed=5)[0].tolist()
    ref = eager_reference(model, prompt, 10, caps=spec["caps"], steer=spec.get("steer"))
    got = engine_rows(model, [prompt], 10, [spec["caps"]], [spec.get("steer")])
    assert_same(ref, tuple(x[0] for x in got))


def test_batched_rows_each_equal_their_single_run_with_a_mid_stream_change(model) -> None:  # type: ignore[no-untyped-def]
    long_prompt = random_ids(batch=1, length=9, seed=7)[0].tolist()
    short_prompt = long_prompt[3:]  # left padding on row 1
    caps = [{1: 0.5, 3: 0.8}, None, {2: 0.2}]
    steers = [None, (1.0, [1]), None]
    prompts = [long_prompt, short_prompt, long_prompt]
    change = (4, [{1: 2.0, 3: 2.0}, None, None])  # from token 4: row 0's floor rises, row 2's cap goes off
    got = engine_rows(model, prompts, 10, caps, steers, change=change)
    for i in range(3):
        ref = eager_reference(model, prompts[i], 10, caps=caps[i], steer=steers[i], change=(4, change[1][i] or {}))
        assert_same(ref, tuple(x[i] for x in got))


def test_dynamic_cache_fallback_is_the_same(llama) -> None:  # type: ignore[no-untyped-def]
    prompts = [random_ids(batch=1, length=8, seed=2)[0].tolist(), random_ids(batch=1, length=5, seed=4)[0].tolist()]
    static = engine_rows(llama, prompts, 8, [{2: 0.5}, None])
    dynamic = engine_rows(llama, prompts, 8, [{2: 0.5}, None], static=False)
    assert static[0] == dynamic[0]
    for mine, theirs in zip(static[1], dynamic[1], strict=True):
        assert mine == pytest.approx(theirs, abs=1e-5)


def test_a_reused_static_cache_gives_the_same_run(llama) -> None:  # type: ignore[no-untyped-def]
    """A compiled step needs one cache object per shape, reset between turns: a reused cache must leak nothing."""
    pool: dict = {}
    first, second = random_ids(batch=1, length=9, seed=11)[0].tolist(), random_ids(batch=1, length=5, seed=12)[0].tolist()
    fresh = [generate_rows(Decoder(llama, pad_id=STOP), [p], 10, stop_ids={STOP}) for p in (first, second)]
    pooled = [
        generate_rows(Decoder(llama, pad_id=STOP, cache_pool=pool, bucket=64), [p], 10, stop_ids={STOP}) for p in (first, second)
    ]
    assert pooled == fresh
    assert list(pool) == [(1, 64)]


def test_cap_floor_holds_and_uncapped_rows_are_bit_identical(llama) -> None:  # type: ignore[no-untyped-def]
    axis, _ = world()
    ids = random_ids(batch=3, length=6, seed=9)
    seen: list[torch.Tensor] = []
    with torch.inference_mode():
        plain = llama(ids).logits
        controls = RowControls(3, N_LAYERS, HIDDEN, cap_directions=axis)
        controls.set_cap(0, {1: 5.0, 2: 5.0})
        controls.set_cap(2, {1: -math.inf})
        with controls.attach(llama):
            h = find_decoder_layers(llama)[2].register_forward_hook(lambda m, a, o: seen.append(block_output(o).clone()))
            try:
                capped = llama(ids).logits
            finally:
                h.remove()
    u = axis[2] / axis[2].norm()
    assert bool(((seen[0][0] @ u) >= 5.0 - 1e-4).all())
    assert torch.equal(capped[1:], plain[1:])
    assert not torch.equal(capped[0], plain[0])


def test_row_controls_validate() -> None:
    axis, _ = world()
    controls = RowControls(2, N_LAYERS, HIDDEN, cap_directions=axis, layers=[1, 2])
    with pytest.raises(InterventionError, match="row 2 is out of range"):
        controls.set_cap(2, {1: 0.0})
    with pytest.raises(InterventionError, match="have no hooks"):
        controls.set_cap(0, {3: 0.0})
    with pytest.raises(InterventionError, match="finite number or -inf"):
        controls.set_cap(0, {1: math.nan})
    with pytest.raises(InterventionError, match="no steering vectors"):
        controls.set_steer(0, 1.0, [1])
    with pytest.raises(InterventionError, match=r"must be \(4, 32\)"):
        RowControls(1, N_LAYERS, HIDDEN, cap_directions=axis[:2])


def test_repetition_penalty_is_hf_semantics_over_the_reply() -> None:
    from transformers import RepetitionPenaltyLogitsProcessor

    from backend.maths.sampling import choose_token, repetition_penalty

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, generator=g) * 3
    reply = [3, 7, 7, 11, 42]
    expected = RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor([reply]), logits[None].clone())[0]
    assert torch.equal(repetition_penalty(logits, reply, 1.3), expected)
    assert torch.equal(repetition_penalty(logits, reply, 1.0), logits)
    # greedy too: the best token, already said, loses to the runner-up once penalised
    scores = torch.zeros(10)
    scores[4], scores[6] = 2.0, 1.9
    assert choose_token(scores, greedy=True, temperature=1.0, top_p=1.0, penalty=1.0, previous=[4]) == 4
    assert choose_token(scores, greedy=True, temperature=1.0, top_p=1.0, penalty=1.15, previous=[4]) == 6
    with pytest.raises(Exception, match=r"repetition_penalty must be in \[1, 2\]"):
        repetition_penalty(logits, reply, 0.5)


def test_batched_top_p_sampling_keeps_each_rows_nucleus() -> None:
    """`sample_rows` (the builder's sampler) draws from each row's top-p prefix only, including rows whose nucleus
    is wider than the fast top-256 path; one row draws exactly what the worker's `choose_token` draws."""
    from backend.maths.sampling import choose_token, sample_rows

    vocab = 1000
    logits = torch.full((3, vocab), -30.0)
    logits[0, [5, 9, 700]] = torch.log(torch.tensor([0.5, 0.3, 0.2]))  # top_p 0.75 keeps 5 and 9
    logits[1, 42] = 0.0  # one token holds everything
    logits[2] = 0.0  # flat: the nucleus is 750 tokens, beyond the top 256
    g = torch.Generator().manual_seed(0)
    drawn: list[set[int]] = [set(), set(), set()]
    for _ in range(400):
        for row, token in enumerate(sample_rows(logits, temperature=1.0, top_p=0.75, generator=g)):
            drawn[row].add(token)
    assert drawn[0] == {5, 9} and drawn[1] == {42}
    assert len(drawn[2]) > 256
    a, b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    row = torch.randn(vocab, generator=torch.Generator().manual_seed(1)) * 4
    for _ in range(50):
        assert sample_rows(row[None], temperature=0.7, top_p=0.9, generator=a) == [
            choose_token(row, greedy=False, temperature=0.7, top_p=0.9, generator=b)
        ]


def test_repetition_penalty_control_is_validated() -> None:
    from pydantic import ValidationError

    from backend.worker.schemas import Controls, ControlsPatch

    assert Controls().repetition_penalty == 1.15
    for bad in (0.9, 2.5, float("nan")):
        with pytest.raises(ValidationError):
            Controls(repetition_penalty=bad)
        with pytest.raises(ValidationError):
            ControlsPatch(repetition_penalty=bad)


@pytest.mark.skipif(
    os.environ.get("PERSONA_SPACE_COMPILE_TESTS") != "1", reason="compiling takes minutes: set PERSONA_SPACE_COMPILE_TESTS=1"
)
@pytest.mark.timeout(900)
def test_compiled_step_equals_eager_with_a_mid_stream_change(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from backend.decode.engine import CompiledStep

    model = tiny_model("llama")
    axis, vectors = world()
    prompts = [random_ids(batch=1, length=9, seed=7)[0].tolist(), random_ids(batch=1, length=6, seed=8)[0].tolist()]

    def run(step):  # type: ignore[no-untyped-def]
        controls = RowControls(2, N_LAYERS, HIDDEN, cap_directions=axis, steer_vectors=vectors, monitor=(MONITOR, axis[MONITOR]))
        controls.set_cap(0, {1: 0.5, 2: 0.5})
        readings: list[list[float]] = []

        def on_step(index, fed, r):  # type: ignore[no-untyped-def]
            readings.append(r.monitor.tolist())
            if index == 3:  # live changes: no retrace, applied from the next token
                controls.set_cap(0, {1: 2.0})
                controls.set_steer(1, 1.5, [2])

        decoder = Decoder(model, controls, pad_id=STOP, step_forward=step)
        return generate_rows(decoder, prompts, 10, stop_ids={STOP}, on_step=on_step), readings

    compiled = CompiledStep(model, lambda forward: None, cache_dir=str(tmp_path)).start()
    compiled.ready.wait()
    assert compiled.error is None
    eager_tokens, eager_readings = run(None)
    tokens, readings = run(compiled.forward)
    assert tokens == eager_tokens
    for mine, theirs in zip(readings, eager_readings, strict=True):
        assert mine == pytest.approx(theirs, abs=1e-5)


def test_top_p_fast_path_draws_what_a_full_sort_draws() -> None:
    from backend.maths.sampling import choose_token

    def full_sort(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
        probs = torch.softmax(logits / temperature, dim=-1)
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < top_p
        sorted_probs = torch.where(keep, sorted_probs, torch.zeros_like(sorted_probs))
        return int(order[torch.multinomial(sorted_probs / sorted_probs.sum(), 1, generator=generator)])

    g = torch.Generator().manual_seed(0)
    for seed in range(200):
        scale = (0.5, 3.0, 8.0)[seed % 3]  # flat (the slow path) to peaked (the fast path)
        logits = torch.randn(2000, generator=g) * scale
        expected = full_sort(logits, 0.7, 0.9, torch.Generator().manual_seed(seed))
        got = choose_token(logits, greedy=False, temperature=0.7, top_p=0.9, generator=torch.Generator().manual_seed(seed))
        assert got == expected
