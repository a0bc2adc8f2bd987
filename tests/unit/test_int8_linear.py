"""The int8 precision mode: per-row int8 weights through torch's packed kernel, undone exactly, left alone by the
few-row products, and close to float32 on a tiny model's decode (the embedded model's figures: bench/decode.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from backend.decode.engine import Decoder, generate_rows
from backend.errors import PersonaSpaceError
from backend.hooks.rows import RowControls
from backend.kernels import int8_linear, small_batch
from tests.helpers.tiny import random_ids, tiny_model


def test_quantized_weights_round_each_row_to_its_own_scale() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 32, generator=g) * torch.logspace(-3, 1, 64)[:, None]  # rows of very different sizes
    w[5] = 0.0  # an all-zero row must not divide by zero
    q, scales = int8_linear.quantize(w)
    assert q.dtype == torch.int8 and scales.dtype == torch.bfloat16 and q.shape == w.shape
    assert int(q.abs().max()) == 127 and torch.equal(q[5], torch.zeros(32, dtype=torch.int8))
    restored = q.float() * scales.float()[:, None]
    # rounding to the grid, plus the scale's own bfloat16 rounding (2^-8 of the row's largest weight)
    bound = w.abs().amax(1, keepdim=True) * (0.5 / 127 + 2**-8) + 1e-12
    assert bool(((restored - w).abs() <= bound).all())


@pytest.mark.parametrize("rows", [1, 2, 7, 40])
@pytest.mark.parametrize("bias", [False, True])
def test_linear_is_the_dequantized_product(rows: int, bias: bool) -> None:
    g = torch.Generator().manual_seed(rows)
    w = torch.randn(40, 48, generator=g)
    b = torch.randn(40, generator=g) if bias else None
    x = torch.randn(rows, 1, 48, generator=g)
    q, scales = int8_linear.quantize(w)
    got = int8_linear.linear(x, q, scales, b)
    assert got.shape == (rows, 1, 40) and got.dtype == torch.float32
    # the kernel's inputs: bfloat16 activations, the int8 grid times bfloat16 scales; its output is bfloat16
    expected = F.linear(x.bfloat16().float(), q.float() * scales.float()[:, None], b)
    torch.testing.assert_close(got, expected, rtol=2e-2, atol=2e-2)
    assert float((got - F.linear(x, w, b)).abs().max()) < 0.05 * float(F.linear(x, w, b).abs().max())


def test_install_remove_and_off_round_trip_and_small_batch_leaves_int8_layers_alone() -> None:
    model = tiny_model("llama")
    small_batch.install(model)  # what load_model does on a CPU
    ids = random_ids(1, 6, seed=3)
    linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    with torch.inference_mode(), small_batch.plain(model):
        exact = model(input_ids=ids).logits
    assert int8_linear.install(model) == linears and int8_linear.install(model) == 0
    assert int8_linear.installed(model) and not small_batch.installed(model)
    assert small_batch.install(model) == 0  # a Decoder's install keeps the int8 products
    with torch.inference_mode():
        quantized = model(input_ids=ids).logits
        copies = [m._int8_weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
        with int8_linear.off(model):
            assert not int8_linear.installed(model)
            assert torch.equal(model(input_ids=ids).logits, exact)
        assert int8_linear.installed(model)
        # back on from the same int8 copies: nothing quantized again (off() sits inside timed baselines)
        again = [m._int8_weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
        assert len(again) == len(copies) and all(a is b for a, b in zip(copies, again, strict=True))
        assert torch.equal(model(input_ids=ids).logits, quantized)
    assert not torch.equal(quantized, exact)
    torch.testing.assert_close(quantized, exact, rtol=0.1, atol=0.1)
    int8_linear.remove(model)
    assert not int8_linear.installed(model)
    with torch.inference_mode():
        assert torch.equal(model(input_ids=ids).logits, exact)


def test_layers_the_kernel_cannot_compute_keep_float32() -> None:
    """The packed kernel returns garbage (or crashes) unless the input size is a multiple of 16: such a layer is
    never converted, and its output stays exactly float32's."""
    assert int8_linear.supported(576) and int8_linear.supported(1536)
    assert not int8_linear.supported(24) and not int8_linear.supported(8)
    model = torch.nn.Sequential(torch.nn.Linear(24, 32), torch.nn.Linear(32, 24))
    assert int8_linear.install(model) == 1
    assert not getattr(model[0], small_batch.INT8_MARK, False) and getattr(model[1], small_batch.INT8_MARK)
    x = torch.randn(3, 24)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), model[1](F.linear(x, model[0].weight, model[0].bias)), rtol=0, atol=0)


def test_int8_mode_needs_a_float32_model_on_the_cpu() -> None:
    with pytest.raises(PersonaSpaceError, match="float32 model on the CPU"):
        int8_linear.install(tiny_model("llama").to(torch.bfloat16))


def test_decoding_in_int8_stays_close_to_float32() -> None:
    """The engine with the monitor and a cap, in int8 against float32 on the same (teacher-forced) tokens."""
    model = tiny_model("llama", n_layers=4)
    cfg = model.config
    axis = torch.randn(cfg.num_hidden_layers, cfg.hidden_size, generator=torch.Generator().manual_seed(1))

    def readings(tokens: list[int] | None) -> tuple[list[int], list[float]]:
        rc = RowControls(1, cfg.num_hidden_layers, cfg.hidden_size, cap_directions=axis, monitor=(2, axis[2]))
        rc.set_cap(0, {1: 0.0, 2: 0.0})
        seen: list[float] = []
        chosen = iter(tokens) if tokens is not None else None
        out = generate_rows(
            Decoder(model, rc, pad_id=0),
            random_ids(1, 7, seed=5).tolist(),
            12,
            choose=None if chosen is None else (lambda i, logits: [next(chosen)]),
            on_step=lambda i, fed, r: seen.append(float(r.monitor[0])),  # type: ignore[union-attr,index]
        )
        return out[0], seen

    tokens, exact = readings(None)
    int8_linear.install(model)
    _, quantized = readings(tokens)
    spread = torch.tensor(exact).abs().max()
    errors = (torch.tensor(quantized) - torch.tensor(exact)).abs()
    assert 0 < float(errors.max()) < 0.05 * float(spread)


def test_a_compiled_steps_shadow_shares_the_int8_weights() -> None:
    """The worker compiles on a shadow of the model (backend.decode.compiled): it must reuse the int8 copies, not
    duplicate them, and compute what the model computes."""
    from backend.decode.compiled import shadow_of

    model = tiny_model("llama")
    int8_linear.install(model)
    shadow = shadow_of(model)
    pairs = [(a, b) for a, b in zip(model.modules(), shadow.modules(), strict=True) if isinstance(a, torch.nn.Linear)]
    assert pairs and all(a._int8_weight is b._int8_weight and a._int8_scales is b._int8_scales for a, b in pairs)
    assert all(b.forward.__self__ is b for _, b in pairs)  # bound to the shadow's own layer
    ids = random_ids(1, 5, seed=2)
    with torch.inference_mode():
        assert torch.equal(shadow(input_ids=ids).logits, model(input_ids=ids).logits)
