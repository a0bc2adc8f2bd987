"""Transcript projection throughput: tokens/s of `project_transcript` (one teacher-forced pass with a capture per
assistant turn, plus placement) vs a plain forward pass over the same tokens, alternating. The last line is JSON.

    python bench/transcripts.py --quick
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

from backend.chat import encode_conversation
from backend.models import load_model
from backend.store import load_space
from backend.transcripts import parse_transcript, project_transcript


def conversation(turns: int) -> list[dict[str, str]]:
    out = []
    for i in range(turns):
        out.append(
            {"role": "user", "content": f"Question {i}: what do you think about rivers, mountains and the long history of maps?"}
        )
        out.append(
            {"role": "assistant", "content": "Rivers carve valleys over ages; maps record what people needed to know. " * 3}
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--space", default="cached_activations/smollm2-135m")
    parser.add_argument("--quick", action="store_true", help="3 rounds of a 12-turn conversation")
    parser.add_argument("--turns", type=int, default=None)
    args = parser.parse_args()
    rounds = 3 if args.quick else 6
    turns = args.turns or (12 if args.quick else 24)
    loaded = load_model(args.model)
    space = load_space(args.space, fingerprint=loaded.info.fingerprint)
    messages = conversation(turns)
    transcript = parse_transcript(messages)
    ids = torch.tensor([encode_conversation(loaded.tokenizer, None, messages).input_ids])

    def projected() -> float:
        t0 = time.perf_counter()
        result = project_transcript(loaded, space, transcript)
        return result["tokens"] / (time.perf_counter() - t0)

    @torch.inference_mode()
    def plain() -> float:
        t0 = time.perf_counter()
        loaded.model(input_ids=ids)
        return ids.shape[1] / (time.perf_counter() - t0)

    projected()
    plain()
    p_rates, f_rates = [], []
    for _ in range(rounds):
        p_rates.append(projected())
        f_rates.append(plain())
        print(f"projection {p_rates[-1]:.0f} tok/s   plain forward {f_rates[-1]:.0f} tok/s", file=sys.stderr)
    print(json.dumps({
        "model": loaded.info.name, "device": loaded.info.device, "tokens": int(ids.shape[1]), "assistant_turns": turns,
        "project_tok_s": round(statistics.median(p_rates), 1), "forward_tok_s": round(statistics.median(f_rates), 1),
        "ratio": round(statistics.median(p / f for p, f in zip(p_rates, f_rates, strict=True)), 4),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
