"""Where a decode step's matrix products go on this CPU: the embedded model's linear shapes with one and two rows,
as ``F.linear`` computes them (what the model does) and as ``W @ X^T`` (the weight streamed as the left operand).
The last line is JSON.

    python bench/linear.py

Why it exists: the engine's single-row step and a compare pair's two-row step both spend their matrix time here, and
the two formulations differ by up to 3x on some shapes (e.g. the 49152 x 576 output head).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

# SmolLM2-135M: q/o 576x576, k/v 192x576, gate/up 1536x576, down 576x1536, the tied output head 49152x576
SHAPES = {"q_o": (576, 576), "k_v": (192, 576), "gate_up": (1536, 576), "down": (576, 1536), "head": (49152, 576)}


def timed(fn: Callable[[], torch.Tensor], reps: int) -> float:
    for _ in range(max(5, reps // 10)):
        fn()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    results: dict[str, dict[str, float]] = {}
    for name, (out, inp) in SHAPES.items():
        w = torch.randn(out, inp, generator=g)
        x1, x2 = torch.randn(1, inp, generator=g), torch.randn(2, inp, generator=g)
        torch.testing.assert_close(torch.mm(w, x2.t()).t(), F.linear(x2, w), rtol=1e-4, atol=1e-4)
        reps = max(20, args.reps // (20 if name == "head" else 1))
        row = {
            "linear_1_us": timed(lambda: F.linear(x1, w), reps),  # noqa: B023 (called before the loop moves on)
            "linear_2_us": timed(lambda: F.linear(x2, w), reps),  # noqa: B023
            "w_xt_2_us": timed(lambda: torch.mm(w, x2.t()), reps),  # noqa: B023
        }
        row = {k: round(v, 1) for k, v in row.items()}
        row["linear_2_over_1"] = round(row["linear_2_us"] / row["linear_1_us"], 2)
        row["w_xt_2_over_linear_1"] = round(row["w_xt_2_us"] / row["linear_1_us"], 2)
        results[name] = row
        print(
            f"{name:8s} {out}x{inp}: F.linear 1 row {row['linear_1_us']:.0f} us, 2 rows {row['linear_2_us']:.0f} us "
            f"({row['linear_2_over_1']}x); W @ X^T 2 rows {row['w_xt_2_us']:.0f} us ({row['w_xt_2_over_linear_1']}x)"
        )
    print(json.dumps({"threads": torch.get_num_threads(), "shapes": results}))


if __name__ == "__main__":
    main()
