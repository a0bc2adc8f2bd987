"""The decode engine's oracles: an independent eager loop with plain hooks, and the engine's rows, on the same random axis."""

from __future__ import annotations

import pytest
import torch

from backend.decode.engine import Decoder, generate_rows
from backend.hooks.rows import RowControls
from backend.maths.edits import steering_vector
from backend.models.layers import block_output, find_decoder_layers

N_LAYERS, HIDDEN, STOP = 4, 32, 1


MONITOR = 2


def world(model=None, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[no-untyped-def]
    """A random axis and steering vectors for the model's shape (the tiny models': 4 layers x 32)."""
    n_layers = len(find_decoder_layers(model)) if model is not None else N_LAYERS
    hidden = model.config.hidden_size if model is not None else HIDDEN
    g = torch.Generator().manual_seed(seed)
    axis = torch.randn(n_layers, hidden, generator=g)
    steer = torch.stack([steering_vector(axis[i], 2.0) for i in range(n_layers)])
    return axis, steer


def eager_reference(model, prompt, n, *, caps=None, steer=None, change=None):  # type: ignore[no-untyped-def]
    """An independent oracle: a dynamic-cache loop with plain hooks of its own that write the method's formulas out
    (``h + c v``, then ``h + u max(tau - h.u, 0)``). ``change = (index, caps)`` swaps the cap before that token.

    Returns the greedy tokens, the monitor reading and the per-layer cap deltas of each fed-back token.
    """
    axis, vectors = world(model)
    units = axis / axis.norm(dim=-1, keepdim=True)
    state = {"caps": dict(caps or {}), "steer": dict.fromkeys(steer[1], steer[0]) if steer else {}}
    seen: dict[str, object] = {}

    def hook_for(layer):  # type: ignore[no-untyped-def]
        def hook(module, args, output):  # type: ignore[no-untyped-def]
            h = block_output(output)
            if layer in state["steer"]:
                h = h + state["steer"][layer] * vectors[layer]
            if layer in state["caps"]:
                u = units[layer]
                delta = (state["caps"][layer] - h @ u).clamp_min(0)
                h = torch.addcmul(h, delta.unsqueeze(-1), u)
                seen.setdefault("deltas", {})[layer] = float(delta[0, -1])  # type: ignore[index]
            if layer == MONITOR:
                seen["monitor"] = float(h[0, -1] @ units[MONITOR])
            return (h, *output[1:]) if isinstance(output, tuple) else h

        return hook

    handles = [block.register_forward_hook(hook_for(i)) for i, block in enumerate(find_decoder_layers(model))]
    tokens, readings, deltas = [], [], []
    try:
        with torch.inference_mode():
            out = model(input_ids=torch.tensor([prompt]), use_cache=True)
            for index in range(n):
                if change is not None and change[0] == index:
                    state["caps"] = dict(change[1])
                token = int(out.logits[0, -1].argmax())
                if token == STOP:
                    break
                tokens.append(token)
                seen.clear()
                out = model(input_ids=torch.tensor([[token]]), cache=out.past_key_values, use_cache=True)
                readings.append(seen["monitor"])
                deltas.append(dict(seen.get("deltas", {})))  # type: ignore[call-overload]
    finally:
        for handle in handles:
            handle.remove()
    return tokens, readings, deltas


def engine_rows(model, prompts, n, row_caps, row_steer=None, change=None, static=True):  # type: ignore[no-untyped-def]
    axis, vectors = world(model)
    controls = RowControls(
        len(prompts), *axis.shape, cap_directions=axis, steer_vectors=vectors, monitor=(MONITOR, axis[MONITOR])
    )
    for i, caps in enumerate(row_caps):
        controls.set_cap(i, caps)
        if row_steer and row_steer[i]:
            controls.set_steer(i, *row_steer[i])
    readings: list[list[float]] = [[] for _ in prompts]
    deltas: list[list[dict[int, float]]] = [[] for _ in prompts]

    def on_step(index, fed, r):  # type: ignore[no-untyped-def]
        for i, token in enumerate(fed):
            if token is not None:
                readings[i].append(float(r.monitor[i]))
                deltas[i].append({k: float(r.delta[i, k]) for k in controls.cap_taus[i]})
        if change is not None and change[0] == index + 1:
            for i, caps in enumerate(change[1]):
                controls.set_cap(i, caps)

    decoder = Decoder(model, controls, pad_id=STOP, static=static)
    tokens = generate_rows(decoder, prompts, n, stop_ids={STOP}, on_step=on_step)
    return tokens, readings, deltas


def assert_same(ref, got, tol: float = 1e-5) -> None:  # type: ignore[no-untyped-def]
    tokens, readings, deltas = ref
    assert got[0] == tokens
    assert got[1] == pytest.approx(readings, abs=tol)
    assert len(got[2]) == len(deltas)
    for mine, theirs in zip(got[2], deltas, strict=True):
        assert mine.keys() == theirs.keys()
        for k in mine:
            assert mine[k] == pytest.approx(theirs[k], abs=tol)
