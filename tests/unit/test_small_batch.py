"""Few-row linear products as ``W @ x^T``: the same numbers as ``F.linear``, the same greedy tokens, undone cleanly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from backend.decode.engine import Decoder, generate_rows
from backend.kernels import small_batch
from tests.helpers.tiny import random_ids, tiny_model


@pytest.mark.parametrize("rows", [1, 2, 3, 8, 9, 40])
@pytest.mark.parametrize("bias", [False, True])
def test_linear_is_f_linear(rows: int, bias: bool) -> None:
    g = torch.Generator().manual_seed(rows)
    w = torch.randn(48, 24, generator=g)
    b = torch.randn(48, generator=g) if bias else None
    x = torch.randn(rows, 1, 24, generator=g)
    got = small_batch.linear(x, w, b)
    assert got.shape == (rows, 1, 48)
    torch.testing.assert_close(got, F.linear(x, w, b), rtol=1e-5, atol=1e-5)


def test_a_transposed_input_gives_the_same_product() -> None:
    """The activation a previous small-batch product returns is a transposed view: the product must not care."""
    g = torch.Generator().manual_seed(1)
    w, x = torch.randn(40, 16, generator=g), torch.randn(16, 3, generator=g).t()  # (3, 16), column-major
    assert not x.is_contiguous()
    torch.testing.assert_close(small_batch.linear(x, w), F.linear(x, w), rtol=1e-5, atol=1e-5)


def test_gradients_other_dtypes_and_many_rows_keep_f_linear_exactly() -> None:
    g = torch.Generator().manual_seed(2)
    w = torch.randn(8, 4, generator=g, requires_grad=True)
    x = torch.randn(2, 4, generator=g)
    out = small_batch.linear(x, w)
    out.sum().backward()  # the autograd path is F.linear's own
    assert w.grad is not None and torch.equal(out, F.linear(x, w))
    wb, xb = w.detach().bfloat16(), x.bfloat16()
    assert torch.equal(small_batch.linear(xb, wb), F.linear(xb, wb))
    many = torch.randn(small_batch.MAX_ROWS + 1, 4, generator=g)
    assert torch.equal(small_batch.linear(many, w.detach()), F.linear(many, w.detach()))


def test_install_is_idempotent_and_plain_undoes_it() -> None:
    model = tiny_model("llama")
    ids = random_ids(1, 5, seed=4)
    with torch.inference_mode():
        before = model(input_ids=ids[:, :1]).logits
    first, again = small_batch.install(model), small_batch.install(model)
    assert first == sum(isinstance(m, torch.nn.Linear) for m in model.modules()) and again == 0
    assert small_batch.installed(model)
    with torch.inference_mode():
        patched = model(input_ids=ids[:, :1]).logits
        with small_batch.plain(model):
            assert not small_batch.installed(model)
            unpatched = model(input_ids=ids[:, :1]).logits
    assert small_batch.installed(model)
    torch.testing.assert_close(patched, before, rtol=1e-5, atol=1e-5)
    assert torch.equal(unpatched, before)
    small_batch.remove(model)
    assert not small_batch.installed(model)


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gpt_neox"])
def test_greedy_tokens_are_the_same_with_and_without(arch: str) -> None:
    model = tiny_model(arch)
    prompts = [random_ids(1, 7, seed=5)[0].tolist(), random_ids(1, 4, seed=6)[0].tolist()]
    assert not small_batch.installed(model)
    engine = generate_rows(Decoder(model, pad_id=1), prompts, 16, stop_ids={1})  # a decoder on a CPU installs it
    assert small_batch.installed(model)
    small_batch.remove(model)
    reference = []
    for prompt in prompts:  # the model's own generate, one row, plain nn.Linear
        ids = torch.tensor([prompt])
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False, pad_token_id=1)
        reference.append([t for t in out[0, len(prompt) :].tolist() if t != 1])  # generate keeps the EOS
    assert engine == reference
