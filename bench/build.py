"""Builder throughput: generate + capture (what `python -m backend build` does per chunk: the decode engine with a
static KV cache and the capture hooks) vs plain batched Hugging Face `generate` (no hooks, `nn.Linear`'s own
products) on the same prompts and settings, alternating in one process. The last line is JSON.

    python bench/build.py --quick

With ``--generator openai --generator-url URL[,URL...]``: the generate stage on a completions server (vLLM, SGLang,
llama.cpp's server; PERSONA_SPACE_GENERATOR_* settings apply) vs in-process generate + capture on the same prompts,
and the teacher-forced capture the served path adds on this machine, each in tokens/s.

With ``--traits`` (after the above, unchanged): the trait build's generate + capture (a chunk of ``build-traits``
answers: trait instructions over questions) vs the persona build's (a chunk of role answers), the same number of
answers with the same ``max_new_tokens`` through the same engine, alternating, each chunk drawn evenly across its
build's whole plan; the last line is then their JSON (``trait_answers_per_s``, ``persona_answers_per_s``, ``ratio``,
and the chunks' mean prompt tokens).
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

from backend.build.local import generate_chunk
from backend.build.local import stop_ids as _stop_ids
from backend.build.plan import chunks_of, plan_units
from backend.build.settings import BuildSettings
from backend.catalogue import load_catalogue
from backend.kernels import small_batch
from backend.models.chat import encode_prompt
from backend.models.loading import load_model
from tests.helpers.scratch import use_scratch_cache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 1 chunk (a few minutes on 2 cores)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--generator", choices=["hf", "openai"], default="hf")
    parser.add_argument("--generator-url", default=None, help="base URL(s) of the completions server(s), comma-separated")
    parser.add_argument("--traits", action="store_true", help="also: trait build vs persona build, answers/s")
    args = parser.parse_args()
    rounds = args.rounds or (2 if args.quick else 4)

    loaded = load_model(args.model)
    model, tok = loaded.model, loaded.tokenizer
    settings = BuildSettings(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
    units = chunks_of(plan_units(load_catalogue(), settings, loaded.info.name), settings.batch_size)[1]  # a chunk of roles
    device = next(model.parameters()).device
    stop = set(_stop_ids(loaded))

    def plain(seed: int) -> int:
        prompts = [encode_prompt(tok, u.system, [{"role": "user", "content": u.text}]) for u in units]
        width = max(len(p) for p in prompts)
        pad = int(tok.pad_token_id)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        torch.manual_seed(seed)
        with torch.inference_mode(), small_batch.plain(model):
            out = model.generate(
                input_ids=ids, attention_mask=attention, max_new_tokens=settings.max_new_tokens, do_sample=True,
                temperature=settings.temperature, top_p=settings.top_p, top_k=0, pad_token_id=pad,
            )  # fmt: skip
        total = 0
        for row in out[:, width:].tolist():
            for token in row:
                if token in stop:
                    break
                total += 1
        return total

    def built(seed: int) -> int:
        _, records = generate_chunk(loaded, units, settings, seed)
        return sum(r["n_tokens"] for r in records)

    def timed(fn, seed: int) -> float:  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        n = fn(seed)
        return n / (time.perf_counter() - t0)

    if args.generator == "openai":
        served_bench(loaded, units, settings, args.generator_url or "", rounds, timed)
        return

    timed(plain, 0)
    timed(built, 0)
    plain_rates, build_rates = [], []
    for r in range(rounds):
        plain_rates.append(timed(plain, r + 1))
        build_rates.append(timed(built, r + 1))
        print(f"plain {plain_rates[-1]:.1f} tok/s   build {build_rates[-1]:.1f} tok/s", file=sys.stderr)
    print(
        json.dumps(
            {
                "model": loaded.info.name,
                "device": loaded.info.device,
                "threads": torch.get_num_threads(),
                "batch_size": settings.batch_size,
                "max_new_tokens": settings.max_new_tokens,
                "rounds": rounds,
                "plain_tok_s": round(statistics.median(plain_rates), 2),
                "build_tok_s": round(statistics.median(build_rates), 2),
                "ratio": round(statistics.median(b / p for b, p in zip(build_rates, plain_rates, strict=True)), 4),
            }
        )
    )
    if args.traits:
        trait_bench(loaded, units, settings, rounds)


def trait_bench(loaded, persona_units, settings: BuildSettings, rounds: int) -> None:  # type: ignore[no-untyped-def]
    """The trait build's chunk vs the persona build's, same size and settings, alternating; answers/s."""
    from backend.build.trait_settings import TraitSettings
    from backend.build.traits import plan_trait_units
    from backend.catalogue.traits import load_traits

    trait_settings = TraitSettings(batch_size=settings.batch_size, max_new_tokens=settings.max_new_tokens)
    run_settings = trait_settings.executor_settings()  # what build-traits hands the engine
    # both chunks drawn evenly across their whole plans, so their prompts are as long as the builds' own on average (the
    # first trait's instructions are a third longer than the first chunk of roles' prompts: 55 against 41 tokens)
    n = len(persona_units)
    every_trait = plan_trait_units(load_traits(), load_catalogue().questions, trait_settings)
    every_role = plan_units(load_catalogue(), settings, loaded.info.name)
    trait_units = every_trait[:: max(1, len(every_trait) // n)][:n]
    persona_units = every_role[:: max(1, len(every_role) // n)][:n]

    def prompt_tokens(units) -> float:  # type: ignore[no-untyped-def]
        tok = loaded.tokenizer
        texts = [
            tok.apply_chat_template(
                ([{"role": "system", "content": u.system}] if u.system else []) + [{"role": "user", "content": u.text}],
                add_generation_prompt=True, tokenize=False,
            )
            for u in units
        ]  # fmt: skip
        return statistics.mean(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)

    def rate(units, run, seed: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        _, records = generate_chunk(loaded, units, run, seed)
        elapsed = time.perf_counter() - t0
        return len(records) / elapsed, sum(r["n_tokens"] for r in records) / elapsed

    rate(trait_units, run_settings, 0)
    rate(persona_units, settings, 0)
    traits, personas = [], []
    for r in range(rounds):
        traits.append(rate(trait_units, run_settings, r + 1))
        personas.append(rate(persona_units, settings, r + 1))
        print(f"traits {traits[-1][0]:.2f} answers/s   personas {personas[-1][0]:.2f} answers/s", file=sys.stderr)
    print(
        json.dumps(
            {
                "model": loaded.info.name,
                "threads": torch.get_num_threads(),
                "answers_per_chunk": len(trait_units),
                "max_new_tokens": settings.max_new_tokens,
                "rounds": rounds,
                "trait_answers_per_s": round(statistics.median(t for t, _ in traits), 3),
                "persona_answers_per_s": round(statistics.median(p for p, _ in personas), 3),
                "ratio": round(statistics.median(t[0] / p[0] for t, p in zip(traits, personas, strict=True)), 4),
                "trait_tok_s": round(statistics.median(t for _, t in traits), 2),
                "persona_tok_s": round(statistics.median(t for _, t in personas), 2),
                "trait_prompt_tokens": round(prompt_tokens(trait_units), 1),
                "persona_prompt_tokens": round(prompt_tokens(persona_units), 1),
            }
        )
    )


def served_bench(loaded, units, settings, urls: str, rounds: int, timed) -> None:  # type: ignore[no-untyped-def]
    """Generate stage on the server(s) vs in-process generate + capture, alternating; and the teacher-forced capture
    the served path adds, timed over the in-process answers (realistic lengths; a stand-in's answers are short)."""
    import os

    from backend.build.plan import chunk_seed
    from backend.build.served import endpoint_settings, make_ask, probe, request_seed
    from backend.openai_client import EndpointPool
    from backend.reading.teacher_forcing import teacher_forced_means

    pool = EndpointPool(endpoint_settings([u.strip() for u in urls.split(",") if u.strip()]))
    models = probe(pool, os.environ)
    ask = make_ask(pool, models, loaded, settings, os.environ)
    answers: list[list[int]] = []

    def served(seed: int) -> int:
        executor = pool.executor()
        try:
            futures = [executor.submit(ask, u, request_seed(chunk_seed(seed, 1), row)) for row, u in enumerate(units)]
            records = [f.result() for f in futures]
        finally:
            executor.shutdown(wait=True, cancel_futures=True)
        return sum(r["n_tokens"] for r in records)

    def in_process(seed: int) -> int:
        _, records = generate_chunk(loaded, units, settings, seed)
        answers[:] = [r["tokens"] for r in records]  # realistic lengths for the capture timing
        return sum(r["n_tokens"] for r in records)

    def capture(seed: int) -> int:
        teacher_forced_means(loaded, units, answers)
        return sum(len(a) for a in answers)

    timed(served, 0)
    timed(in_process, 0)
    served_rates, hf_rates, capture_rates = [], [], []
    for r in range(rounds):
        served_rates.append(timed(served, r + 1))
        hf_rates.append(timed(in_process, r + 1))
        capture_rates.append(timed(capture, r + 1))  # over the in-process answers just generated
        print(
            f"served generate {served_rates[-1]:.1f} tok/s   capture {capture_rates[-1]:.1f} tok/s   "
            f"hf generate+capture {hf_rates[-1]:.1f} tok/s",
            file=sys.stderr,
        )
    pool.close()
    print(
        json.dumps(
            {
                "model": loaded.info.name,
                "servers": [f"{e.url} {m}" for e, m in zip(pool.endpoints, models, strict=True)],
                "concurrency_per_server": pool.settings.concurrency,
                "threads": torch.get_num_threads(),
                "batch_size": settings.batch_size,
                "max_new_tokens": settings.max_new_tokens,
                "rounds": rounds,
                "served_generate_tok_s": round(statistics.median(served_rates), 2),
                "teacher_forced_capture_tok_s": round(statistics.median(capture_rates), 2),
                "hf_generate_capture_tok_s": round(statistics.median(hf_rates), 2),
                "served_over_hf": round(statistics.median(s / h for s, h in zip(served_rates, hf_rates, strict=True)), 4),
            }
        )
    )


if __name__ == "__main__":
    use_scratch_cache()  # never the user's cache folder: their sessions database, their converted models
    main()
