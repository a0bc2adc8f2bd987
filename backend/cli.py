"""Command line: ``python -m backend <command>``. Errors of this package print as one line, exit code 2."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from backend.errors import PersonaSpaceError
from backend.models import DEFAULT_MODEL
from backend.recipes import DEFAULT_RECIPE as RECIPE_DEFAULT


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"model spec: embedded name, .gguf, folder or hub id (default {DEFAULT_MODEL})"
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (default: cuda if present)")
    parser.add_argument(
        "--cache", default=None, help="folder for converted models (default: $PERSONA_SPACE_CACHE or the user cache)"
    )
    parser.add_argument("--trust-remote-code", action="store_true", help="allow a hub model's own code to run")
    parser.add_argument("--layers-path", default=None, help="attribute path of the decoder layers, e.g. model.layers")


def _add_space_args(parser: argparse.ArgumentParser, recipe_default: str | None) -> None:
    from backend.recipes import RECIPE_DOC

    parser.add_argument(
        "--recipe",
        default=recipe_default,
        choices=sorted(RECIPE_DOC),
        help="role-vector recipe: "
        + "; ".join(f"{k}: {v}" for k, v in RECIPE_DOC.items())
        + (f" (default {recipe_default})" if recipe_default else " (default: the build's)"),
    )
    parser.add_argument("--target-layer", type=int, default=None, help="layer the space is drawn at (default: the model's)")


def _load(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from backend.models import load_model

    return load_model(
        args.model, cache=args.cache, device=args.device, trust_remote_code=args.trust_remote_code, layers_path=args.layers_path
    )


def cmd_model_info(args: argparse.Namespace) -> int:
    info = _load(args).info.to_dict()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key:>16}: {value}")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from backend.generate import Sampling, generate_reply

    loaded = _load(args)
    sampling = Sampling(max_new_tokens=args.max_new_tokens, greedy=not args.sample, seed=args.seed)
    turns: list[dict[str, str]] = []
    prompts = [args.prompt] if args.prompt else None
    print(
        f"{loaded.info.name}: {loaded.info.n_layers} layers x {loaded.info.hidden}. Empty line or Ctrl-D to quit.",
        file=sys.stderr,
    )
    while True:
        if prompts is not None:
            if not prompts:
                return 0
            text = prompts.pop()
        else:
            try:
                text = input("you> ")
            except EOFError:
                return 0
            if not text.strip():
                return 0
        turns.append({"role": "user", "content": text})

        def show(token: int) -> None:
            print(loaded.tokenizer.decode([token], skip_special_tokens=True), end="", flush=True)

        _, new = generate_reply(loaded, turns, system=args.system, sampling=sampling, on_token=show)
        print()
        turns.append({"role": "assistant", "content": loaded.tokenizer.decode(new, skip_special_tokens=True)})


def cmd_build(args: argparse.Namespace) -> int:
    from pathlib import Path

    from backend.builder import BuildSettings, build, parse_shard
    from backend.catalogue import load_catalogue

    settings = BuildSettings(
        prompts_per_role=args.prompts_per_role,
        questions_per_role=args.questions_per_role,
        default_questions=args.default_questions,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        batch_size=args.batch_size,
        judge=args.judge,
        min_in_role=args.min_in_role,
        roles=tuple(args.roles.split(",")) if args.roles else None,
        recipe=args.recipe,
        target_layer=args.target_layer,
        generator=args.generator,
        generator_urls=tuple(u.strip().rstrip("/") for u in (args.generator_url or "").split(",") if u.strip()),
    )
    shard = parse_shard(args.shard)
    catalogue = load_catalogue(args.catalogue)
    out = Path(args.out)
    work = Path(args.work) if args.work else out.with_name(f".{out.name}.work")

    def log(message: str) -> None:
        print(message, file=sys.stderr)

    if args.ray is None:
        build(_load(args), catalogue, settings, out, work, shard, log=log)
        return 0
    from backend.distributed import RayModels, load_args, ray_options

    if args.shard is not None:
        raise PersonaSpaceError("--ray and --shard do not go together: Ray spreads the chunks itself")
    if settings.generator != "hf":
        raise PersonaSpaceError("--ray and --generator openai do not go together yet: the servers spread the generation")
    with RayModels(load_args(args), ray_options(args), log) as models:  # the model is loaded on the actors only
        build(None, catalogue, settings, out, work, log=log, executor=models)
    return 0


def cmd_rebuild(args: argparse.Namespace) -> int:
    from pathlib import Path

    from backend.builder import rebuild
    from backend.catalogue import load_catalogue

    changes = {"recipe": args.recipe, "min_in_role": args.min_in_role, "target_layer": args.target_layer, "judge": args.judge}
    changes = {k: v for k, v in changes.items() if v is not None}
    rebuild(Path(args.work), load_catalogue(args.catalogue), Path(args.out), log=lambda m: print(m, file=sys.stderr), **changes)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from backend.space_info import format_info, space_info
    from backend.store import load_space

    info = space_info(load_space(args.space))
    print(json.dumps(info) if args.json else format_info(info))
    return 0


def cmd_import_paper_vectors(args: argparse.Namespace) -> int:
    from pathlib import Path

    from backend.paper_import import import_paper_vectors

    path, report = import_paper_vectors(
        Path(args.folder), Path(args.out), model_name=args.model_name, target_layer=args.target_layer
    )
    if args.json:
        print(json.dumps(report, default=str))
    else:
        cos = report["axis_cosine"]
        print(
            f"wrote {path}: {report['roles']} roles, {report['traits']} traits, {report['n_layers']} layers x {report['hidden']}"
        )
        print(f"released axis vs default - mean(roles): cosine min {cos['min']:.4f}, mean {cos['mean']:.4f}")
        for preset in report.get("cap_presets", []):
            print(f"cap preset {preset}")
        for skipped in report.get("skipped_presets", []):
            print(f"skipped cap preset {skipped}")
        for warning in report.get("warnings", []):
            print(f"warning: {warning}", file=sys.stderr)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import logging

    from backend.worker.server import read_token, serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    token = read_token(args.token, args.token_file)
    serve(
        args.model, args.space, host=args.host, port=args.port, db_path=args.db, token=token,
        device=args.device, cache=args.cache, trust_remote_code=args.trust_remote_code, compile=args.compile,
        precision=args.precision,
    )  # fmt: skip
    return 0


def cmd_project_transcript(args: argparse.Namespace) -> int:
    from backend.store import load_space
    from backend.transcripts import project_transcript, read_transcripts

    transcripts = read_transcripts(args.files)
    options = {"layer": args.layer, "window": args.window, "history": args.history, "tokens": args.tokens}
    options["allow_window"] = not args.no_window
    if args.ray is None:
        loaded = _load(args)
        space = load_space(args.space, fingerprint=loaded.info.fingerprint, model_name=loaded.info.name)
        projected = [project_transcript(loaded, space, transcript, **options) for _, transcript in transcripts]
    else:
        from backend.distributed import RayModels, load_args, ray_options

        space = load_space(args.space)  # checked against the actors' model, then shared with them
        with RayModels(load_args(args), ray_options(args), lambda m: print(m, file=sys.stderr)) as models:
            projected = models.project(space, [transcript for _, transcript in transcripts], options)
    results = [{"file": name, **result} for (name, _), result in zip(transcripts, projected, strict=True)]
    if args.json:
        single = len(args.files) == 1 and len(results) == 1 and not Path(args.files[0]).is_dir()
        print(json.dumps(results[0] if single else {"transcripts": results}))
        return 0
    for result in results:
        windowed = f", read in {result['passes']} windows of at most {result['window']}" if result["windowed"] else ""
        print(f"{result['file']}: {result['model']}, layer {result['layer']}, {result['tokens']} tokens{windowed}")
        for turn in result["turns"]:
            near = ", ".join(n["name"] for n in turn.get("nearest", [])[:3])
            value = "no tokens" if turn["projection"] is None else f"{turn['projection']:9.3f}"
            seen = f"   context {turn['context_tokens']}" if "context_tokens" in turn else f"   {turn.get('error', '')}"
            left = f" ({turn['left_out_messages']} earlier messages left out)" if turn.get("left_out_messages") else ""
            print(f"assistant turn {turn['index'] + 1:>3}: {value}{seen}{left}   nearest: {near}")
    return 0


def cmd_drift(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tqdm import tqdm

    from backend import cpu_threads
    from backend.drift import load_scenarios, run_drift
    from backend.store import load_space

    threads = cpu_threads.reserve()  # the engine's generation thread does the work; see backend/cpu_threads.py
    scenarios = load_scenarios(args.scenario)
    loaded = _load(args)
    space = load_space(args.space, fingerprint=loaded.info.fingerprint, model_name=loaded.info.name)
    variants = {"both": ("uncapped", "capped"), "off": ("uncapped",), "on": ("capped",)}[args.cap]
    bar = tqdm(total=1, desc="drift turns", unit="turn", dynamic_ncols=True)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    report = run_drift(
        loaded, space, scenarios, Path(args.out), seeds=[int(s) for s in args.seeds.split(",")], variants=variants,
        cap_percentile=args.cap_percentile, max_new_tokens=args.max_new_tokens, progress=progress, threads=threads,
    )  # fmt: skip
    bar.close()
    for s in report["summary"]:
        print(
            f"{s['domain']:>12} {s['variant']:>9}: first {s['first']:8.2f}  last {s['last']:8.2f}  drift {s['drift']:7.2f}  slope {s['slope_per_turn']:6.3f}/turn"
        )
    print(f"report: {Path(args.out) / 'report.html'}")
    return 0


def cmd_evaluate_cap(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from backend.cap_eval import benign_items, grid, limit_items, load_attacks, parse_windows, run_eval
    from backend.catalogue import load_catalogue
    from backend.store import load_space

    catalogue = load_catalogue(args.catalogue)
    attacks = limit_items(load_attacks(Path(args.attacks) if args.attacks else None), args.limit)
    loaded = _load(args)
    space = load_space(args.space, fingerprint=loaded.info.fingerprint, model_name=loaded.info.name)
    benign = limit_items(benign_items(catalogue, loaded.info.name, args.benign_per_kind), args.limit)
    window = space.manifest.get("cap_window") or list(loaded.info.cap_window)
    windows = parse_windows(args.windows) if args.windows else [(int(window[0]), int(window[1]))]
    settings = grid([float(p) for p in args.percentiles.split(",")], windows)
    judge = make_eval_judge(args.judge, catalogue)
    bar = tqdm(total=1, desc="cap evaluation", unit="batch", dynamic_ncols=True)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    report = run_eval(
        loaded, space, attacks, benign, settings, Path(args.out), judge=judge, max_new_tokens=args.max_new_tokens,
        batch_rows=args.batch_rows, seed=args.seed, kl_bound=args.kl_bound, progress=progress,
    )  # fmt: skip
    bar.close()
    print(f"{'setting':>12} {'adoption':>9} {'refusal':>8} {'KL':>8} {'moved':>7} {'changed':>8}  frontier")
    for r in report["settings"]:
        print(
            f"{r['setting']:>12} {r['adoption']:>9.1%} {r['refusal']:>8.1%} {r['kl']:>8.4f} {r['moved_mean']:>7.1%} "
            f"{r['changed']:>8.1%}  {'*' if r['frontier'] else ''}"
        )
    rec = report["recommendation"]
    print(f"recommended: {rec['setting']} ({rec['why']})" if rec["setting"] else f"no recommendation: {rec['why']}")
    if args.write_preset:
        from backend.cap_preset import write_preset

        if rec["setting"]:
            write_preset(Path(args.space), report)
            print(f"preset written into {Path(args.space) / 'manifest.json'}")
        else:
            print("no preset written")
    print(f"report: {Path(args.out) / 'report.html'}")
    return 0


def make_eval_judge(name: str, catalogue):  # type: ignore[no-untyped-def]
    if name == "openai":
        from backend.llm_judge import OpenAIJudge

        return OpenAIJudge.from_env(catalogue.archetypes)
    from backend.judge import EmbeddingJudge

    return EmbeddingJudge(catalogue.archetypes)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port: use 1..65535")
    return value


def build_parser() -> argparse.ArgumentParser:
    from backend.distributed import add_ray_args

    parser = argparse.ArgumentParser(prog="python -m backend", description="Persona Space: persona spaces and the Assistant Axis")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("model-info", help="load a model and describe it (layers, hidden size, target layer, template)")
    _add_model_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_model_info)

    p = sub.add_parser("chat", help="chat with a model in the terminal")
    _add_model_args(p)
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("--prompt", default=None, help="one message, then exit")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--sample", action="store_true", help="sample (temperature 0.7, top-p 0.9) instead of greedy")
    p.add_argument("--seed", type=int, default=None)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("build", help="build a persona space: generate, capture, judge, role vectors, axis, PCA/UMAP")
    _add_model_args(p)
    p.add_argument("--out", required=True, help="space folder to write, e.g. cached_activations/my-model")
    p.add_argument("--work", default=None, help="folder for resumable per-chunk results (default: .<out>.work beside it)")
    p.add_argument("--catalogue", default=None, help="folder with archetypes.json, questions.json, default_prompts.json")
    p.add_argument("--roles", default=None, help="comma-separated subset of archetypes (default: all)")
    p.add_argument("--prompts-per-role", type=int, default=5)
    p.add_argument("--questions-per-role", type=int, default=8)
    p.add_argument("--default-questions", type=int, default=40)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=48)
    p.add_argument(
        "--generator",
        default="hf",
        choices=["hf", "openai"],
        help="where answers come from: hf (in-process, default) or openai (an OpenAI-compatible completions server: "
        "vLLM, SGLang, llama.cpp; activations then come from a teacher-forced pass of --model)",
    )
    p.add_argument(
        "--generator-url",
        default=None,
        help="base URL(s) of the completions server(s), comma-separated, e.g. http://localhost:8000/v1 "
        "(PERSONA_SPACE_GENERATOR_API_KEY, _CONCURRENCY, _MAX_RETRIES, _TIMEOUT_S, _RPM, _MODEL, _EXTRA_BODY)",
    )
    p.add_argument(
        "--judge",
        default="embedding",
        choices=["embedding", "none", "openai"],
        help="role-adherence judge: offline MiniLM embeddings (default), none, or an OpenAI-compatible endpoint "
        "(PERSONA_SPACE_JUDGE_BASE_URL, _MODEL, _API_KEY, _CONCURRENCY, _RPM)",
    )
    p.add_argument(
        "--min-in-role", type=int, default=10, help="archetypes with fewer score-3 answers are drawn as weak, not fitted"
    )
    _add_space_args(p, RECIPE_DEFAULT)
    p.add_argument("--shard", default=None, help="i/n: build every n-th chunk starting at i, into the work folder")
    add_ray_args(p, "generation and capture")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("rebuild", help="recompute a space from a finished work folder (no generation): another recipe, ...")
    p.add_argument("work", help="the build's work folder (holds plan.json and chunks/)")
    p.add_argument("--out", required=True, help="space folder to write")
    p.add_argument("--catalogue", default=None, help="the catalogue the build used (default: the shipped one)")
    p.add_argument("--min-in-role", type=int, default=None, help="default: the build's")
    p.add_argument("--judge", default=None, choices=["embedding", "none", "openai"], help="default: the build's")
    _add_space_args(p, None)
    p.set_defaults(func=cmd_rebuild)

    p = sub.add_parser("import-paper-vectors", help="import the paper's released vectors (.pt, read with weights_only=True)")
    p.add_argument(
        "folder", help="folder with assistant_axis.pt, default_vector.pt, role_vectors/, [trait_vectors/, capping_config.pt]"
    )
    p.add_argument("--out", required=True, help="space folder to write, e.g. cached_activations/qwen3-32b-paper")
    p.add_argument("--model-name", default=None, help="name to record (default: the folder's name)")
    p.add_argument("--target-layer", type=int, default=None, help="override the inferred target layer")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_import_paper_vectors)

    p = sub.add_parser("serve", help="run the model worker (HTTP API with streamed tokens and live controls)")
    _add_model_args(p)
    p.add_argument("--space", default="cached_activations/smollm2-135m", help="the persona space built for --model")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default loopback; any other, an empty host or 0.0.0.0 included, needs a token)",
    )
    p.add_argument("--port", type=_port, default=8765, help="TCP port, 1..65535 (default 8765)")
    p.add_argument("--db", default=None, help="SQLite file for sessions (default: worker.sqlite3 in the cache folder)")
    p.add_argument(
        "--token-file",
        default=None,
        help="file whose first line is the bearer token required on every request (or set PERSONA_SPACE_TOKEN); "
        "needed to bind beyond loopback",
    )
    p.add_argument("--token", default=None, help="the bearer token itself (visible to other users in `ps`: prefer --token-file)")
    p.add_argument(
        "--no-compile",
        dest="compile",
        action="store_false",
        help="do not compile the decode step in the background (it serves eagerly until compiled; ~1.5x faster after)",
    )
    p.add_argument(
        "--precision",
        choices=["default", "int8"],
        default=os.environ.get("PERSONA_SPACE_PRECISION") or "default",
        help="int8: int8 weights on a CPU (a 1.2-1.4x faster decode step; projections within ~0.5 of float32's, greedy "
        "replies part from float32's after 10-40 tokens: README, Precision); default: the model's own dtype",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("project-transcript", help="project each assistant turn of a transcript onto the axis")
    _add_model_args(p)
    p.add_argument(
        "files", nargs="+", metavar="FILE",
        help="JSON (an OpenAI-style message list or the paper's transcript format), JSONL (one conversation a line) or a folder of them",
    )  # fmt: skip
    p.add_argument("--space", default="cached_activations/smollm2-135m")
    p.add_argument("--layer", type=int, default=None, help="layer to project at (default: the space's target layer)")
    p.add_argument("--window", type=int, default=None, help="read in windows of at most N tokens (default: the model's context)")
    p.add_argument(
        "--history", type=float, default=0.5,
        help="when a window moves, keep this share of it as earlier conversation (1 = most context per turn, slowest)",
    )  # fmt: skip
    p.add_argument("--no-window", action="store_true", help="refuse a conversation longer than the window instead")
    p.add_argument("--tokens", action="store_true", help="add every assistant token's projection and text")
    add_ray_args(p, "the conversations")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_project_transcript)

    p = sub.add_parser("drift", help="replay scripted scenarios live, capped and uncapped, and report drift")
    _add_model_args(p)
    p.add_argument("--space", default="cached_activations/smollm2-135m")
    p.add_argument(
        "--scenario", action="append", default=None, help="scenario id or .json path (repeatable; default: all shipped)"
    )
    p.add_argument("--cap", choices=["both", "off", "on"], default="both", help="run uncapped, capped or both")
    p.add_argument("--cap-percentile", type=float, default=75.0)
    p.add_argument("--seeds", default="0,1", help="comma-separated seeds")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--out", default="reports/drift", help="folder for transcripts, projections.csv, report.json/html")
    p.set_defaults(func=cmd_drift)

    p = sub.add_parser("evaluate-cap", help="does the cap work? persona attacks and benign questions over a grid of cap settings")
    _add_model_args(p)
    p.add_argument("--space", default="cached_activations/smollm2-135m")
    p.add_argument("--percentiles", default="25,50,75", help="comma-separated percentiles of the space's pool")
    p.add_argument("--windows", default=None, help="comma-separated start:stop cap windows (default: the space's)")
    p.add_argument("--judge", default="embedding", choices=["embedding", "openai"], help="who decides a reply took the persona")
    p.add_argument("--out", default="reports/cap-eval", help="folder for results.jsonl (resumable) and the report")
    p.add_argument("--limit", type=int, default=None, help="at most N attack and N benign items (spread over kinds)")
    p.add_argument("--attacks", default=None, help="attack set JSON (default assets/cap_eval/attacks.json)")
    p.add_argument("--catalogue", default=None, help="catalogue folder for the benign questions and the judge's roles")
    p.add_argument("--benign-per-kind", type=int, default=3, help="benign questions per catalogue kind")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--batch-rows", type=int, default=16, help="rows per batched forward pass")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kl-bound", type=float, default=0.05, help="the recommendation rule's bound on benign KL (nats/token)")
    p.add_argument("--write-preset", action="store_true", help="write the recommended setting into the space's manifest")
    p.set_defaults(func=cmd_evaluate_cap)

    p = sub.add_parser("info", help="describe a built space")
    p.add_argument("space")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except PersonaSpaceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RecursionError:
        print("error: the input is nested too deeply to read", file=sys.stderr)
        return 2
    except OSError as exc:  # a path that cannot be read or written: the message names it
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
