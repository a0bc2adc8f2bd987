"""Worker throughput: tokens/s streamed over HTTP (server-sent events) vs in-process generation with the same
hooks, time to first token, how many tokens pass between a control change and its effect, the worker's warm
start (process started -> /health ready, ``ready_s``) and the time per step of a compare pair (capped and
uncapped rows in one batch) over a single turn's (``compare_over_single``).

Both paths run the worker's own engine on the embedded default and its shipped space, with the cap on
(p75, the space's cap window) and the monitor at the target layer; runs alternate. The last line is JSON.

    python bench/worker.py --quick
    python bench/worker.py --quick --precision int8   # both sides with int8 weights (serve --precision int8)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from backend.kernels import cpu_threads, int8_linear
from backend.models.loading import load_model
from backend.store.space import load_space
from backend.worker.db import Database
from backend.worker.engine import Engine
from backend.worker.schemas import Controls
from tests.helpers.scratch import use_scratch_cache
from tests.helpers.worker_harness import Worker

PROMPTS = ["Tell me about the history of bread.", "How do volcanoes form?", "Describe your ideal weekend."]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--space", default="cached_activations/smollm2-135m")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 3 prompts x 48 tokens")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--tokens", type=int, default=None)
    parser.add_argument(
        "--no-compile", dest="compile", action="store_false", help="measure the eager decode step (no background compile)"
    )
    parser.add_argument("--precision", choices=list(int8_linear.PRECISIONS), default="default")
    args = parser.parse_args()
    threads = cpu_threads.reserve()  # as the worker does: the main thread stays out of torch's thread pool
    rounds = args.rounds or (2 if args.quick else 4)
    tokens = args.tokens or (48 if args.quick else 128)
    controls = {"cap_enabled": True, "cap_percentile": 75.0, "max_new_tokens": tokens, "greedy": False, "seed": 1}

    tmp = Path(tempfile.mkdtemp())
    # Warm start of the worker (the model already converted in the cache), first, alone on the machine: process
    # started -> /health ready.
    spawned = time.perf_counter()
    # the same number of threads as the in-process engine below (the test harness's default is one)
    worker = Worker(
        args.model, Path(args.space), tmp / "http.sqlite3", env={"OMP_NUM_THREADS": str(threads)}, compile=args.compile,
        extra=["--precision", args.precision],
    )  # fmt: skip
    worker.wait_ready()
    ready_s = time.perf_counter() - spawned
    # The map (UMAP refit) is built in the background after ready; throughput is measured once it is done in both
    # processes, so neither side shares the CPU with a refit.
    while worker.client.get("/health").json().get("phase") != "ready":
        time.sleep(0.1)
    map_ready_s = time.perf_counter() - spawned
    compiled_s = None
    if args.compile:  # measured once the compiled decode steps serve (the worker serves eagerly until then)
        while not (step := worker.client.get("/health").json().get("decode_step", "")).startswith(("compiled", "eager")):
            time.sleep(0.5)
        compiled_s = round(time.perf_counter() - spawned, 1)
        print(f"worker decode step: {step} after {compiled_s} s", file=sys.stderr)
    loaded = load_model(args.model)
    space = load_space(args.space, fingerprint=loaded.info.fingerprint)
    if args.precision == "int8":
        int8_linear.install(loaded.model)
    engine = Engine(loaded, space, Database(tmp / "inproc.sqlite3"), threads=threads, compile=args.compile)
    engine.start()
    engine.ready.wait()
    while engine.placement.phase != "ready" or engine.compile_state.startswith("compiling"):
        time.sleep(0.1)

    def inproc() -> float:
        n, t0 = 0, time.perf_counter()
        for prompt in PROMPTS:
            sid = engine.db.create_session(None, Controls(**controls).model_dump(mode="json"))
            engine.submit(sid, prompt, False)
            while engine.busy(sid):
                time.sleep(0.005)
            n += sum(1 for e in engine.db.events(sid) if e["type"] == "token")
        return n / (time.perf_counter() - t0)

    def http() -> tuple[float, list[float]]:
        n, ttfts, t0 = 0, [], time.perf_counter()
        for prompt in PROMPTS:
            sid = worker.session(controls=controls)
            sent = time.perf_counter()
            worker.say(sid, prompt)
            first = None
            for event in worker.stream(sid):
                if event["type"] == "token":
                    n += 1
                    first = first or time.perf_counter()
            ttfts.append((first or time.perf_counter()) - sent)
        return n / (time.perf_counter() - t0), ttfts

    def control_latency() -> list[int]:
        """Move the cap slider mid-reply, over HTTP, three times; count tokens made after the change arrived."""
        sid = worker.session(controls=dict(controls, max_new_tokens=max(tokens, 60)))
        turn = worker.say(sid, PROMPTS[0])["assistant_turns"][0]
        for k, pct in ((10, 25.0), (25, 50.0), (40, 90.0)):
            worker.wait_tokens(sid, turn, k)
            worker.client.patch(f"/sessions/{sid}/controls", json={"cap_percentile": pct})
        worker.wait_idle(sid)
        out, pending = [], None
        for e in worker.events(sid):
            if e["type"] == "controls":
                pending = 0
            elif e["type"] == "token" and pending is not None:
                pending += 1
            elif e["type"] == "controls_applied" and pending is not None:
                out.append(pending)
                pending = None
        return out

    def compare_over_single() -> float:
        """Time per decode step of a compare pair (one batch of two rows) over a single turn's, in process."""
        times = {}
        for compare in (False, True):
            sid = engine.db.create_session(None, Controls(**controls).model_dump(mode="json"))
            t0 = time.perf_counter()
            turns = engine.submit(sid, PROMPTS[1], compare)[1]
            while engine.busy(sid):
                time.sleep(0.005)
            elapsed = time.perf_counter() - t0
            steps = max(sum(1 for e in engine.db.events(sid) if e["type"] == "token" and e["turn"] == t) for t in turns)
            times[compare] = elapsed / max(steps, 1)
        return times[True] / times[False]

    inproc()  # warm both paths
    http()
    inproc_rates, http_rates, ttfts = [], [], []
    for _ in range(rounds):
        inproc_rates.append(inproc())
        rate, firsts = http()
        http_rates.append(rate)
        ttfts += firsts
        print(f"in-process {inproc_rates[-1]:.1f} tok/s   http {http_rates[-1]:.1f} tok/s", file=sys.stderr)
    latency = control_latency()
    compare_ratios = [compare_over_single() for _ in range(rounds)]
    worker.close()
    engine.close()
    engine.thread.join(timeout=30)  # a daemon thread still inside torch at exit would abort the interpreter
    print(
        json.dumps(
            {
                "model": loaded.info.name,
                "device": loaded.info.device,
                "precision": args.precision,
                "tokens_per_turn": tokens,
                "rounds": rounds,
                "inproc_tok_s": round(statistics.median(inproc_rates), 2),
                "http_tok_s": round(statistics.median(http_rates), 2),
                "ratio": round(statistics.median(h / i for h, i in zip(http_rates, inproc_rates, strict=True)), 4),
                "ttft_s": round(statistics.median(ttfts), 3),
                "control_latency_tokens": max(latency) if latency else None,
                "control_latency_samples": latency,
                "ready_s": round(ready_s, 2),
                "map_ready_s": round(map_ready_s, 2),
                "compare_over_single": round(statistics.median(compare_ratios), 3),
                "decode_step": engine.compile_state,
                "compiled_s": compiled_s,
            }
        )
    )


if __name__ == "__main__":
    use_scratch_cache()  # never the user's cache folder: their sessions database, their converted models
    main()
