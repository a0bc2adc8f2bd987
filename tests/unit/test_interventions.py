"""Hooks on tiny random models of several architectures, checked against exact oracles."""

from __future__ import annotations

import math

import pytest
import torch

from backend.errors import InterventionError
from backend.hooks.interventions import Cap, Steer, attach, intervene
from backend.hooks.readers import Capture, Monitor
from backend.maths.axis import project
from backend.maths.edits import steering_vector
from backend.models.layers import block_output, find_decoder_layers
from tests.helpers.tiny import random_ids, tiny_model


def hook_count(model) -> int:  # type: ignore[no-untyped-def]
    # transformers installs hooks of its own the first time hidden states are asked for: compare counts.
    return sum(len(layer._forward_hooks) for layer in find_decoder_layers(model))


def record_outputs(model, layer):  # type: ignore[no-untyped-def]
    """A plain hook (registered last, so it sees edits) that keeps block outputs of one layer."""
    seen: list[torch.Tensor] = []
    h = find_decoder_layers(model)[layer].register_forward_hook(lambda m, a, o: seen.append(block_output(o).detach().clone()))
    return seen, h


def test_layer_discovery(arch_model) -> None:  # type: ignore[no-untyped-def]
    _arch, model = arch_model
    layers = find_decoder_layers(model)
    assert len(layers) == 4
    assert all(type(layer) is type(layers[0]) for layer in layers)


def test_captured_means_equal_hidden_states(arch_model) -> None:  # type: ignore[no-untyped-def]
    _arch, model = arch_model
    ids = random_ids()
    mask = torch.zeros(ids.shape, dtype=torch.bool)
    mask[0, 2:6] = True
    mask[1, 5:9] = True
    capture = Capture(mask=mask)
    with torch.no_grad():
        ref = model(ids, output_hidden_states=True).hidden_states
        with intervene(model, capture):
            model(ids)
        last_seen, h = record_outputs(model, 3)
        try:
            model(ids)
        finally:
            h.remove()
    means = capture.mean()
    assert means.shape == (2, 4, 32)
    assert capture.count.tolist() == [4.0, 4.0]
    m = mask.double().unsqueeze(-1)
    for layer in range(4):
        # hidden_states[i + 1] is block i's output, except the last entry, which has the final norm applied.
        source = ref[layer + 1] if layer < 3 else last_seen[0]
        expected = ((source.double() * m).sum(1) / m.sum(1)).float()
        torch.testing.assert_close(means[:, layer], expected, rtol=1e-5, atol=1e-6)


def test_capture_chosen_layers_and_callable_mask_across_cached_steps(llama) -> None:  # type: ignore[no-untyped-def]
    ids = random_ids(batch=1, length=6)
    with torch.no_grad():
        ref = llama(ids, output_hidden_states=True).hidden_states
    capture = Capture(layers=[2, 0], mask=lambda start, n: torch.arange(start, start + n)[None] >= 3)
    with intervene(llama, capture), torch.no_grad():
        # positions 0..3 first, then 4..5 on the KV cache, as generate() feeds them
        past = llama(ids[:, :4], use_cache=True).past_key_values
        llama(ids[:, 4:], past_key_values=past, use_cache=True)
    assert capture.layers == (2, 0)
    assert capture.count.tolist() == [3.0]
    for i, layer in enumerate((2, 0)):
        expected = ref[layer + 1][0, 3:].double().mean(0).float()
        torch.testing.assert_close(capture.mean()[0, i], expected, rtol=1e-5, atol=1e-5)


def test_logits_identical_after_exit_and_after_exception(arch_model) -> None:  # type: ignore[no-untyped-def]
    _arch, model = arch_model
    ids = random_ids()
    with torch.no_grad():
        before = model(ids).logits.clone()
    hooks = hook_count(model)
    axis = torch.randn(4, 32)
    cap = Cap.from_axis(axis, [1, 2], 5.0)
    steer = Steer({1: torch.randn(32)}, 3.0)
    with pytest.raises(RuntimeError, match=r"boom"):
        with intervene(model, cap, steer, Capture(), Monitor(axis[2], 2)), torch.no_grad():
            changed = model(ids).logits
            assert not torch.equal(changed, before)
            raise RuntimeError("boom")
    assert hook_count(model) == hooks
    with torch.no_grad():
        assert torch.equal(model(ids).logits, before)


