"""Rows that join and leave a running batch (:class:`backend.decode.batch.Batch`) each equal their single-row run:
the same greedy tokens (float32) and readouts (monitor and cap deltas to 1e-4), on tiny models of several
architectures, whenever they join, however long their prompts, with a control change mid-way."""

from __future__ import annotations

import pytest

from backend.decode.batch import Batch
from backend.errors import PersonaSpaceError
from tests.helpers.batch_oracle import Spec, fixed_steps, reference, run_batch
from tests.helpers.decode_oracle import STOP, assert_same, eager_reference
from tests.helpers.tiny import random_ids, tiny_model

# gemma3's tiny config keeps a 16-position sliding window: a batch's cache is longer (refused; test below)
ARCHS = ("llama", "gpt2", "gpt_neox", "qwen3", "phi3", "mistral")


@pytest.fixture(scope="module", params=ARCHS)
def model(request):  # type: ignore[no-untyped-def]
    return tiny_model(request.param)


def specs() -> list[Spec]:
    p = [random_ids(batch=1, length=n, seed=20 + n)[0].tolist() for n in (6, 11, 3, 8)]
    return [
        Spec(p[0], join_at=0, n=9, caps={1: 0.5, 3: 0.8}),
        Spec(p[1], join_at=3, n=7, steer=(1.0, [1])),  # longer than the batch so far: the others move right
        Spec(p[2], join_at=4, n=10, caps={2: 0.2}, change=(3, {2: 1.5, 3: 1.0})),
        Spec(p[3], join_at=12, n=5),  # after the first row has left
    ]


def test_rows_that_join_midway_equal_their_single_row_runs(model) -> None:  # type: ignore[no-untyped-def]
    rows = specs()
    batch = run_batch(model, rows)
    assert batch.rows == 0
    for s in rows:
        assert_same(reference(model, s), (s.tokens, s.readings, s.deltas), tol=1e-4)
    assert all(s.tokens for s in rows)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen3"])
def test_rows_on_fixed_shapes_equal_their_single_row_runs(arch: str) -> None:
    """The compiled steps' path (each step on a fixed rows x capacity shape, spare rows padding, the step's own
    cache written in place), here with eager stand-ins: every row still equals its single-row run, whether the
    batch is on a fixed shape (1 row on a 2-row shape, 3 rows on a 4-row one), eager (no shape fits) or moves
    between them, and when the steps become ready mid-way."""
    model = tiny_model(arch)
    for shapes, ready_at in (([(2, 32), (4, 32)], 0), ([(2, 16)], 0), ([(2, 32), (4, 32)], 6)):
        rows = specs()
        ran: list[tuple[int, int, bool]] = []
        run_batch(model, rows, fixed_steps(model, shapes), ready_at=ready_at, shapes=ran)
        for s in rows:
            assert_same(reference(model, s), (s.tokens, s.readings, s.deltas), tol=1e-4)
        fixed = {(r, c) for r, c, on in ran if on}
        assert fixed and fixed <= set(shapes)  # it did run on them
        if shapes == [(2, 16)] or ready_at:
            assert any(not on for _, _, on in ran)  # and eagerly where none fitted or none was ready


def test_a_compiled_step_that_fails_is_dropped_and_the_rows_go_on_without_it(llama, caplog) -> None:  # type: ignore[no-untyped-def]
    steps = fixed_steps(llama, [(2, 32), (4, 32)])

    def broken(**kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("the graph broke")

    steps[0].step.forward = broken  # the two-row step fails at its first use; the four-row one works
    rows = specs()
    ran: list[tuple[int, int, bool]] = []
    run_batch(llama, rows, steps, shapes=ran)
    for s in rows:
        assert_same(reference(llama, s), (s.tokens, s.readings, s.deltas), tol=1e-4)
    assert steps[0].error == "RuntimeError: the graph broke" and not steps[0].fits(1, 8)
    assert (2, 32, True) not in ran and (4, 32, True) in ran  # one or two rows went on the four-row step instead
    assert "the compiled step for 2 rows x 32 positions failed" in caplog.text


def test_a_row_alone_and_rows_joining_together(llama) -> None:  # type: ignore[no-untyped-def]
    p = [random_ids(batch=1, length=n, seed=40 + n)[0].tolist() for n in (5, 9, 7)]
    rows = [Spec(p[0], 0, 8), Spec(p[1], 2, 8, caps={1: 1.0}), Spec(p[2], 2, 8, steer=(-1.0, [0, 2]))]
    run_batch(llama, rows)
    for s in rows:
        assert_same(reference(llama, s), (s.tokens, s.readings, s.deltas), tol=1e-4)


def test_the_cache_holds_no_more_than_the_rows_can_reach(llama) -> None:  # type: ignore[no-untyped-def]
    batch = Batch(llama, pad_id=STOP, bucket=1)
    batch.join(random_ids(batch=1, length=12, seed=1)[0].tolist(), 4)
    batch.join(random_ids(batch=1, length=3, seed=2)[0].tolist(), 2)
    assert (batch.length, batch.decoder.capacity) == (12, 16)
    batch.step([5, 5])
    batch.leave([0])  # only the short row is left: its 4 positions, room for its last token
    assert (batch.rows, batch.length, batch.decoder.capacity) == (1, 4, 5)
    with pytest.raises(PersonaSpaceError, match="tokens for a batch of 1 rows"):
        batch.step([5, 5])
    batch.leave([0])
    assert batch.rows == 0 and batch.length == 0


def test_a_sliding_window_shorter_than_the_cache_is_refused() -> None:
    batch = Batch(tiny_model("gemma3"), pad_id=STOP, bucket=64)
    with pytest.raises(PersonaSpaceError, match="sliding window"):
        batch.join(random_ids(batch=1, length=5, seed=3)[0].tolist(), 20)


def test_a_row_whose_limit_is_raised_goes_on_as_its_longer_run(llama) -> None:  # type: ignore[no-untyped-def]
    prompt = random_ids(batch=1, length=6, seed=8)[0].tolist()
    other = random_ids(batch=1, length=4, seed=9)[0].tolist()
    expected, _, _ = eager_reference(llama, prompt, 9)
    batch = Batch(llama, pad_id=STOP, bucket=1)
    _, first = batch.join(prompt, 3)
    _, second = batch.join(other, 2)
    logits, tokens = [first, second], []
    for index in range(9):
        if index == 2:
            batch.leave([1])  # the other row is done
            logits = logits[:1]
        if index == 3:
            batch.extend(0, 6)  # its limit rose from 3 to 9 tokens
            assert batch.decoder.capacity >= batch.length + 6
        token = int(logits[0].argmax())
        tokens.append(token)
        fed = [token] + ([5] if batch.rows == 2 else [])
        logits = list(batch.step(fed))
    assert tokens == expected
    with pytest.raises(PersonaSpaceError, match="past its token budget"):
        batch.step([5])
