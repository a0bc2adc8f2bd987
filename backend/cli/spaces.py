"""Commands that make or describe a persona space: ``build``, ``rebuild`` (from a finished work folder),
``import-paper-vectors`` (the paper's release) and ``info``."""

from __future__ import annotations

import argparse
import json
import sys

from backend.cli.args import load
from backend.errors import PersonaSpaceError


def cmd_build(args: argparse.Namespace) -> int:
    from pathlib import Path

    from backend.build.pipeline import build, check_places
    from backend.build.plan import parse_shard
    from backend.build.settings import BuildSettings
    from backend.catalogue import load_catalogue
    from backend.store.space import check_target

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
    place = check_target(out)  # before the model loads: a bad --out or --work costs nothing
    work = Path(args.work) if args.work else place.with_name(f".{place.name}.work")
    check_places(out, work)

    def log(message: str) -> None:
        print(message, file=sys.stderr)

    if args.ray is None:
        build(load(args), catalogue, settings, out, work, shard, log=log)
        return 0
    from backend.cluster import RayModels, load_args, ray_options

    if args.shard is not None:
        raise PersonaSpaceError("--ray and --shard do not go together: Ray spreads the chunks itself")
    if settings.generator != "hf":
        raise PersonaSpaceError("--ray and --generator openai do not go together yet: the servers spread the generation")
    with RayModels(load_args(args), ray_options(args), log) as models:  # the model is loaded on the actors only
        build(None, catalogue, settings, out, work, log=log, executor=models)
    return 0


def cmd_rebuild(args: argparse.Namespace) -> int:
    from pathlib import Path

    from backend.build.pipeline import rebuild
    from backend.catalogue import load_catalogue

    changes = {"recipe": args.recipe, "min_in_role": args.min_in_role, "target_layer": args.target_layer, "judge": args.judge}
    changes = {k: v for k, v in changes.items() if v is not None}
    rebuild(Path(args.work), load_catalogue(args.catalogue), Path(args.out), log=lambda m: print(m, file=sys.stderr), **changes)
    return 0


def cmd_import_paper_vectors(args: argparse.Namespace) -> int:
    from pathlib import Path

    from backend.build.paper import import_paper_vectors

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


def cmd_info(args: argparse.Namespace) -> int:
    from backend.store.info import format_info, space_info
    from backend.store.space import load_space

    info = space_info(load_space(args.space))
    print(json.dumps(info) if args.json else format_info(info))
    return 0
