"""Compare role-vector recipes on one finished work folder (no generation): per recipe, cos(PC1, axis) and the
share of archetypes the default Assistant is beyond on PC1, at every ``--every``-th layer, and both ends of the
axis at ``--layer``. Prints a Markdown table; the last line is JSON.

    python bench/recipes.py /work/wt/space-work/sample64/work --min-in-role 4 --layer 15
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.build.pipeline import rebuild
from backend.build.recipes import RECIPES
from backend.catalogue import load_catalogue
from backend.store.info import space_info
from backend.store.space import load_space


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--min-in-role", type=int, default=None)
    parser.add_argument("--layer", type=int, default=None, help="layer for the ends of the axis (default: the model's)")
    parser.add_argument("--every", type=int, default=3)
    parser.add_argument("--ends", type=int, default=5)
    args = parser.parse_args()
    catalogue = load_catalogue()
    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for recipe in args.recipes.split(","):
            changes: dict[str, object] = {"recipe": recipe, "target_layer": args.layer}
            if args.min_in_role is not None:
                changes["min_in_role"] = args.min_in_role
            path = rebuild(Path(args.work), catalogue, Path(tmp) / recipe, log=lambda m: None, **changes)
            info = space_info(load_space(path))
            ranked = sorted(info["projections"].items(), key=lambda kv: kv[1], reverse=True)
            results[recipe] = {
                "axis_pc1_cosine": info["axis_pc1_cosine"],
                "default_pc1_percentile": info["default_pc1_percentile"],
                "weak": len(info["weak"]),
                "drawn": len(info["roles"]),
                "target_layer": info["target_layer"],
                "assistant_end": [n for n, _ in ranked[: args.ends]],
                "far_end": [n for n, _ in ranked[::-1][: args.ends]],
            }
    any_result = next(iter(results.values()))
    n_layers = len(any_result["axis_pc1_cosine"])  # type: ignore[arg-type]
    layers = list(range(0, n_layers, args.every))
    print("| recipe | " + " | ".join(f"L{layer}" for layer in layers) + " |")
    print("|---|" + "---|" * len(layers))
    for recipe, r in results.items():
        cells = [f"{r['axis_pc1_cosine'][i]:.2f} / {r['default_pc1_percentile'][i]:.0%}" for i in layers]  # type: ignore[index]
        print(f"| {recipe} | " + " | ".join(cells) + " |")
    for recipe, r in results.items():
        print(f"{recipe}: Assistant end {', '.join(r['assistant_end'])}; far end {', '.join(r['far_end'])}")  # type: ignore[arg-type]
    print(json.dumps(results))


if __name__ == "__main__":
    main()
