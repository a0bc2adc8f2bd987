"""The OpenAI-compatible API under load: 1 against 4 concurrent streaming requests through the official ``openai``
client, on a real worker (the embedded default and its shipped space unless told otherwise).

Each request is greedy, capped (p75 on the space's cap window, in its ``persona_space``), asks for the same number
of tokens and streams them; single runs and runs of 4 at once alternate, each round on fresh prompts. Measured per
request from the moment it is sent: its time to first token (the first chunk that carries a token) and its tokens/s
(tokens over its whole time, queueing included). The last line is JSON:

* ``single_tok_s``: one stream alone, median over rounds;
* ``aggregate_tok_s``: all tokens of the 4 streams over the wall time from the first sent to the last done, median;
* ``aggregate_speedup``: ``aggregate_tok_s / single_tok_s`` (issue #24's target: >= 2.5);
* ``per_stream_ratio``: the slowest of the 4 streams' tokens/s against ``single_tok_s``, median (target >= 0.6);
* ``ttft_p50_s`` / ``ttft_p95_s``: over the 4-stream runs' requests; ``single_ttft_p50_s`` for the single runs.

The engine decodes every running request as a row of one batch (:mod:`backend.worker.batch`): 4 streams share
each step (one turn at a time, as before #24's concurrent decoding, gave speedup 0.98).

    python bench/serve.py --quick
    python bench/serve.py --quick --no-compile
    python bench/serve.py --quick --batch-rows 1     # one turn at a time (compiled step): what batching costs one stream
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import openai

from tests.helpers.worker_harness import Worker

TOPICS = ["bread", "volcanoes", "tides", "bees", "glass", "maps", "rain", "salt", "clocks", "paper", "wind", "ice"]
CONCURRENT = 4


def one(client: openai.OpenAI, model: str, topic: str, tokens: int) -> dict[str, float]:
    """Stream one reply; its tokens, time to first token and total time, from the moment it is sent."""
    sent = time.perf_counter()
    first: float | None = None
    n = 0
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": f"Tell me everything about {topic}."}], temperature=0,
        max_tokens=tokens, stream=True, stream_options={"include_usage": True},
        extra_body={"persona_space": {"cap": {"percentile": 75}}},
    )  # fmt: skip
    usage = None
    for chunk in stream:
        got = len((chunk.model_extra or {}).get("persona_space", {}).get("projections", []))
        if got and first is None:
            first = time.perf_counter()
        n += got
        usage = chunk.usage or usage
    done = time.perf_counter()
    assert usage is not None and usage.completion_tokens == n, (usage, n)
    return {"tokens": n, "ttft": (first or done) - sent, "seconds": done - sent, "sent": sent, "done": done}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--space", default="cached_activations/smollm2-135m")
    parser.add_argument("--device", default=None)
    parser.add_argument("--quick", action="store_true", help="2 rounds of 32 tokens per request")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--tokens", type=int, default=None)
    parser.add_argument(
        "--threads", type=int, default=1, help="the worker's torch threads (OMP_NUM_THREADS; 1 as the test harness)"
    )
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="measure the eager decode step")
    parser.add_argument(
        "--batch-rows", type=int, default=None, help="serve --batch-rows (1: one turn at a time, the compiled step)"
    )
    args = parser.parse_args()
    rounds = args.rounds or (2 if args.quick else 4)
    tokens = args.tokens or (32 if args.quick else 96)
    tmp = Path(tempfile.mkdtemp())
    extra = ["--device", args.device] if args.device else []
    extra += ["--batch-rows", str(args.batch_rows)] if args.batch_rows is not None else []
    worker = Worker(
        args.model, Path(args.space), tmp / "serve.sqlite3", env={"OMP_NUM_THREADS": str(args.threads)},
        compile=args.compile, extra=extra,
    )  # fmt: skip
    try:
        health = worker.wait_ready()
        while (health := worker.client.get("/health").json()).get("phase") != "ready":  # the map, built after ready
            time.sleep(0.2)
        while args.compile and not str(health.get("decode_step", "")).startswith(("compiled", "eager")):
            time.sleep(0.5)
            health = worker.client.get("/health").json()
        print(f"worker ready: {health.get('model_name')} on {health.get('device')}, {health.get('decode_step')}", file=sys.stderr)
        client = openai.OpenAI(base_url=worker.url + "/v1", api_key="unused", max_retries=0, timeout=600)
        model = client.models.list().data[0].id
        one(client, model, "warming up", 8)
        singles: list[dict[str, float]] = []
        groups: list[list[dict[str, float]]] = []
        topics = iter(TOPICS * (rounds * (CONCURRENT + 1)))
        with ThreadPoolExecutor(CONCURRENT) as pool:
            for r in range(rounds):
                singles.append(one(client, model, next(topics), tokens))
                group = list(pool.map(lambda t: one(client, model, t, tokens), [next(topics) for _ in range(CONCURRENT)]))
                groups.append(group)
                print(
                    f"round {r + 1}/{rounds}: single {singles[-1]['tokens'] / singles[-1]['seconds']:.1f} tok/s", file=sys.stderr
                )
    finally:
        worker.close()
    single_rates = [s["tokens"] / s["seconds"] for s in singles]
    single = statistics.median(single_rates)
    aggregate = statistics.median(
        sum(g["tokens"] for g in group) / (max(g["done"] for g in group) - min(g["sent"] for g in group)) for group in groups
    )
    slowest = statistics.median(min(g["tokens"] / g["seconds"] for g in group) / single for group in groups)
    ttfts = [g["ttft"] for group in groups for g in group]
    result: dict[str, Any] = {
        "bench": "serve", "model": args.model, "device": health.get("device"), "decode_step": health.get("decode_step"),
        "rounds": rounds, "tokens_per_request": tokens, "concurrent": CONCURRENT, "batch_rows": args.batch_rows or 4,
        "single_tok_s": round(single, 2), "aggregate_tok_s": round(aggregate, 2),
        "aggregate_speedup": round(aggregate / single, 3), "per_stream_ratio": round(slowest, 3),
        "ttft_p50_s": round(percentile(ttfts, 0.5), 3), "ttft_p95_s": round(percentile(ttfts, 0.95), 3),
        "single_ttft_p50_s": round(percentile([s["ttft"] for s in singles], 0.5), 3),
    }  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
