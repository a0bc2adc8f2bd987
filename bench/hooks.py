"""Hook overhead: greedy generation of the embedded default, plain vs monitor + live cap on 8 layers.

Runs alternate (plain, hooked, plain, hooked, ...) in one process on the same prompts, each generating exactly
the same number of tokens (EOS ignored), so the ratio compares like with like. The last line is JSON.

    python bench/hooks.py --quick
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

from backend.chat import encode_prompt
from backend.interventions import Cap, Live, Monitor, intervene
from backend.models import load_model

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
    args = parser.parse_args()
    rounds = args.rounds or (3 if args.quick else 8)
    tokens = args.tokens or (48 if args.quick else 128)

    torch.manual_seed(0)
    loaded = load_model(args.model)
    model, tok, info = loaded.model, loaded.tokenizer, loaded.info
    axis = torch.randn(info.n_layers, info.hidden)
    start = max(0, min(info.cap_window[0], info.n_layers - 8))
    cap_layers = list(range(start, start + 8))
    live = Live(Cap.from_axis(axis, cap_layers, 0.0))  # tau 0 on a random direction: about half the tokens move
    monitor = Monitor(axis[info.target_layer], info.target_layer)
    encoded = [torch.tensor([encode_prompt(tok, None, [{"role": "user", "content": p}])]) for p in PROMPTS]
    kwargs = dict(max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, pad_token_id=tok.pad_token_id)

    def run(hooked: bool) -> float:
        generated = 0
        t0 = time.perf_counter()
        for ids in encoded:
            if hooked:
                monitor.reset()
                with intervene(model, live, monitor) as handle, torch.inference_mode():
                    out = model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
                handle.cap_log.reset()
            else:
                with torch.inference_mode():
                    out = model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
            generated += out.shape[1] - ids.shape[1]
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
        "device": info.device,
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
    main()
