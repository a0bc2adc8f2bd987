"""Commands that read conversations onto the axis: ``project-transcript`` (existing transcripts) and ``drift``
(scripted scenarios replayed live, capped and uncapped)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from backend.cli.args import load


def cmd_project_transcript(args: argparse.Namespace) -> int:
    from backend.reading.transcripts import project_transcript, read_transcripts
    from backend.store.space import load_space

    transcripts = read_transcripts(args.files)
    options = {"layer": args.layer, "window": args.window, "history": args.history, "tokens": args.tokens}
    options["allow_window"] = not args.no_window
    if args.ray is None:
        loaded = load(args)
        space = load_space(args.space, fingerprint=loaded.info.fingerprint, model_name=loaded.info.name)
        projected = [project_transcript(loaded, space, transcript, **options) for _, transcript in transcripts]
    else:
        from backend.cluster import RayModels, load_args, ray_options

        space = load_space(args.space)  # checked against the actors' model, then shared with them
        with RayModels(load_args(args), ray_options(args), lambda m: print(m, file=sys.stderr)) as models:
            projected = models.project(space, [transcript for _, transcript in transcripts], options)
    results = [{"file": name, **result} for (name, _), result in zip(transcripts, projected, strict=True)]
    if args.json:
        single = len(args.files) == 1 and len(results) == 1 and not Path(args.files[0]).is_dir()
        print(json.dumps(results[0] if single else {"transcripts": results}))
        return 0
    for result in results:
        windowed = f", read in {result['passes']} windows of at most {result['window']}" if result["windowed"] else ""
        print(f"{result['file']}: {result['model']}, layer {result['layer']}, {result['tokens']} tokens{windowed}")
        for turn in result["turns"]:
            near = ", ".join(n["name"] for n in turn.get("nearest", [])[:3])
            value = "no tokens" if turn["projection"] is None else f"{turn['projection']:9.3f}"
            seen = f"   context {turn['context_tokens']}" if "context_tokens" in turn else f"   {turn.get('error', '')}"
            left = f" ({turn['left_out_messages']} earlier messages left out)" if turn.get("left_out_messages") else ""
            print(f"assistant turn {turn['index'] + 1:>3}: {value}{seen}{left}   nearest: {near}")
    return 0


def cmd_drift(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from backend.evaluation.drift import load_scenarios, run_drift
    from backend.kernels import cpu_threads
    from backend.store.space import load_space

    threads = cpu_threads.reserve()  # the engine's generation thread does the work; see backend/kernels/cpu_threads.py
    scenarios = load_scenarios(args.scenario)
    loaded = load(args)
    space = load_space(args.space, fingerprint=loaded.info.fingerprint, model_name=loaded.info.name)
    variants = {"both": ("uncapped", "capped"), "off": ("uncapped",), "on": ("capped",)}[args.cap]
    bar = tqdm(total=1, desc="drift turns", unit="turn", dynamic_ncols=True)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    report = run_drift(
        loaded, space, scenarios, Path(args.out), seeds=[int(s) for s in args.seeds.split(",")], variants=variants,
        cap_percentile=args.cap_percentile, max_new_tokens=args.max_new_tokens, progress=progress, threads=threads,
    )  # fmt: skip
    bar.close()
    for s in report["summary"]:
        print(
            f"{s['domain']:>12} {s['variant']:>9}: first {s['first']:8.2f}  last {s['last']:8.2f}  drift {s['drift']:7.2f}  slope {s['slope_per_turn']:6.3f}/turn"
        )
    print(f"report: {Path(args.out) / 'report.html'}")
    return 0
