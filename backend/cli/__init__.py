"""Command line: ``python -m backend <command>``. Errors of this package print as one line, exit code 2.

The parser is here; the commands are grouped by what they work on: :mod:`.model` (model-info, chat), :mod:`.spaces`
(build, rebuild, import-paper-vectors, info), :mod:`.serve`, :mod:`.conversations` (project-transcript, drift) and
:mod:`.evaluation` (evaluate-cap). Each command imports what it needs when it runs, so the CLI starts fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from backend.build.recipes import DEFAULT_RECIPE as RECIPE_DEFAULT
from backend.cli.args import add_model_args, add_serve_cap_arg, add_space_args, port
from backend.cli.conversations import cmd_drift, cmd_project_transcript
from backend.cli.evaluation import cmd_evaluate_cap
from backend.cli.model import cmd_chat, cmd_model_info
from backend.cli.serve import cmd_serve
from backend.cli.spaces import cmd_build, cmd_import_paper_vectors, cmd_info, cmd_rebuild
from backend.cli.traits import add_build_traits
from backend.errors import PersonaSpaceError


def build_parser() -> argparse.ArgumentParser:
    from backend.cluster import add_ray_args

    # `persona-space ...` (the installed command) or `python -m backend ...`: the usage line names the one that ran
    prog = "python -m backend" if os.path.basename(sys.argv[0]) in ("__main__.py", "-c", "") else os.path.basename(sys.argv[0])
    parser = argparse.ArgumentParser(prog=prog, description="Persona Space: persona spaces and the Assistant Axis")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("model-info", help="load a model and describe it (layers, hidden size, target layer, template)")
    add_model_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_model_info)

    p = sub.add_parser("chat", help="chat with a model in the terminal")
    add_model_args(p)
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("--prompt", default=None, help="one message, then exit")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--sample", action="store_true", help="sample (temperature 0.7, top-p 0.9) instead of greedy")
    p.add_argument("--seed", type=int, default=None)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("build", help="build a persona space: generate, capture, judge, role vectors, axis, PCA/UMAP")
    add_model_args(p)
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
    add_space_args(p, RECIPE_DEFAULT)
    p.add_argument("--shard", default=None, help="i/n: build every n-th chunk starting at i, into the work folder")
    add_ray_args(p, "generation and capture")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("rebuild", help="recompute a space from a finished work folder (no generation): another recipe, ...")
    p.add_argument("work", help="the build's work folder (holds plan.json and chunks/)")
    p.add_argument("--out", required=True, help="space folder to write")
    p.add_argument("--catalogue", default=None, help="the catalogue the build used (default: the shipped one)")
    p.add_argument("--min-in-role", type=int, default=None, help="default: the build's")
    p.add_argument("--judge", default=None, choices=["embedding", "none", "openai"], help="default: the build's")
    add_space_args(p, None)
    p.set_defaults(func=cmd_rebuild)

    add_build_traits(sub)

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
    add_model_args(p)
    p.add_argument("--space", default="cached_activations/smollm2-135m", help="the persona space built for --model")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default loopback; any other, an empty host or 0.0.0.0 included, needs a token)",
    )
    p.add_argument("--port", type=port, default=8765, help="TCP port, 1..65535 (default 8765)")
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
        "replies part from float32's after 10-40 tokens: docs/worker-api.md, Precision); default: the model's own dtype",
    )
    p.add_argument(
        "--batch-rows",
        type=int,
        default=4,
        help="running turns decoded together as rows of one batch, 1-16 (default 4: on a CPU a step costs about the "
        "same for 1-4 rows); 1 decodes one turn at a time, with the compiled decode step (faster for one user)",
    )
    add_serve_cap_arg(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("project-transcript", help="project each assistant turn of a transcript onto the axis")
    add_model_args(p)
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
    add_model_args(p)
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
    add_model_args(p)
    p.add_argument("--space", default="cached_activations/smollm2-135m")
    p.add_argument("--percentiles", default="25,50,75", help="comma-separated percentiles of the space's pool")
    p.add_argument("--windows", default=None, help="comma-separated start:stop cap windows (default: the space's)")
    p.add_argument("--judge", default="embedding", choices=["embedding", "openai"], help="who decides a reply took the persona")
    p.add_argument("--out", default="reports/cap-eval", help="folder for results.jsonl (resumable) and the report")
    p.add_argument("--limit", type=int, default=None, help="at most N attack and N benign items (spread over kinds)")
    p.add_argument("--attacks", default=None, help="attack set JSON (default assets/cap_eval/attacks.json)")
    p.add_argument("--catalogue", default=None, help="catalogue folder for the benign questions and the judge's roles")
    p.add_argument("--benign-per-kind", type=int, default=3, help="benign questions per catalogue kind")
    p.add_argument("--max-new-tokens", type=int, default=56)
    p.add_argument("--batch-rows", type=int, default=16, help="rows per batched forward pass")
    p.add_argument("--seeds", default="0,1", help="comma-separated sampling seeds (every item runs under each)")
    p.add_argument("--greedy", action="store_true", help="greedy replies instead of sampled ones (one seed)")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (the live chat's default)")
    p.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling mass (the live chat's default)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="1 = off (the evaluation measures repetition)")
    p.add_argument("--placebo", type=int, default=0, help="K random-direction caps per capped setting, matched on benign KL")
    p.add_argument("--split", default=None, help="'dev,test': choose the verdict's setting on dev items, report it on test")
    p.add_argument("--export-pairs", default=None, metavar="FILE.csv", help="write blinded capped-vs-uncapped pairs (CSV + HTML)")
    p.add_argument("--pairs", type=int, default=24, help="how many pairs --export-pairs writes")
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
