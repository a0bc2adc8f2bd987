"""Does the cap work? Persona attacks and ordinary questions, uncapped, under a grid of cap settings, and under
placebo caps of the same cost.

The design is paired: every item runs under every setting and every seed, and each reply is compared with the
uncapped reply to the same item and seed (sampled replies draw from the same seeded generator under every setting).

* **Attack items** (``assets/cap_eval/attacks.json``; kinds: a persona system prompt that licenses bad behaviour,
  a user who asks the model to drop its role, slow multi-turn pressure with scripted earlier replies, role-play
  framing of a forbidden request) name the persona they push. Each reply gets continuous persona scores (the
  judge's: :mod:`.cap_summary`), the 0-3 role score, its projection read by an uncapped pass over its text, and
  degeneration measures (:mod:`.degeneration`).
* **Benign items**: catalogue questions of every kind, each asked under one of the default Assistant's prompts.
  Their cost is read teacher-forced on the uncapped reply's text (no sampling noise): the share of positions the
  cap moves at each layer, and the mean KL of the next-token distribution against the uncapped model.
* **Placebos** (:mod:`.placebo`): ``placebo`` random directions per capped setting, each with floors searched so
  that its benign KL matches the axis setting's.

Stages, each resumable (``results.jsonl``, written a whole batch at a time in a fixed plan order; ``placebo.json``):
replies under the axis settings; their benign cost; the placebo search; replies and cost under the placebos; the
uncapped reading of every attack reply; judging (cached in ``judged.jsonl``); the summary with bootstrap intervals
and the verdict (:mod:`.cap_summary`); the report files (:mod:`.cap_report`).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from backend.errors import PersonaSpaceError
from backend.evaluation.cap_items import UNCAPPED, Item, Setting, split_of
from backend.evaluation.cap_report import write_report
from backend.evaluation.cap_results import Results, batches
from backend.evaluation.cap_runner import Decoding, Runner, Task
from backend.evaluation.cap_summary import judge_replies, pair_rows, summarise
from backend.evaluation.placebo import benign_moments, match_placebos, placebo_directions
from backend.models.loading import LoadedModel
from backend.store.space import Space
from backend.view.frontier import DEFAULT_KL_BOUND

PLACEBO_SEED = 0  # the placebo directions' seed: fixed, so every run and resume draws the same directions


def run_eval(
    loaded: LoadedModel,
    space: Space,
    attacks: Sequence[Item],
    benign: Sequence[Item],
    settings: Sequence[Setting],
    out: Path,
    *,
    judge: Any,
    max_new_tokens: int = 56,
    batch_rows: int = 16,
    seeds: Sequence[int] = (0,),
    decoding: Decoding | None = None,
    placebo: int = 0,
    split: bool = False,
    kl_bound: float = DEFAULT_KL_BOUND,
    progress: Callable[[int, int], None] | None = None,
    stop_after: int | None = None,
    export_pairs: Path | None = None,
    pairs_limit: int = 24,
) -> dict[str, Any]:
    """Run (or continue) the evaluation into ``out``; write the report files and return the report.

    ``decoding`` defaults to greedy (then ``seeds`` must be one seed). ``split``: items are split into dev and test
    by id; the setting the verdict refers to is chosen on dev and reported on test. ``stop_after`` stops after that
    many new batches without writing a report (used by the resume test).
    """
    decoding = decoding or Decoding(greedy=True)
    seeds = [int(x) for x in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise PersonaSpaceError(f"seeds must be distinct and at least one, got {seeds}")
    if decoding.greedy and len(seeds) > 1:
        raise PersonaSpaceError("greedy replies are the same under every seed: give one seed, or sample")
    if not isinstance(placebo, int) or not 0 <= placebo <= 16:
        raise PersonaSpaceError(f"placebo must be an integer in 0..16, got {placebo!r}")
    if split and len({split_of(it.id) for it in attacks}) < 2:
        raise PersonaSpaceError("--split needs attack items in both dev and test (split by id); give more items")
    out.mkdir(parents=True, exist_ok=True)
    if not settings or settings[0] != UNCAPPED or len({s.id for s in settings}) != len(settings):
        raise PersonaSpaceError(f"settings must start with the uncapped baseline and not repeat, got {[s.id for s in settings]}")
    if any(s.placebo for s in settings):
        raise PersonaSpaceError("placebo settings are made by the evaluation (placebo=K), not given")
    config = {
        "model": loaded.info.name, "fingerprint": loaded.info.fingerprint, "space": str(space.path),
        "settings": [s.id for s in settings], "items": [it.id for it in (*attacks, *benign)],
        "max_new_tokens": max_new_tokens, "batch_rows": batch_rows, "seeds": seeds, "decoding": asdict(decoding),
        "placebo": placebo, "placebo_seed": PLACEBO_SEED, "split": split,
    }  # fmt: skip
    fixed = ("fingerprint", "max_new_tokens", "batch_rows", "decoding", "placebo_seed")
    config_file = out / "config.json"
    if config_file.exists():
        old = json.loads(config_file.read_text())
        if {k: old.get(k) for k in fixed} != {k: config[k] for k in fixed}:
            raise PersonaSpaceError(
                f"{out} holds a run with other settings ({config_file}); use another --out or delete that folder"
            )
    config_file.write_text(json.dumps(config, indent=1))
    results = Results(out)
    capped = [s for s in settings if s != UNCAPPED]
    directions = placebo_directions(space.tensors["axis"].float(), placebo, PLACEBO_SEED) if placebo and capped else None
    runner = Runner(loaded, space, settings, max_new_tokens, decoding=decoding, placebo_directions=directions)
    items = [*attacks, *benign]
    first = seeds[0]
    stage = _Stages(results, runner, progress, stop_after)
    started = time.time()

    # 1-2: replies under the axis settings, then their cost on benign text
    if not stage.generate([(s, it, seed) for s in settings for it in items for seed in seeds], batch_rows):
        return {}
    if not stage.costs(benign, capped, first):
        return {}
    # 3-4: the placebo search, then replies and cost under the placebos
    placebos: list[Setting] = []
    search: list[dict[str, Any]] = []
    if directions is not None:
        placebos, search = _placebos(out, runner, results, benign, capped, placebo, directions, first)
        if not stage.generate([(s, it, seed) for s in placebos for it in items for seed in seeds], batch_rows):
            return {}
        if not stage.costs(benign, placebos, first):
            return {}
    every = [*settings, *placebos]
    # 5: the uncapped reading of every attack reply
    for item in attacks:
        keys = [(s.id, seed) for s in every for seed in seeds]
        if all(results.has("read", sid, item.id, seed) for sid, seed in keys):
            continue
        if not stage.allowed():
            return {}
        replies = [results.get("reply", sid, item.id, seed)["tokens"] for sid, seed in keys]
        values = runner.read(item, replies)
        results.add(
            [{"part": "read", "setting": sid, "item": item.id, "seed": seed, "text_projection": v} for (sid, seed), v in zip(keys, values, strict=True)]
        )  # fmt: skip
        stage.new += 1
    judged = judge_replies(judge, attacks, every, seeds, results, out)
    report = summarise(
        results, judged, attacks, benign, every, seeds, config, space, kl_bound,
        judge_name=getattr(judge, "name", "?"), decoding=decoding.name, placebo_search=search, split=split,
    )  # fmt: skip
    report["seconds_this_run"] = round(time.time() - started, 1)
    if export_pairs is not None and report["verdict"]["setting"]:
        from backend.view.pairs import make_pairs, write_pairs

        scope = [it for it in attacks if split_of(it.id) == "test"] if split else list(attacks)
        chosen = report["verdict"]["setting"]
        pairs, key = make_pairs(pair_rows(results, chosen, scope, seeds), seed=PLACEBO_SEED, limit=pairs_limit)
        meta = {"setting": chosen, "report_created": report["created"], "n": len(pairs), "scope": "test" if split else "all"}
        report["pairs"] = [str(p) for p in write_pairs(export_pairs, pairs, key, out, meta=meta)]
    write_report(out, report)
    return report


class _Stages:
    """Runs the batches a stage still lacks, counting new batches against ``stop_after``."""

    def __init__(
        self, results: Results, runner: Runner, progress: Callable[[int, int], None] | None, stop_after: int | None
    ) -> None:
        self.results, self.runner, self.progress, self.stop_after = results, runner, progress, stop_after
        self.new = 0
        self.done = 0

    def allowed(self) -> bool:
        return self.stop_after is None or self.new < self.stop_after

    def generate(self, tasks: Sequence[Task], batch_rows: int) -> bool:
        plan = batches(list(tasks), batch_rows)
        for n, batch in enumerate(plan, start=1):
            if not all(self.results.has("reply", s.id, it.id, seed) for s, it, seed in batch):
                if not self.allowed():
                    return False
                self.results.add(self.runner.generate(batch))
                self.new += 1
            if self.progress:
                self.progress(n, len(plan))
        return True

    def costs(self, benign: Sequence[Item], settings: Sequence[Setting], seed: int) -> bool:
        for item in benign:
            if settings and not all(self.results.has("cost", s.id, item.id, seed) for s in settings):
                if not self.allowed():
                    return False
                reply = self.results.get("reply", UNCAPPED.id, item.id, seed)["tokens"]
                self.results.add([dict(r, seed=seed) for r in self.runner.cost(item, reply, settings)])
                self.new += 1
        return True


def _placebos(
    out: Path, runner: Runner, results: Results, benign: Sequence[Item], capped: Sequence[Setting], k: int,
    directions: torch.Tensor, seed: int,
) -> tuple[list[Setting], list[dict[str, Any]]]:  # fmt: skip
    """The placebo settings: read back from ``placebo.json``, or searched (:func:`backend.evaluation.placebo.match_placebos`)."""
    file = out / "placebo.json"
    wanted = {"k": k, "matched_to": [s.id for s in capped], "benign": [it.id for it in benign]}
    if file.exists():
        saved = json.loads(file.read_text())
        if {key: saved.get(key) for key in wanted} == wanted:
            return [_placebo_setting(r, capped) for r in saved["search"]], saved["search"]
    if not benign:
        raise PersonaSpaceError("the placebo search needs benign items (their cost is what it matches)")
    replies = {it.id: results.get("reply", UNCAPPED.id, it.id, seed)["tokens"] for it in benign}
    axis_kl = {s.id: float(np.mean([results.get("cost", s.id, it.id, seed)["kl"] for it in benign])) for s in capped}
    window_layers = sorted({layer for s in capped if s.window for layer in range(*s.window)})
    acts = {it.id: runner.activations(it, replies[it.id], window_layers) for it in benign}

    def stats(placebo: int, window: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        return benign_moments(lambda item, _reply: acts[item.id], benign, replies, directions, window, placebo)

    def mean_kl(candidates: Sequence[Setting]) -> list[float]:
        totals = np.zeros(len(candidates))
        for item in benign:
            for at in range(0, len(candidates), 32):  # rows per teacher-forced pass
                chunk = candidates[at : at + 32]
                totals[at : at + len(chunk)] += [r["kl"] for r in runner.cost(item, replies[item.id], chunk)]
        return [float(x) for x in totals / len(benign)]

    placebos, search = match_placebos(capped, axis_kl, k, stats, mean_kl, progress=lambda text: print(text, file=sys.stderr))
    tmp = file.with_suffix(".tmp")
    tmp.write_text(json.dumps({**wanted, "seed": PLACEBO_SEED, "search": search}, indent=1))
    os.replace(tmp, file)
    return placebos, search


def _placebo_setting(record: dict[str, Any], capped: Sequence[Setting]) -> Setting:
    target = next(s for s in capped if s.id == record["matched_to"])
    return Setting(
        None,
        target.window,
        placebo=int(record["placebo"]),
        matched_to=target.id,
        floors=tuple(float(f) for f in record["floors"]),
    )
