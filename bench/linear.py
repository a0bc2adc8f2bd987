"""Where a decode step's matrix time goes on this CPU: every linear layer of the embedded model once per step (211
distinct float32 matrices, 540 MB: none stays in cache, as in a real step), for 1 to 16 rows, computed as
``F.linear`` (``x @ W^T``, what the model runs), as ``W @ x^T`` and as :func:`backend.kernels.small_batch.linear` (what the
decode engine runs). The last line is JSON.

    python bench/linear.py

Why it exists: on this machine ``F.linear`` takes a slow path for one row (~12 GB/s) and a slower one for two to
eight, while ``W @ x^T`` with two or more columns streams the weights at ~33 GB/s; the engine's single-row step and
a compare pair's two-row step both spend most of their time here. (An earlier version timed one matrix at a time,
which stays in cache and hid all of this.)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F

from backend.kernels import small_batch

# SmolLM2-135M per layer: q, k, v, o, gate, up, down; then the tied 49152 x 576 output head
LAYER = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)]
SHAPES = LAYER * 30 + [(49152, 576)]


def per_step(
    weights: list[torch.Tensor], product: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], rows: int, reps: int
) -> float:
    inputs = {w.shape[1]: torch.randn(rows, w.shape[1]) for w in weights}
    for _ in range(2):
        for w in weights:
            product(inputs[w.shape[1]], w)
    start = time.perf_counter()
    for _ in range(reps):
        for w in weights:
            product(inputs[w.shape[1]], w)
    return (time.perf_counter() - start) / reps * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        weights = [torch.randn(o, i, generator=g) * 0.02 for o, i in SHAPES]
        megabytes = sum(w.numel() * 4 for w in weights) / 1e6
        products = {
            "f_linear": lambda x, w: F.linear(x, w),
            "w_xt": lambda x, w: torch.mm(w, x.t()),
            "small_batch": small_batch.linear,
        }
        results: dict[str, dict[str, float]] = {}
        for rows in (1, 2, 4, 8, 16):
            row = {name: round(per_step(weights, fn, rows, args.reps), 2) for name, fn in products.items()}
            row["small_batch_gb_s"] = round(megabytes / row["small_batch"], 1)
            results[str(rows)] = row
            print(
                f"{rows:2d} rows: F.linear {row['f_linear']:6.1f} ms   W @ x^T {row['w_xt']:6.1f} ms   "
                f"small_batch {row['small_batch']:6.1f} ms ({row['small_batch_gb_s']} GB/s) per step",
                file=sys.stderr,
            )
    one, two = results["1"], results["2"]
    print(
        json.dumps(
            {
                "threads": torch.get_num_threads(),
                "weights_mb": round(megabytes, 1),
                "ms_per_step": results,
                "one_row_speedup": round(one["f_linear"] / one["small_batch"], 2),
                "two_row_speedup": round(two["f_linear"] / two["small_batch"], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
