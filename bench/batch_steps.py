"""The shared batch's decode step, eager vs compiled, for 1 to 4 rows: which row counts a compiled step pays for.

On the embedded default with its shipped space and the worker's own row controls (the axis and every trait as
steering sets, the monitor and the capture at the target layer, the cap on the space's window for every row), a
:class:`backend.decode.batch.Batch` of ``rows`` rows (prompts of the same length, the chat's 160-token budget) is
stepped ``--tokens`` times eagerly (its cache sized to what the rows need) and on compiled fixed shapes (1, 2 and 4
rows x ``--capacity`` positions; 3 rows run on the 4-row shape), alternating, each twice; the median step time is
kept. Per row count: ``eager_ms``, ``compiled_ms``, ``speedup`` (eager over compiled) and the compiled step's
aggregate tokens/s; ``one_at_a_time_compiled_ms`` is the one-at-a-time engine's compiled one-row step (``serve
--batch-rows 1``) on the same shape, for comparison. Compiling each shape is timed too (``compile_s``; inductor's disk cache under the scratch cache).
The last line is JSON.

    python bench/batch_steps.py --quick
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

from backend.decode.batch import Batch
from backend.decode.compiled import CompiledRows
from backend.hooks.rows import RowControls
from backend.models.loading import cache_dir, load_model
from backend.reading.turn_traits import TurnTraits
from backend.store.space import load_space
from backend.worker.steering import Steering
from tests.helpers.scratch import use_scratch_cache

SPACE = Path(__file__).resolve().parents[1] / "cached_activations" / "smollm2-135m"
BUDGET = 160  # the chat's default max_new_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="24 steps per run instead of 64")
    parser.add_argument("--tokens", type=int, default=None)
    parser.add_argument("--capacity", type=int, default=512)
    parser.add_argument("--prompt-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the worker's)")
    args = parser.parse_args()
    steps_per_run = args.tokens or (24 if args.quick else 64)
    use_scratch_cache()
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model("smollm2-135m")
    model, info = loaded.model, loaded.info
    space = load_space(SPACE)
    axis = space.tensors["axis"]
    vectors = Steering(space, TurnTraits.of(space)).vectors
    window = range(*(space.manifest.get("cap_window") or info.cap_window))
    pad = int(loaded.tokenizer.pad_token_id or 0)

    def make(n: int) -> RowControls:
        return RowControls(
            n, info.n_layers, int(axis.shape[1]), cap_directions=axis, steer_vectors=vectors,
            monitor=(space.target_layer, axis[space.target_layer]), capture_layer=space.target_layer,
        )  # fmt: skip

    compiled: list[CompiledRows] = []
    compile_s: dict[str, float] = {}
    for rows in (1, 2, 4):
        t0 = time.perf_counter()
        step = CompiledRows(
            model, make, rows=rows, capacity=args.capacity, pad_id=pad, layers_path=info.layers_path,
            cache_dir=str(cache_dir() / "inductor"),
        ).start()  # fmt: skip
        step.step.ready.wait()
        if step.error is not None:
            raise SystemExit(f"compiling {rows} rows failed: {step.error}")
        compile_s[str(rows)] = round(time.perf_counter() - t0, 1)
        compiled.append(step)
    print(f"compiled in {compile_s} s", flush=True)
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(100, 40000, (args.prompt_tokens,), generator=gen).tolist() for _ in range(4)]

    def run(rows: int, fixed: bool) -> float:
        """Median seconds per step of a batch of ``rows`` rows."""
        batch = Batch(model, make, layers_path=info.layers_path, pad_id=pad, compiled=(lambda: compiled) if fixed else None)
        logits = []
        for p in prompts[:rows]:

            def configure(c: RowControls, k: int) -> None:
                c.set_cap(k, dict.fromkeys(window, 0.0))

            logits.append(batch.join(p, BUDGET, configure)[1])
        assert (batch.on is not None) == fixed
        times = []
        with torch.inference_mode():
            for _ in range(steps_per_run):
                t0 = time.perf_counter()
                out = batch.step([int(x.argmax()) for x in logits])
                batch.readouts()
                times.append(time.perf_counter() - t0)
                logits = list(out)
        batch.leave(list(range(batch.rows)))
        return statistics.median(times[2:])

    def serial() -> float:
        """Median seconds per step of the one-at-a-time engine's compiled one-row decoder (``serve --batch-rows 1``)."""
        step = compiled[0]
        step.controls.set_cap(0, dict.fromkeys(window, 0.0))
        decoder = step.decoder()
        logits = decoder.start([prompts[0]], step.capacity - len(prompts[0]))
        times = []
        with torch.inference_mode():
            for _ in range(steps_per_run):
                t0 = time.perf_counter()
                logits = decoder.step([int(logits[0].argmax())])
                step.controls.readouts()
                times.append(time.perf_counter() - t0)
        return statistics.median(times[2:])

    results: dict[str, dict[str, float]] = {}
    alone = statistics.median([serial(), serial()])
    print(f"one-at-a-time compiled step: {alone * 1000:.2f} ms", flush=True)
    for rows in (1, 2, 3, 4):
        eager, fixed = [], []
        for _ in range(2):  # alternating
            eager.append(run(rows, False))
            fixed.append(run(rows, True))
        e, c = statistics.median(eager), statistics.median(fixed)
        results[str(rows)] = {
            "eager_ms": round(e * 1000, 2), "compiled_ms": round(c * 1000, 2), "speedup": round(e / c, 3),
            "compiled_tok_s": round(rows / c, 1), "eager_tok_s": round(rows / e, 1),
        }  # fmt: skip
        print(f"{rows} rows: {results[str(rows)]}", flush=True)
    print(json.dumps({
        "threads": torch.get_num_threads(), "capacity": args.capacity, "compile_s": compile_s,
        "one_at_a_time_compiled_ms": round(alone * 1000, 2), "rows": results,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