def test_failed_registration_leaves_no_hook(llama) -> None:  # type: ignore[no-untyped-def]
    hooks = hook_count(llama)
    good = Capture()
    bad = Monitor(torch.randn(32), 99)  # out of range: fails after the capture's hooks are in
    with pytest.raises(InterventionError, match=r"monitor layer 99 is out of range"):
        attach(llama, good, bad)
    assert hook_count(llama) == hooks


def test_cap_floors_projection_and_leaves_the_rest(arch_model) -> None:  # type: ignore[no-untyped-def]
    _arch, model = arch_model
    ids = random_ids(length=12)
    layer = 2
    direction = torch.randn(32)
    u = direction / direction.norm()
    with torch.no_grad():
        plain, h = record_outputs(model, layer)
        model(ids)
        h.remove()
    original = plain[0]
    tau = float(project(original, direction).median())
    with torch.no_grad():
        with intervene(model, Cap({layer: direction}, {layer: tau})) as handle:
            capped_seen, h = record_outputs(model, layer)  # registered after the cap: sees its result
            model(ids)
            h.remove()
    capped = capped_seen[0]
    before = original @ u
    after = capped @ u
    assert bool((after >= tau - 1e-4).all())
    above = before >= tau
    assert above.any() and (~above).any()
    assert torch.equal(capped[above], original[above])  # bit-identical where nothing was needed
    orth_before = original - before.unsqueeze(-1) * u
    orth_after = capped - after.unsqueeze(-1) * u
    torch.testing.assert_close(orth_after, orth_before, rtol=1e-5, atol=1e-5)
    delta = handle.cap_log.deltas(layer)
    torch.testing.assert_close(delta, (tau - before).clamp_min(0), rtol=1e-5, atol=1e-5)


def test_cap_projection_floor_holds_at_every_capped_layer(arch_model) -> None:  # type: ignore[no-untyped-def]
    _arch, model = arch_model
    ids = random_ids(length=10)
    axis = torch.randn(4, 32)
    taus = [0.0, 0.5, 1.0, 2.0]
    monitors = [Monitor(axis[layer], layer) for layer in (1, 2, 3)]
    with intervene(model, Cap.from_axis(axis, [1, 2, 3], taus), *monitors), torch.no_grad():
        model(ids)
    for monitor in monitors:
        assert bool((monitor.readings() >= taus[monitor.layer] - 1e-4).all())


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3"])
def test_cap_at_minus_infinity_is_bit_identical_generation(arch: str) -> None:
    model = tiny_model(arch)
    ids = random_ids(batch=1, length=5)
    kwargs = dict(
        max_new_tokens=12, do_sample=False, pad_token_id=1, eos_token_id=None, return_dict_in_generate=True, output_logits=True
    )
    with torch.no_grad():
        plain = model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
        with intervene(model, Cap.from_axis(torch.randn(4, 32), [0, 1, 2, 3], -math.inf)):
            capped = model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
    assert torch.equal(plain.sequences, capped.sequences)
    for a, b in zip(plain.logits, capped.logits, strict=False):
        assert torch.equal(a, b)


