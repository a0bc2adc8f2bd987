"""Record demo scenarios as the Demo page does at the end of a run, on a worker of this script's own (a scratch
database): each scripted user turn answered capped and uncapped, p75 cap, 80 new tokens. The recordings go to
``--out`` (default: the app's shipped ``assets/recordings/``) and replay on the Demo page without a model.

    .venv/bin/python scripts/record_demo.py --scenario coding            # the shipped recording
    .venv/bin/python scripts/record_demo.py --scenario all --out /tmp/recordings
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app import demo_recordings as rec
from app.demo_plan import DEMO_CONTROLS
from tests.helpers.worker_harness import ROOT, Worker


def record(worker: Worker, scenario: dict[str, object], model: str) -> dict[str, object]:
    sid = worker.session(system=scenario["system"], controls=dict(DEMO_CONTROLS), title=f"demo/{scenario['id']}")
    for turn in scenario["turns"]:  # type: ignore[attr-defined]
        worker.say(sid, str(turn), compare=True)
        worker.wait_idle(sid, timeout=1800)
    events: list[dict[str, object]] = []
    while page := worker.events(sid, int(events[-1]["seq"]) if events else 0):  # type: ignore[arg-type]
        events.extend(page)
    return rec.make(scenario, model, events)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", default="coding", help="a scenario id of assets/scenarios/, or all")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--space", default=str(ROOT / "cached_activations" / "smollm2-135m"))
    parser.add_argument("--out", type=Path, default=rec.SHIPPED)
    args = parser.parse_args()
    files = sorted((ROOT / "assets" / "scenarios").glob("*.json"))
    scenarios = [json.loads(f.read_text()) for f in files if args.scenario in ("all", f.stem)]
    if not scenarios:
        parser.error(f"no scenario {args.scenario!r} in assets/scenarios/")
    worker = Worker(args.model, Path(args.space), Path(tempfile.mkdtemp()) / "record.sqlite3")
    try:
        health = worker.wait_ready(timeout=600)
        for scenario in scenarios:
            started = time.perf_counter()
            path = rec.save(record(worker, scenario, str(health.get("model_name") or args.model)), args.out)
            print(f"{path} ({time.perf_counter() - started:.0f} s)", flush=True)
    finally:
        worker.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
