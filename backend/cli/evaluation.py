"""``evaluate-cap``: does the cap work? (:mod:`backend.evaluation.cap_eval`), with the judge it names."""

from __future__ import annotations

import argparse
from pathlib import Path

from backend.cli.args import load


def cmd_evaluate_cap(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from backend.catalogue import load_catalogue
    from backend.evaluation.cap_eval import run_eval
    from backend.evaluation.cap_items import benign_items, grid, limit_items, load_attacks, parse_windows
    from backend.store.space import load_space

    catalogue = load_catalogue(args.catalogue)
    attacks = limit_items(load_attacks(Path(args.attacks) if args.attacks else None), args.limit)
    loaded = load(args)
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
        from backend.view.cap_preset import write_preset

        if rec["setting"]:
            write_preset(Path(args.space), report)
            print(f"preset written into {Path(args.space) / 'manifest.json'}")
        else:
            print("no preset written")
    print(f"report: {Path(args.out) / 'report.html'}")
    return 0


def make_eval_judge(name: str, catalogue):  # type: ignore[no-untyped-def]
    if name == "openai":
        from backend.judges.llm import OpenAIJudge

        return OpenAIJudge.from_env(catalogue.archetypes)
    from backend.judges.embedding import EmbeddingJudge

    return EmbeddingJudge(catalogue.archetypes)
