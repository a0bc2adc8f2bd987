"""Transcript projection throughput: tokens/s of `project_transcript` (one teacher-forced pass with a capture per
assistant turn, plus placement) vs a plain forward pass over the same tokens, alternating. The last line is JSON.

    python bench/transcripts.py --quick          # a 12-turn conversation that fits the context
    python bench/transcripts.py --long           # a ~30k-token conversation read in windows

The long case compares windowed projection (default window = the model's context, history 0.5) with a plain
forward pass over the same tokens cut into context-sized pieces (only the last position's logits computed, as
the projection needs none). Projection stops after the highest layer it reads, so it runs part of the model only.
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from backend.models.chat import encode_conversation
from backend.models.loading import load_model
from backend.reading.transcripts import max_context, parse_transcript, project_transcript
from backend.store.space import load_space
from tests.helpers.scratch import use_scratch_cache


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


def long_case(loaded, space, rounds: int) -> dict:  # type: ignore[no-untyped-def]
    import random

    rng = random.Random(0)
    words = "river map garden tomato lantern harbour violin orbit meadow copper thunder whisper".split()
    messages = []
    for i in range(275):
        messages.append({"role": "user", "content": f"Question {i}: " + " ".join(rng.choices(words, k=rng.randint(30, 60)))})
        messages.append({"role": "assistant", "content": f"Answer {i}. " + " ".join(rng.choices(words, k=rng.randint(30, 60)))})
    transcript = parse_transcript(messages)
    ids = encode_conversation(loaded.tokenizer, None, messages).input_ids
    piece = max_context(loaded.model)
    keep = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(loaded.model.forward).parameters else {}

    def projected() -> tuple[float, dict]:
        t0 = time.perf_counter()
        result = project_transcript(loaded, space, transcript)
        return len(ids) / (time.perf_counter() - t0), result

    @torch.inference_mode()
    def plain() -> float:
        t0 = time.perf_counter()
        for start in range(0, len(ids), piece):
            loaded.model(input_ids=torch.tensor([ids[start : start + piece]]), **keep)
        return len(ids) / (time.perf_counter() - t0)

    p_rates, f_rates = [], []
    result: dict = {}
    for _ in range(rounds):
        rate, result = projected()
        p_rates.append(rate)
        f_rates.append(plain())
        print(f"windowed projection {p_rates[-1]:.0f} tok/s   plain forward in pieces {f_rates[-1]:.0f} tok/s", file=sys.stderr)
    return {
        "model": loaded.info.name, "device": loaded.info.device, "case": "long", "tokens": len(ids),
        "assistant_turns": len(result["turns"]), "window": result["window"], "passes": result["passes"],
        "tokens_read": result["tokens_read"], "min_context": min(t["context_tokens"] for t in result["turns"]),
        "windowed_tok_s": round(statistics.median(p_rates), 1), "forward_tok_s": round(statistics.median(f_rates), 1),
        "ratio": round(statistics.median(p / f for p, f in zip(p_rates, f_rates, strict=True)), 4),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--space", default="cached_activations/smollm2-135m")
    parser.add_argument("--quick", action="store_true", help="3 rounds of a 12-turn conversation")
    parser.add_argument("--turns", type=int, default=None)
    parser.add_argument("--long", action="store_true", help="the ~30k-token windowed case (2 rounds)")
    args = parser.parse_args()
    rounds = 3 if args.quick else 6
    turns = args.turns or (12 if args.quick else 24)
    loaded = load_model(args.model)
    space = load_space(args.space, fingerprint=loaded.info.fingerprint)
    if args.long:
        print(json.dumps(long_case(loaded, space, rounds=2)))
        return
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
    use_scratch_cache()  # never the user's cache folder: their sessions database, their converted models
    main()
