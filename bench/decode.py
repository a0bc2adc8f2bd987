"""Decode engine vs plain Hugging Face eager ``generate``: tokens/s, per-token latency, projection error.

On the embedded default, greedy, fixed prompts, runs alternate: plain ``model.generate`` without any hook vs the
engine (:mod:`backend.decode.engine`: static KV cache, few-row products as ``W @ x^T`` (:mod:`backend.kernels.small_batch`),
compiled step when ``--compile``) with the monitor at the target
layer and a cap on 8 layers (a random unit direction, floor 0: about half the tokens move). Every run makes
exactly ``--tokens`` tokens per prompt (EOS ignored). ``max_projection_error`` is the largest difference of the
engine's per-token monitor readings in ``--mode`` from the float32 eager engine's on the same tokens (teacher
forced), and ``diverged_prompts`` counts prompts whose greedy tokens differ from float32's. ``hf_small_batch_tok_s`` is
plain ``generate`` with the engine's few-row products: how much of the speedup is the product layout alone. With
``--compile``, ``worker_step_tok_s`` is the worker's own decode step for a single turn (:mod:`backend.decode.compiled`:
one row, hooks on every layer, a 512-position cache), greedy, readouts copied every step.

``--mode``: ``float32`` (the default), ``bfloat16`` (the whole model; the HF baseline then runs in bfloat16 too) or
``int8`` (:mod:`backend.kernels.int8_linear`: int8 weights, bfloat16 activations into the products, everything else
float32; the HF baseline is the float32 model). ``diverged_at`` gives, per prompt, the first generated token that
differs from float32's greedy reply (null: none). ``projection_tolerance`` is the error a mode may have to be the
default: 1% of the standard deviation of float32's per-token monitor readings on these prompts. The last line is
JSON.

``--random-config NAME`` (``llama3-8b``, ``qwen2.5-7b``, ``tiny-llama``; the shapes of ``bench/hooks.py``) runs a
randomly initialised model of that shape instead, on CUDA when present, with random prompts: nothing downloads. The
float32 reference runs first, then the model is cast to ``--mode``. ``--cuda-graphs`` compiles with
``mode="reduce-overhead"`` (CUDA graphs; the row controls' tensors are marked as static addresses). On one GPU:

    python bench/decode.py --quick --random-config llama3-8b --mode bfloat16 --compile --cuda-graphs

    python bench/decode.py --quick
    python bench/decode.py --quick --mode int8 --compile
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from backend.decode.compiled import CompiledRows
from backend.decode.engine import CompiledStep, Decoder
from backend.hooks.rows import RowControls
from backend.kernels import int8_linear, small_batch
from backend.models.chat import encode_prompt
from backend.models.loading import cache_dir, load_model
from bench.hooks import RANDOM_CONFIGS, random_model
from tests.helpers.scratch import use_scratch_cache

PROMPTS = [
    "Explain how a bicycle gear works.",
    "Write a short poem about the sea.",
    "What should I cook tonight with rice and beans?",
    "Tell me about yourself.",
]
MODES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "int8": torch.float32}  # the model's dtype per mode
TOLERANCE = 0.01  # of the float32 readings' standard deviation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 4 prompts x 48 tokens")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--tokens", type=int, default=None)
    parser.add_argument("--mode", choices=sorted(MODES), default="float32")
    parser.add_argument("--compile", action="store_true", help="torch.compile the decode step (waits for it first)")
    parser.add_argument("--random-config", choices=sorted(RANDOM_CONFIGS), default=None, help="random weights of this shape")
    parser.add_argument("--cuda-graphs", action="store_true", help="with --compile on CUDA: mode='reduce-overhead'")
    args = parser.parse_args()
    if args.mode == "int8" and args.random_config and torch.cuda.is_available():
        parser.error("--mode int8 runs on a CPU only (the packed int8 kernel of backend/kernels/int8_linear.py)")
    rounds = args.rounds or (2 if args.quick else 5)
    n = args.tokens or (48 if args.quick else 128)

    torch.manual_seed(0)
    if args.random_config:
        model, info = random_model(args.random_config, dtype=torch.float32)  # the float32 reference first
        g = torch.Generator().manual_seed(0)
        prompts = [torch.randint(10, model.config.vocab_size, (24,), generator=g).tolist() for _ in PROMPTS]
        pad = 0
    else:
        loaded = load_model(args.model, device="cpu" if args.mode == "int8" else None)  # int8 is a CPU mode
        model, tok, info = loaded.model, loaded.tokenizer, loaded.info
        prompts = [encode_prompt(tok, None, [{"role": "user", "content": p}]) for p in PROMPTS]
        pad = int(tok.pad_token_id if tok.pad_token_id is not None else 0)
    device = next(model.parameters()).device
    axis = torch.randn(info.n_layers, info.hidden)
    start = max(0, min(info.cap_window[0], info.n_layers - 8))
    cap_layers = list(range(start, start + 8))
    compile_mode = "reduce-overhead" if args.cuda_graphs and device.type == "cuda" else None

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def static(rc: RowControls) -> RowControls:
        """Under CUDA graphs the row tensors must keep their addresses (they are overwritten in place)."""
        if compile_mode is not None:
            for value in vars(rc).values():
                if isinstance(value, torch.Tensor) and value.is_cuda:
                    torch._dynamo.mark_static_address(value)
        return rc

    def controls(dtype: torch.dtype) -> RowControls:
        rc = RowControls(
            1, info.n_layers, info.hidden, cap_directions=axis, monitor=(info.target_layer, axis[info.target_layer]),
            layers=cap_layers, dtype=dtype, device=device,
        )  # fmt: skip
        rc.set_cap(0, dict.fromkeys(cap_layers, 0.0))
        return static(rc)

    pool: dict = {}  # one static cache reused by every run: a compiled step is traced once

    def engine(
        m: torch.nn.Module,
        rc: RowControls,
        prompt: list[int],
        step: object = None,
        force: list[int] | None = None,
        pooled: bool = True,
    ) -> tuple[list[int], list[float], list[float]]:
        decoder = Decoder(m, rc, pad_id=pad, step_forward=step, cache_pool=pool if pooled else None, bucket=256)  # type: ignore[arg-type]
        with rc.attach(m):  # the same hook functions each time: the compiled step is not retraced
            logits = decoder.start([prompt], n)
            tokens, readings, times = [], [], []
            for i in range(n):
                t0 = time.perf_counter()
                token = force[i] if force is not None else int(logits[0].argmax())
                logits = decoder.step([token])
                readings.append(float(rc.readouts().monitor[0]))  # type: ignore[index]
                times.append(time.perf_counter() - t0)
                tokens.append(token)
        return tokens, readings, times

    # the float32 eager reference, then the mode under test
    ref = [engine(model, controls(torch.float32), p, pooled=False) for p in prompts]
    fast = model.to(MODES[args.mode])  # in place: the float32 reference ran first
    if args.mode == "int8":
        int8_linear.install(fast)
    rc = controls(MODES[args.mode])
    step = None
    compile_s = None
    if args.compile:
        compiled = CompiledStep(fast, lambda forward: None, cache_dir=str(cache_dir() / "inductor"), mode=compile_mode)
        compiled.start().ready.wait()
        t0 = time.perf_counter()
        engine(fast, rc, prompts[0], compiled.forward)  # the first call compiles (inductor's disk cache helps later)
        compile_s = round(time.perf_counter() - t0, 1)
        step = compiled.forward
    # the worker's own configuration for a single turn: the compiled one-row step on a shadow of the model, hooks on
    # every layer (cap and steering windows are live controls), the cap on 8 of them, a 512-position cache
    worker_step = None
    if args.compile:
        factory = lambda rows: static(  # noqa: E731
            RowControls(
                rows, info.n_layers, info.hidden, cap_directions=axis, steer_vectors=axis * 0.0,
                monitor=(info.target_layer, axis[info.target_layer]), capture_layer=info.target_layer,
                dtype=MODES[args.mode], device=device,
            )
        )  # fmt: skip
        worker_step = CompiledRows(
            fast, factory, rows=1, capacity=512, pad_id=pad, cache_dir=str(cache_dir() / "inductor"), mode=compile_mode
        ).start()
        worker_step.step.ready.wait()
        worker_step.controls.set_cap(0, dict.fromkeys(cap_layers, 0.0))

    def worker_rate() -> float:
        assert worker_step is not None
        t0 = time.perf_counter()
        for p in prompts:
            decoder = worker_step.decoder()
            logits = decoder.start([p], worker_step.capacity - len(p))
            for _ in range(n):
                logits = decoder.step([int(logits[0].argmax())])
                worker_step.controls.readouts()
        sync()
        return len(prompts) * n / (time.perf_counter() - t0)

    errors: list[float] = []
    diverged_at: list[int | None] = []
    for p, (tokens, readings, _) in zip(prompts, ref, strict=True):
        _, forced, _ = engine(fast, rc, p, step, force=tokens)
        errors.append(max(abs(a - b) for a, b in zip(forced, readings, strict=True)))
        own, _, _ = engine(fast, rc, p, step)
        diverged_at.append(next((i for i, (a, b) in enumerate(zip(own, tokens, strict=True)) if a != b), None))
    spread = statistics.pstdev(r for _, readings, _ in ref for r in readings)

    def hf(small: bool = False) -> float:
        """Plain ``generate`` with ``nn.Linear``'s own products (or, ``small``, with :mod:`backend.kernels.small_batch`'s)."""
        t0 = time.perf_counter()
        for p in prompts:
            ids = torch.tensor([p], device=device)
            with (
                torch.inference_mode(),
                int8_linear.off(fast),  # no-op unless --mode int8: the baseline is the float32 model
                contextlib.nullcontext() if small else small_batch.plain(fast),
            ):
                if small:
                    small_batch.install(fast)  # what load_model installs (int8 mode had removed it)
                fast.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=n,
                    min_new_tokens=n,
                    do_sample=False,
                    pad_token_id=pad,
                )
        sync()
        return len(prompts) * n / (time.perf_counter() - t0)

    def ours(latencies: list[float]) -> float:
        t0 = time.perf_counter()
        for p in prompts:
            latencies += engine(fast, rc, p, step)[2]
        sync()
        return len(prompts) * n / (time.perf_counter() - t0)

    hf(), ours([])  # warm up
    hf_rates: list[float] = []
    engine_rates: list[float] = []
    small_rates: list[float] = []
    worker_rates: list[float] = []
    latencies: list[float] = []
    for _ in range(rounds):
        hf_rates.append(hf())
        engine_rates.append(ours(latencies))
        if device.type == "cpu":  # the few-row products are a CPU's
            small_rates.append(hf(small=True))
        if worker_step is not None:
            worker_rates.append(worker_rate())
            print(f"worker's step {worker_rates[-1]:.1f} tok/s", file=sys.stderr)
        print(
            f"hf {hf_rates[-1]:.1f} tok/s   engine {engine_rates[-1]:.1f} tok/s"
            + (f"   hf+small_batch {small_rates[-1]:.1f}" if small_rates else ""),
            file=sys.stderr,
        )
    latencies.sort()
    result = {
        "model": info.name,
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "mode": args.mode,
        "compiled": args.compile,
        "compile_s": compile_s,
        "threads": torch.get_num_threads(),
        "tokens_per_prompt": n,
        "prompts": len(prompts),
        "rounds": rounds,
        "cap_layers": cap_layers,
        "monitor_layer": info.target_layer,
        "hf_tok_s": round(statistics.median(hf_rates), 2),
        "engine_tok_s": round(statistics.median(engine_rates), 2),
        "hf_small_batch_tok_s": round(statistics.median(small_rates), 2) if small_rates else None,
        "speedup": round(statistics.median(e / h for e, h in zip(engine_rates, hf_rates, strict=True)), 3),
        "max_projection_error": round(max(errors), 6),
        "projection_tolerance": round(TOLERANCE * spread, 6),
        "within_tolerance": max(errors) <= TOLERANCE * spread,
        "diverged_prompts": sum(d is not None for d in diverged_at),
        "diverged_at": diverged_at,
        "hf_mode": "bfloat16" if args.mode == "bfloat16" else "float32",
        "latency_ms_p50": round(1000 * latencies[len(latencies) // 2], 2),
        "latency_ms_p95": round(1000 * latencies[int(len(latencies) * 0.95)], 2),
    }
    if worker_rates:
        result["worker_step_tok_s"] = round(statistics.median(worker_rates), 2)
        result["worker_step_speedup"] = round(statistics.median(w / h for w, h in zip(worker_rates, hf_rates, strict=True)), 3)
    print(json.dumps(result))


if __name__ == "__main__":
    use_scratch_cache()  # never the user's cache folder: their sessions database, their converted models
    main()
