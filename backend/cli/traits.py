"""``build-traits``: add trait vectors to an existing persona space (:mod:`backend.build.traits`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from backend.cli.args import add_model_args, load
from backend.errors import PersonaSpaceError


def add_build_traits(sub: Any) -> None:
    """Register ``build-traits`` on the CLI's subparsers."""
    from backend.cluster import add_ray_args

    p = sub.add_parser("build-traits", help="add trait vectors (trait minus opposite, per layer) to an existing space")
    add_model_args(p)
    p.add_argument("--space", required=True, help="the persona space to add traits to (built for --model)")
    p.add_argument(
        "--work", default=None, help="folder for resumable per-chunk results (default: .<space>.traits.work beside it)"
    )
    p.add_argument("--catalogue", default=None, help="folder with traits.json and questions.json (default: the shipped ones)")
    p.add_argument("--traits", default=None, help="comma-separated subset of traits (default: all)")
    p.add_argument("--pairs-per-trait", type=int, default=5, help="instruction pairs per trait, 1..5")
    p.add_argument("--questions", type=int, default=4, help="questions answered under each instruction")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=48)
    p.add_argument("--generator", default="hf", choices=["hf", "openai"], help="as for build")
    p.add_argument("--generator-url", default=None, help="as for build")
    p.add_argument(
        "--judge", default="embedding", choices=["embedding", "none", "openai"],
        help="trait-expression judge (0-100): offline MiniLM embeddings against the trait and its opposite (default), "
        "none (the instruction decides), or an OpenAI-compatible endpoint (PERSONA_SPACE_JUDGE_*)",
    )  # fmt: skip
    p.add_argument("--threshold", type=int, default=50, help="an answer scoring at least this expresses the trait")
    p.add_argument("--min-kept", type=int, default=5, help="traits with fewer kept answers on a side are weak")
    p.add_argument("--shard", default=None, help="i/n: build every n-th chunk starting at i, into the work folder")
    p.add_argument(
        "--compact",
        action="store_true",
        help="store the trait vectors as int8 with a float32 scale per vector (a quarter of float32's size; each value "
        "within half a step, cosine with the float32 vector > 0.9999); the shipped space uses it",
    )
    add_ray_args(p, "generation and capture")
    p.set_defaults(func=cmd_build_traits)


def cmd_build_traits(args: argparse.Namespace) -> int:
    from pathlib import Path

    from backend.build.pipeline import check_places
    from backend.build.plan import parse_shard
    from backend.build.trait_settings import TraitSettings
    from backend.build.traits import build_traits, chosen
    from backend.catalogue import load_questions
    from backend.catalogue.traits import CATALOGUE_DIR, load_traits
    from backend.store.space import read_manifest

    settings = TraitSettings(
        pairs_per_trait=args.pairs_per_trait,
        questions_per_instruction=args.questions,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        batch_size=args.batch_size,
        judge=args.judge,
        threshold=args.threshold,
        min_kept=args.min_kept,
        traits=tuple(t.strip() for t in args.traits.split(",") if t.strip()) if args.traits else None,
        generator=args.generator,
        generator_urls=tuple(u.strip().rstrip("/") for u in (args.generator_url or "").split(",") if u.strip()),
    )
    shard = parse_shard(args.shard)
    folder = Path(args.catalogue) if args.catalogue else CATALOGUE_DIR
    traits = load_traits(folder, expected=None if args.catalogue else "shipped")
    questions = load_questions(folder / "questions.json")
    chosen(traits, settings)  # an unknown --traits name is refused before the model loads
    space = Path(args.space)
    read_manifest(space)  # before the model loads: a missing or broken space costs nothing
    place = space.resolve()
    work = Path(args.work) if args.work else place.with_name(f".{place.name}.traits.work")
    check_places(space, work)

    def log(message: str) -> None:
        print(message, file=sys.stderr)

    if args.ray is None:
        build_traits(load(args), space, traits, questions, settings, work, shard, log=log, compact=args.compact)
        return 0
    from backend.cluster import RayModels, load_args, ray_options

    if args.shard is not None:
        raise PersonaSpaceError("--ray and --shard do not go together: Ray spreads the chunks itself")
    if settings.generator != "hf":
        raise PersonaSpaceError("--ray and --generator openai do not go together yet: the servers spread the generation")
    with RayModels(load_args(args), ray_options(args), log) as models:
        build_traits(None, space, traits, questions, settings, work, log=log, executor=models, compact=args.compact)
    return 0