def test_live_control_applies_from_next_step_not_before() -> None:
    model = tiny_model("llama")
    ids = random_ids(batch=1, length=5)
    axis = torch.randn(4, 32) * 3
    layer = 2
    change_after = 4  # generated tokens before the slider moves
    tau = 50.0  # far above every projection: the cap moves every position once on
    kwargs = dict(max_new_tokens=10, do_sample=False, pad_token_id=1, eos_token_id=None)
    plain_monitor = Monitor(axis[layer], layer)
    with intervene(model, plain_monitor), torch.no_grad():
        plain = model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)

    handles = []  # the handle, once attached: the streamer changes the cap through it
    monitor = Monitor(axis[layer], layer)
    produced: list[int] = []

    class Streamer:
        first = True

        def put(self, value: torch.Tensor) -> None:
            if self.first:
                self.first = False
                return
            produced.append(int(value.reshape(-1)[0]))
            if len(produced) == change_after:
                handles[0].set(Cap.from_axis(axis, [layer], tau))

        def end(self) -> None:
            pass

    with intervene(model, Cap.from_axis(axis, [layer], -math.inf), monitor) as handle, torch.no_grad():
        handles.append(handle)
        live_out = model.generate(ids, attention_mask=torch.ones_like(ids), streamer=Streamer(), **kwargs)
    # Tokens up to the change are the same; the forward that feeds the 4th generated token is the first capped.
    assert torch.equal(live_out[0, : 5 + change_after], plain[0, : 5 + change_after])
    first_capped = 5 + change_after - 1  # position of the 4th generated token
    before, after = plain_monitor.readings()[0], monitor.readings()[0]
    assert torch.equal(after[:first_capped], before[:first_capped])
    assert bool((after[first_capped:] >= tau - 1e-3).all())
    versions = {s.start: s.version for s in handle.cap_log.steps if s.layer == layer}
    assert min(versions) == first_capped and set(versions.values()) == {1}


def test_steering_coefficient_two_equals_doubled_vector(arch_model) -> None:  # type: ignore[no-untyped-def]
    _arch, model = arch_model
    ids = random_ids()
    v = steering_vector(torch.randn(32), scale=4.0)
    with torch.no_grad():
        with intervene(model, Steer({1: v, 2: v}, 2.0)):
            two_c = model(ids).logits
        with intervene(model, Steer({1: 2 * v, 2: 2 * v}, 1.0)):
            two_v = model(ids).logits
        plain = model(ids).logits
    torch.testing.assert_close(two_c, two_v, rtol=0, atol=1e-6)
    assert not torch.allclose(two_c, plain)


def test_steering_shifts_projection_by_coefficient_times_scale(llama) -> None:  # type: ignore[no-untyped-def]
    ids = random_ids()
    direction = torch.randn(32)
    v = steering_vector(direction, scale=2.5)
    seen_plain, h = record_outputs(llama, 1)
    with torch.no_grad():
        llama(ids)
    h.remove()
    with intervene(llama, Steer({1: v}, 0.4)), torch.no_grad():
        seen, h = record_outputs(llama, 1)
        llama(ids)
        h.remove()
    shift = project(seen[0], direction) - project(seen_plain[0], direction)
    torch.testing.assert_close(shift, torch.full_like(shift, 1.0), rtol=1e-4, atol=1e-4)


def test_bad_intervention_inputs_name_the_values(llama) -> None:  # type: ignore[no-untyped-def]
    hooks = hook_count(llama)
    with pytest.raises(InterventionError, match=r"vector length 31 does not match hidden size 32"):
        attach(llama, Cap({1: torch.randn(31)}, {1: 0.0}))
    with pytest.raises(InterventionError, match=r"cap layer 7 is out of range: the model has layers 0..3"):
        attach(llama, Cap({7: torch.randn(32)}, {7: 0.0}))
    with pytest.raises(InterventionError, match=r"threshold must be a finite number or -inf, got nan"):
        Cap({1: torch.randn(32)}, {1: float("nan")})
    with pytest.raises(InterventionError, match=r"got inf"):
        Cap({1: torch.randn(32)}, {1: float("inf")})
    with pytest.raises(InterventionError, match=r"coefficient must be a finite number, got nan"):
        Steer({1: torch.randn(32)}, float("nan"))
    with pytest.raises(InterventionError, match=r"direction contains NaN"):
        Cap({1: torch.full((32,), float("nan"))}, {1: 0.0})
    with pytest.raises(InterventionError, match=r"zero-length direction"):
        Cap({1: torch.zeros(32)}, {1: 0.0})
    with pytest.raises(InterventionError, match=r"got 3 thresholds for an axis of 4 layers"):
        Cap.from_axis(torch.randn(4, 32), [1], [0.0, 1.0, 2.0])
    with pytest.raises(InterventionError, match=r"two caps at layer 1: a floor on two directions is not one floor"):
        attach(llama, Cap({1: torch.randn(32)}, {1: 0.0}), Cap({1: torch.randn(32)}, {1: 0.0}))
    with pytest.raises(InterventionError, match=r"set\(\) takes Cap and Steer records, not Monitor"):
        with intervene(llama, Steer({1: torch.randn(32)}, 1.0)) as handle:
            handle.set(Monitor(torch.randn(32), 1))  # type: ignore[arg-type]
    with pytest.raises(InterventionError, match=r"cap layers \[2\] have no hooks"):
        with intervene(llama, Cap({1: torch.randn(32)}, {1: 0.0})) as handle:
            handle.set(Cap({2: torch.randn(32)}, {2: 0.0}))
    assert hook_count(llama) == hooks


