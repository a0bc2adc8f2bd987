"""The cap evaluation's throughput: items per minute with batched generation vs one item at a time.

On the embedded default, the same items (attack and benign, spread over kinds) and settings (uncapped, one
percentile on the space's cap window, and ``--placebo`` random-direction caps matched to it) are evaluated twice
into fresh folders: once with ``--batch-rows`` rows per forward pass (items of several settings, placebos included,
share a batch through per-row controls and per-row cap directions), once with one row at a time. Both runs include
the teacher-forced cost passes, the placebo search, the uncapped reading and judging (the judge is loaded before
timing), so the figure is the whole evaluation's rate. A short warm-up run comes first. The two runs must agree on
every greedy reply. The last line is JSON.

    python bench/cap_eval.py --quick
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.catalogue import load_catalogue
from backend.cli.evaluation import assistant_profile
from backend.evaluation.cap_eval import run_eval
from backend.evaluation.cap_items import benign_items, grid, limit_items, load_attacks
from backend.judges.embedding import EmbeddingJudge
from backend.models.loading import load_model
from backend.store.space import load_space
from tests.helpers.scratch import use_scratch_cache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--space", default="cached_activations/smollm2-135m")
    parser.add_argument("--quick", action="store_true", help="4 attack + 4 benign items, 2 settings, 24 tokens")
    parser.add_argument("--items", type=int, default=None, help="attack items and benign items each")
    parser.add_argument("--tokens", type=int, default=None)
    parser.add_argument("--percentile", type=float, default=75.0)
    parser.add_argument("--batch-rows", type=int, default=16)
    parser.add_argument("--placebo", type=int, default=1, help="placebo caps per capped setting (in the same batches)")
    args = parser.parse_args()
    n = args.items or (4 if args.quick else 12)
    tokens = args.tokens or (24 if args.quick else 48)
    catalogue = load_catalogue()
    loaded = load_model(args.model)
    space = load_space(args.space, fingerprint=loaded.info.fingerprint, model_name=loaded.info.name)
    attacks = limit_items(load_attacks(), n)
    benign = limit_items(benign_items(catalogue, loaded.info.name, per_kind=1), n)
    window = space.manifest.get("cap_window") or list(loaded.info.cap_window)
    settings = grid([args.percentile], [(int(window[0]), int(window[1]))])
    judge = EmbeddingJudge(catalogue.archetypes, assistant=assistant_profile(catalogue))
    items = len(attacks) + len(benign)
    n_settings = len(settings) + args.placebo * (len(settings) - 1)
    result: dict[str, object] = {
        "model": loaded.info.name,
        "items": items,
        "settings": n_settings,
        "placebo": args.placebo,
        "tokens": tokens,
    }
    with tempfile.TemporaryDirectory() as tmp:  # warm-up: first forward passes, the judge's first encode
        run_eval(
            loaded, space, attacks[:1], benign[:1], settings, Path(tmp), judge=judge, max_new_tokens=4, batch_rows=2,
            placebo=args.placebo,
        )  # fmt: skip
    replies = {}
    for name, rows in (("one_at_a_time", 1), ("batched", args.batch_rows)):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            run_eval(
                loaded, space, attacks, benign, settings, Path(tmp), judge=judge, max_new_tokens=tokens, batch_rows=rows,
                placebo=args.placebo,
            )  # fmt: skip
            seconds = time.perf_counter() - t0
            lines = (Path(tmp) / "results.jsonl").read_text().splitlines()
            replies[name] = sorted(
                (r["setting"], r["item"], tuple(r["tokens"])) for r in map(json.loads, lines) if r["part"] == "reply"
            )
        result[f"{name}_seconds"] = round(seconds, 1)
        result[f"{name}_items_per_minute"] = round(items * n_settings * 60 / seconds, 2)
        print(f"{name}: {seconds:.1f} s for {items} items x {n_settings} settings", file=sys.stderr)
    result["speedup"] = round(float(result["batched_items_per_minute"]) / float(result["one_at_a_time_items_per_minute"]), 2)  # type: ignore[arg-type]
    result["replies_differ"] = sum(a != b for a, b in zip(replies["batched"], replies["one_at_a_time"], strict=True))
    print(json.dumps(result))


if __name__ == "__main__":
    use_scratch_cache()  # never the user's cache folder: their sessions database, their converted models
    main()
