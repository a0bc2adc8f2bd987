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
    from backend.errors import PersonaSpaceError
    from backend.evaluation.cap_runner import Decoding

    try:
        seeds = [int(x) for x in str(args.seeds).split(",") if x.strip()]
    except ValueError:
        raise PersonaSpaceError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    if args.greedy:
        seeds = seeds[:1]
    if args.split not in (None, "dev,test"):
        raise PersonaSpaceError(f"--split takes 'dev,test', got {args.split!r}")
    if not 0 < args.temperature <= 5 or not 0 < args.top_p <= 1 or not 1 <= args.repetition_penalty <= 2:
        raise PersonaSpaceError("--temperature must be in (0, 5], --top-p in (0, 1], --repetition-penalty in [1, 2]")
    decoding = Decoding(args.greedy, args.temperature, args.top_p, args.repetition_penalty)
    if args.export_pairs and not str(args.export_pairs).endswith(".csv"):
        raise PersonaSpaceError(f"--export-pairs names a .csv file (the HTML goes beside it), got {args.export_pairs!r}")
    judge = make_eval_judge(args.judge, catalogue)
    bar = tqdm(total=1, desc="cap evaluation", unit="batch", dynamic_ncols=True)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    report = run_eval(
        loaded, space, attacks, benign, settings, Path(args.out), judge=judge, max_new_tokens=args.max_new_tokens,
        batch_rows=args.batch_rows, seeds=seeds, decoding=decoding, placebo=args.placebo, split=args.split is not None,
        kl_bound=args.kl_bound, progress=progress,
        export_pairs=Path(args.export_pairs) if args.export_pairs else None, pairs_limit=args.pairs,
    )  # fmt: skip
    bar.close()
    print(f"{'setting':>22} {'persona shift [95% CI]':>26} {'adoption':>9} {'rep4':>6} {'KL':>8} {'moved':>7}")
    for r in report["settings"]:
        ci = r.get("persona_shift_ci") or [0.0, 0.0]
        shift = f"{r['persona_shift']:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]" if r.get("persona_shift") is not None else "-"
        print(
            f"{r['setting']:>22} {shift:>26} {r['adoption']:>9.1%} {r['repetition']:>6.2f} {r['kl']:>8.4f} "
            f"{r['moved_mean']:>7.1%}"
        )
    print(f"verdict: {report['verdict']['summary']}")
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

    return EmbeddingJudge(catalogue.archetypes, assistant=assistant_profile(catalogue))


def assistant_profile(catalogue) -> str:  # type: ignore[no-untyped-def]
    """The Assistant's profile for the embedding judge's persona margin: what the default prompts say it is."""
    said = [p.render("an AI assistant") for p in catalogue.defaults if p.system]
    return "Assistant: a helpful, honest AI assistant that answers as itself. " + " ".join(s for s in said if s)