def test_handle_remove_is_idempotent_and_context_manager(llama) -> None:  # type: ignore[no-untyped-def]
    hooks = hook_count(llama)
    handle = attach(llama, Capture(), Steer(dict.fromkeys(range(4), torch.randn(32)), 0.0))
    assert hook_count(llama) == hooks + 8
    handle.remove()
    handle.remove()
    assert hook_count(llama) == hooks


@pytest.mark.parametrize("live", [False, True], ids=["records", "live"])
def test_steering_then_cap_on_the_same_layer(llama, live) -> None:  # type: ignore[no-untyped-def]
    """Steering moves the block output first and the cap floors the result (in whatever order they are passed)."""
    ids = random_ids(length=10)
    layer = 1
    direction = torch.randn(32)
    u = direction / direction.norm()
    seen_plain, h = record_outputs(llama, layer)
    with torch.no_grad():
        llama(ids)
    h.remove()
    plain = seen_plain[0].double()
    tau = float((plain @ u.double()).median())
    coefficient = -3.0  # pushes every position well below the floor
    vector = steering_vector(direction, scale=2.0)
    steered = plain + coefficient * vector.double()
    expected = steered + u.double() * (tau - steered @ u.double()).clamp_min(0).unsqueeze(-1)  # floor after steering
    cap, steer_ = Cap({layer: direction}, {layer: tau}), Steer({layer: vector}, coefficient)
    if live:  # attached off (a cap at -inf, no steering), then both set while attached
        items = (Cap({layer: direction}, {layer: -math.inf}), Steer({layer: vector}, 0.0))
    else:
        items = (steer_, cap)  # in either order: steering runs first
    with intervene(llama, *items) as handle, torch.no_grad():
        if live:
            handle.set(cap, steer_)
        seen, h = record_outputs(llama, layer)
        llama(ids)
        h.remove()
    torch.testing.assert_close(seen[0].double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(seen[0].double() @ u.double(), torch.full((2, 10), tau, dtype=torch.double), rtol=1e-5, atol=1e-4)


def test_a_refused_set_leaves_the_running_cap_and_steering_as_they_were(llama) -> None:  # type: ignore[no-untyped-def]
    ids = random_ids(length=8)
    axis = torch.randn(4, 32)
    cap, steering = Cap.from_axis(axis, [1], 0.5), Steer({1: torch.randn(32)}, 2.0)
    with intervene(llama, cap, steering) as handle, torch.no_grad():
        before = llama(ids).logits.clone()
        with pytest.raises(InterventionError, match=r"cap layers \[2\] have no hooks \(hooked: \[1\]\)"):
            handle.set(Cap.from_axis(-axis, [1, 2], 9.0), Steer({1: torch.randn(32)}, -5.0))
        with pytest.raises(InterventionError, match=r"steering layers \[3\] have no hooks"):
            handle.set(Cap.from_axis(-axis, [1], 9.0), Steer({3: torch.randn(32)}, -5.0))
        assert torch.equal(llama(ids).logits, before)  # neither the direction, the floor nor the vector moved
