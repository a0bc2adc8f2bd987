"""What several commands share: the model options, the space-recipe options, loading the model they name, and the
port type of ``serve``."""

from __future__ import annotations

import argparse

from backend.models.loading import DEFAULT_MODEL


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"model spec: embedded name, .gguf, folder or hub id (default {DEFAULT_MODEL})"
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (default: cuda if present)")
    parser.add_argument(
        "--cache", default=None, help="folder for converted models (default: $PERSONA_SPACE_CACHE or the user cache)"
    )
    parser.add_argument("--trust-remote-code", action="store_true", help="allow a hub model's own code to run")
    parser.add_argument("--layers-path", default=None, help="attribute path of the decoder layers, e.g. model.layers")


def add_space_args(parser: argparse.ArgumentParser, recipe_default: str | None) -> None:
    from backend.build.recipes import RECIPE_DOC

    parser.add_argument(
        "--recipe",
        default=recipe_default,
        choices=sorted(RECIPE_DOC),
        help="role-vector recipe: "
        + "; ".join(f"{k}: {v}" for k, v in RECIPE_DOC.items())
        + (f" (default {recipe_default})" if recipe_default else " (default: the build's)"),
    )
    parser.add_argument("--target-layer", type=int, default=None, help="layer the space is drawn at (default: the model's)")


def load(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The model named by the options of :func:`add_model_args`."""
    from backend.models.loading import load_model

    return load_model(
        args.model, cache=args.cache, device=args.device, trust_remote_code=args.trust_remote_code, layers_path=args.layers_path
    )


def port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port: use 1..65535")
    return value


def cap_setting(text: str) -> str:
    """``serve --cap``: default, off or pN (N a percentile, 0..100)."""
    value = text.strip().lower()
    number = value[1:] if value.startswith("p") else ""
    try:
        ok = value in ("default", "off") or (bool(number) and 0 <= float(number) <= 100)
    except ValueError:
        ok = False
    if not ok:
        raise argparse.ArgumentTypeError(f"{text!r}: give default, off, or pN with N a percentile from 0 to 100 (e.g. p75)")
    return value


def add_serve_cap_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cap",
        type=cap_setting,
        default="default",
        help="the cap of an OpenAI API request that names none (/v1/chat/completions, docs/serving.md): default (the "
        "space's preset when it has one, else p75 on its cap window), off, or pN (percentile N on the cap window)",
    )
