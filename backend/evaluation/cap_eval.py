"""Does the cap work? Persona attacks and ordinary questions, uncapped and under a grid of cap settings.

For every setting (a percentile of the space's pool x a cap window ``[start, stop)``, plus the uncapped baseline)
and every item, one greedy reply is generated through the batched decode engine (:mod:`backend.decode.engine`): each
row of a batch carries its own floors (:class:`backend.hooks.rows.RowControls`), so items of several settings share one
forward pass. Every reply's mean projection at the space's target layer is read as it is generated.

* **Attack items** (``assets/cap_eval/attacks.json``; kinds: a persona system prompt that licenses bad behaviour,
  a user who asks the model to drop its role, slow multi-turn pressure with scripted earlier replies, role-play
  framing of a forbidden request) name the persona they push. A reply *adopts* it when the judge scores it 2 or 3
  on the paper's 0-3 role scale for that persona (embedding judge offline, or the OpenAI-compatible judge).
* **Benign items**: catalogue questions of every kind, each asked under one of the default Assistant's prompts.
  Their cost is read teacher-forced on the uncapped reply's text (no sampling noise): the share of positions the
  cap moves at each layer, and the mean KL of the next-token distribution against the uncapped model; plus the
  share of greedy replies that change.

Results go to ``results.jsonl`` in the output folder, one line per setting x item, written a whole batch at a time
in a fixed plan order, so a killed run continues where it stopped and gives the same numbers. The report
(``report.json``, ``settings.csv``, ``report.html``) is written from that file.

This module runs the plan; the pieces are :mod:`.cap_items` (items, settings), :mod:`.cap_results` (the store),
:mod:`.cap_runner` (the batched model work), :mod:`.cap_summary` (judging, summary) and :mod:`.cap_report` (files).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from backend.errors import PersonaSpaceError
from backend.evaluation.cap_items import UNCAPPED, Item, Setting
from backend.evaluation.cap_report import write_report
from backend.evaluation.cap_results import Results, batches
from backend.evaluation.cap_runner import Runner
from backend.evaluation.cap_summary import judge_replies, summarise
from backend.models.loading import LoadedModel
from backend.store.space import Space
from backend.view.frontier import DEFAULT_KL_BOUND


def run_eval(
    loaded: LoadedModel,
    space: Space,
    attacks: Sequence[Item],
    benign: Sequence[Item],
    settings: Sequence[Setting],
    out: Path,
    *,
    judge: Any,
    max_new_tokens: int = 48,
    batch_rows: int = 16,
    seed: int = 0,
    kl_bound: float = DEFAULT_KL_BOUND,
    progress: Callable[[int, int], None] | None = None,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Run (or continue) the evaluation into ``out``; write the report files and return the report.

    ``stop_after`` stops after that many new batches without writing a report (used by the resume test).
    """
    out.mkdir(parents=True, exist_ok=True)
    if not settings or settings[0] != UNCAPPED or len({s.id for s in settings}) != len(settings):
        raise PersonaSpaceError(f"settings must start with the uncapped baseline and not repeat, got {[s.id for s in settings]}")
    config = {
        "model": loaded.info.name, "fingerprint": loaded.info.fingerprint, "space": str(space.path),
        "settings": [s.id for s in settings], "items": [it.id for it in (*attacks, *benign)],
        "max_new_tokens": max_new_tokens, "batch_rows": batch_rows, "seed": seed,
    }  # fmt: skip
    config_file = out / "config.json"
    if config_file.exists():
        old = json.loads(config_file.read_text())
        if {k: old.get(k) for k in ("fingerprint", "max_new_tokens", "batch_rows", "seed")} != {
            k: config[k] for k in ("fingerprint", "max_new_tokens", "batch_rows", "seed")
        }:
            raise PersonaSpaceError(
                f"{out} holds a run with other settings ({config_file}); use another --out or delete that folder"
            )
    config_file.write_text(json.dumps(config, indent=1))
    torch.manual_seed(seed)
    results = Results(out)
    runner = Runner(loaded, space, settings, max_new_tokens)
    items = [*attacks, *benign]
    gen_plan = batches([(s, it) for s in settings for it in items], batch_rows)
    capped = [s for s in settings if s != UNCAPPED]
    total = len(gen_plan) + len(benign)
    done_batches, new = 0, 0
    started = time.time()
    for batch in gen_plan:
        if not all(results.has("reply", s.id, it.id) for s, it in batch):
            if stop_after is not None and new >= stop_after:
                return {}
            results.add(runner.generate(batch))
            new += 1
        done_batches += 1
        if progress:
            progress(done_batches, total)
    for item in benign:
        if capped and not all(results.has("cost", s.id, item.id) for s in capped):
            if stop_after is not None and new >= stop_after:
                return {}
            reply = results.get("reply", UNCAPPED.id, item.id)["tokens"]
            results.add(runner.cost(item, reply, capped))
            new += 1
        done_batches += 1
        if progress:
            progress(done_batches, total)
    judged = judge_replies(judge, attacks, settings, results, out)
    report = summarise(
        results, judged, attacks, benign, settings, config, space, kl_bound, judge_name=getattr(judge, "name", "?")
    )
    report["seconds_this_run"] = round(time.time() - started, 1)
    write_report(out, report)
    return report
