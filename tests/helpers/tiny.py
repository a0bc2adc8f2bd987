"""Tiny random causal LMs built from configs, for plumbing tests. Nothing downloads."""

from __future__ import annotations

from typing import Any

import torch

VOCAB = 96
ARCHITECTURES = ("llama", "qwen2", "qwen3", "gemma2", "gemma3", "mistral", "phi3", "gpt2", "gpt_neox")


def tiny_config(arch: str, n_layers: int = 4, vocab: int = VOCAB) -> Any:
    import transformers as T

    common: dict[str, Any] = {"vocab_size": vocab, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}
    decoder = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        **common,
    )
    if arch == "llama":
        return T.LlamaConfig(**decoder)
    if arch == "qwen2":
        return T.Qwen2Config(**decoder)
    if arch == "qwen3":
        return T.Qwen3Config(head_dim=8, **decoder)
    if arch == "gemma2":
        return T.Gemma2Config(head_dim=8, **decoder)
    if arch == "gemma3":
        return T.Gemma3TextConfig(head_dim=8, sliding_window=16, **decoder)
    if arch == "mistral":
        return T.MistralConfig(**decoder)
    if arch == "phi3":
        return T.Phi3Config(**decoder)
    if arch == "gpt2":
        return T.GPT2Config(n_embd=32, n_layer=n_layers, n_head=4, n_positions=2048, **common)
    if arch == "gpt_neox":
        return T.GPTNeoXConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=n_layers,
            num_attention_heads=4,
            max_position_embeddings=2048,
            **common,
        )
    raise ValueError(arch)


def tiny_model(arch: str, n_layers: int = 4, seed: int = 0, vocab: int = VOCAB) -> Any:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, n_layers, vocab), dtype=torch.float32)
    model.eval()
    return model


def random_ids(batch: int = 2, length: int = 9, seed: int = 1, vocab: int = VOCAB) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(2, vocab, (batch, length), generator=g)
