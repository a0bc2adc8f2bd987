"""Hook overhead: greedy generation of the embedded default, plain vs monitor + live cap on 8 layers.

Runs alternate (plain, hooked, plain, hooked, ...) in one process on the same prompts, each generating exactly
the same number of tokens (EOS ignored), so the ratio compares like with like. The last line is JSON.

    python bench/hooks.py --quick
    python bench/hooks.py --quick --random-config llama3-8b   # on a GPU: random weights, bf16, nothing downloads
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from backend.hooks.interventions import Cap, intervene
from backend.hooks.readers import Monitor
from backend.models.chat import encode_prompt
from backend.models.loading import describe, load_model
from tests.helpers.scratch import use_scratch_cache

# Shapes of well-known models (public config facts), for speed runs with random weights.
RANDOM_CONFIGS: dict[str, dict] = {
    "llama3-8b": dict(
        model_type="llama",
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        rope_theta=500000.0,
    ),
    "qwen2.5-7b": dict(
        model_type="qwen2",
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
        rope_theta=1000000.0,
    ),
    "tiny-llama": dict(
        model_type="llama",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=12,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=1000,
    ),
}


def random_model(name: str, dtype: torch.dtype | None = None):  # type: ignore[no-untyped-def]
    """A randomly initialised model of a known shape, on CUDA when present (bf16 there unless ``dtype``)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(RANDOM_CONFIGS[name])
    config = AutoConfig.for_model(spec.pop("model_type"), **spec)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = dtype or (torch.bfloat16 if device == "cuda" else torch.float32)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval()
    info = describe(model, None, spec=f"random:{name}", name=name, source="random weights", fingerprint="-")
    return model, info


PROMPTS = [
    "Explain how a bicycle gear works.",
    "Write a short poem about the sea.",
    "What should I cook tonight with rice and beans?",
    "Tell me about yourself.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--quick", action="store_true", help="fewer rounds and tokens (about a minute on 2 cores)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--tokens", type=int, default=None)
    parser.add_argument(
        "--random-config",
        choices=sorted(RANDOM_CONFIGS),
        default=None,
        help="a randomly initialised model of this shape instead of --model (CUDA + bf16 when present)",
    )
    args = parser.parse_args()
    rounds = args.rounds or (3 if args.quick else 8)
    tokens = args.tokens or (48 if args.quick else 128)

    torch.manual_seed(0)
    if args.random_config:
        model, info = random_model(args.random_config)
        g = torch.Generator().manual_seed(0)
        encoded = [torch.randint(10, model.config.vocab_size, (1, 24), generator=g) for _ in PROMPTS]
        pad = 0
    else:
        loaded = load_model(args.model)
        model, tok, info = loaded.model, loaded.tokenizer, loaded.info
        encoded = [torch.tensor([encode_prompt(tok, None, [{"role": "user", "content": p}])]) for p in PROMPTS]
        pad = tok.pad_token_id
    device = next(model.parameters()).device
    encoded = [ids.to(device) for ids in encoded]
    axis = torch.randn(info.n_layers, info.hidden)
    start = max(0, min(info.cap_window[0], info.n_layers - 8))
    cap_layers = list(range(start, start + 8))
    cap = Cap.from_axis(axis, cap_layers, 0.0)  # tau 0 on a random direction: about half the tokens move
    monitor = Monitor(axis[info.target_layer], info.target_layer)
    kwargs = dict(max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, pad_token_id=pad)

    def run(hooked: bool) -> float:
        generated = 0
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for ids in encoded:
            if hooked:
                monitor.reset()
                with intervene(model, cap, monitor) as handle, torch.inference_mode():
                    out = model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
                handle.cap_log.reset()
            else:
                with torch.inference_mode():
                    out = model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
            generated += out.shape[1] - ids.shape[1]
        if device.type == "cuda":
            torch.cuda.synchronize()
        return generated / (time.perf_counter() - t0)

    run(False)  # warm up both paths
    run(True)
    plain, hooked = [], []
    for _ in range(rounds):
        plain.append(run(False))
        hooked.append(run(True))
        print(f"plain {plain[-1]:.1f} tok/s   hooked {hooked[-1]:.1f} tok/s", file=sys.stderr)
    result = {
        "model": info.name,
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "dtype": info.dtype,
        "threads": torch.get_num_threads(),
        "tokens_per_prompt": tokens,
        "prompts": len(PROMPTS),
        "rounds": rounds,
        "cap_layers": cap_layers,
        "monitor_layer": info.target_layer,
        "plain_tok_s": round(statistics.median(plain), 2),
        "hooked_tok_s": round(statistics.median(hooked), 2),
        "ratio": round(statistics.median(h / p for h, p in zip(hooked, plain, strict=False)), 4),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    use_scratch_cache()  # never the user's cache folder: their sessions database, their converted models
    main()
