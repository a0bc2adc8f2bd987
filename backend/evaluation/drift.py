"""Drift scenarios: scripted user turns replayed live, uncapped and capped, over several seeds; per-turn
projections, the transcripts and a report comparing domains and capped vs uncapped.

Each run is a session of the worker's own engine (the same generation, hooks and placement as live chat),
kept in ``drift.sqlite3`` in the output folder. The per-turn projection is the turn's mean activation at the
space's target layer on the unit axis; with the target layer below the cap window (the default) this reading
depends only on the text, so capped and uncapped runs are measured the same way.
"""

from __future__ import annotations

import csv
import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend.errors import PersonaSpaceError
from backend.models.loading import LoadedModel
from backend.store.space import Space
from backend.worker.db import Database
from backend.worker.engine import Engine
from backend.worker.schemas import Controls

SCENARIO_DIR = Path(__file__).resolve().parents[2] / "assets" / "scenarios"
SCENARIO_KEYS = {"id", "domain", "title", "description", "presenter_note", "system", "turns"}


@dataclass(frozen=True)
class Scenario:
    id: str
    domain: str
    title: str
    description: str
    presenter_note: str
    system: str | None
    turns: tuple[str, ...]


def load_scenario(path: str | Path) -> Scenario:
    file = Path(path)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise PersonaSpaceError(f"cannot read scenario {file}: {exc}") from exc
    if not isinstance(data, dict) or set(data) != SCENARIO_KEYS:
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise PersonaSpaceError(f"scenario {file.name} must have exactly the keys {sorted(SCENARIO_KEYS)}, got {keys}")
    turns = data["turns"]
    if not isinstance(turns, list) or not turns or not all(isinstance(t, str) and t.strip() for t in turns):
        raise PersonaSpaceError(f"scenario {file.name}: 'turns' must be a non-empty list of user messages")
    return Scenario(
        data["id"], data["domain"], data["title"], data["description"], data["presenter_note"], data["system"], tuple(turns)
    )


def load_scenarios(names: Sequence[str] | None = None, folder: Path = SCENARIO_DIR) -> list[Scenario]:
    """Scenarios by id (file stem) or path; all shipped ones when ``names`` is empty."""
    if not names:
        return [load_scenario(p) for p in sorted(folder.glob("*.json"))]
    out = []
    for name in names:
        path = Path(name) if name.endswith(".json") else folder / f"{name}.json"
        if not path.exists():
            known = ", ".join(p.stem for p in sorted(folder.glob("*.json")))
            raise PersonaSpaceError(f"no scenario {name!r}; shipped ones: {known}")
        out.append(load_scenario(path))
    return out


def run_drift(
    loaded: LoadedModel,
    space: Space,
    scenarios: Sequence[Scenario],
    out: Path,
    *,
    seeds: Sequence[int] = (0, 1),
    variants: Sequence[str] = ("uncapped", "capped"),
    cap_percentile: float = 75.0,
    cap_layers: tuple[int, int] | None = None,
    max_new_tokens: int = 64,
    progress: Callable[[int, int], None] | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Run every scenario x variant x seed; write transcripts, CSV, JSON and HTML into ``out``; return the report.
    ``threads``: the generation thread's torch threads (:func:`backend.kernels.cpu_threads.reserve`'s count)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "transcripts").mkdir(exist_ok=True)
    db_path = out / "drift.sqlite3"
    if db_path.exists():
        db_path.unlink()
    engine = Engine(loaded, space, Database(db_path), threads=threads)
    engine.start()
    engine.ready.wait()
    window = cap_layers or (int(engine.cap_window[0]), int(engine.cap_window[1]))
    rows: list[dict[str, Any]] = []
    total = len(scenarios) * len(variants) * len(seeds) * max(len(s.turns) for s in scenarios)
    done = 0
    started = time.time()
    try:
        for scenario in scenarios:
            for variant in variants:
                for seed in seeds:
                    controls = Controls(
                        cap_enabled=variant == "capped", cap_percentile=cap_percentile, cap_layers=window, greedy=False,
                        seed=seed, max_new_tokens=max_new_tokens,
                    )  # fmt: skip
                    sid = engine.db.create_session(
                        scenario.system, controls.model_dump(mode="json"), f"{scenario.id}/{variant}/{seed}"
                    )
                    for message in scenario.turns:
                        engine.submit(sid, message, False)
                        while engine.busy(sid):
                            time.sleep(0.01)
                        done += 1
                        if progress:
                            progress(done, total)
                    turns = engine.db.turns(sid)
                    conversation = [{"role": t["role"], "content": t["content"]} for t in turns]
                    replies = [t for t in turns if t["role"] == "assistant"]
                    for n, reply in enumerate(replies):
                        summary = reply["summary"] or {}
                        rows.append(
                            {
                                "scenario": scenario.id, "domain": scenario.domain, "variant": variant, "seed": seed, "turn": n + 1,
                                "projection": summary.get("mean_projection"), "n_tokens": summary.get("n_tokens", 0),
                                "status": reply["status"], "nearest": ";".join(x["name"] for x in summary.get("nearest", [])[:3]),
                            }
                        )  # fmt: skip
                    transcript = {
                        "model": loaded.info.name, "turns": len(scenario.turns), "conversation": conversation,
                        "domain": scenario.domain, "scenario": scenario.id, "variant": variant, "seed": seed,
                        "steering_config": {"cap_percentile": cap_percentile, "layers": list(window)} if variant == "capped" else None,
                        "projections": [r["projection"] for r in rows if (r["scenario"], r["variant"], r["seed"]) == (scenario.id, variant, seed)],
                    }  # fmt: skip
                    (out / "transcripts" / f"{scenario.id}-{variant}-seed{seed}.json").write_text(
                        json.dumps(transcript, indent=1)
                    )
    finally:
        engine.close()
    report = summarise(rows, loaded, space, seeds, variants, cap_percentile, window, max_new_tokens, time.time() - started)
    write_outputs(out, rows, report)
    return report


def _slope(values: Sequence[float]) -> float:
    n = len(values)
    if n < 2:
        return 0.0
    xs = range(1, n + 1)
    mx, my = statistics.fmean(xs), statistics.fmean(values)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, values, strict=True)) / den


def summarise(
    rows: list[dict[str, Any]], loaded: LoadedModel, space: Space, seeds: Sequence[int], variants: Sequence[str],
    cap_percentile: float, window: tuple[int, int], max_new_tokens: int, seconds: float,
) -> dict[str, Any]:  # fmt: skip
    groups: dict[tuple[str, str], dict[int, list[float]]] = {}
    for r in rows:
        if r["projection"] is not None:
            groups.setdefault((r["domain"], r["variant"]), {}).setdefault(r["turn"], []).append(r["projection"])
    summary = []
    for (domain, variant), by_turn in sorted(groups.items()):
        curve = [statistics.fmean(by_turn[t]) for t in sorted(by_turn)]
        summary.append(
            {
                "domain": domain, "variant": variant, "turns": len(curve), "first": round(curve[0], 3),
                "last": round(curve[-1], 3), "mean": round(statistics.fmean(curve), 3), "min": round(min(curve), 3),
                "drift": round(curve[-1] - curve[0], 3), "slope_per_turn": round(_slope(curve), 4),
                "curve": [round(v, 3) for v in curve],
            }
        )  # fmt: skip
    target = space.target_layer
    return {
        "model": loaded.info.name, "space": str(space.path), "layer": target,
        "default_projection": round(float(space.tensors["default_projection"][target]), 3),
        "role_projection_range": [round(float(space.tensors["role_projections"][:, target].min()), 3),
                                  round(float(space.tensors["role_projections"][:, target].max()), 3)],
        "seeds": list(seeds), "variants": list(variants), "cap_percentile": cap_percentile, "cap_layers": list(window),
        "max_new_tokens": max_new_tokens, "seconds": round(seconds, 1), "summary": summary,
    }  # fmt: skip


def write_outputs(out: Path, rows: list[dict[str, Any]], report: dict[str, Any]) -> None:
    with open(out / "projections.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["scenario"])
        writer.writeheader()
        writer.writerows(rows)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "report.html").write_text(render_html(rows, report), encoding="utf-8")


def render_html(rows: list[dict[str, Any]], report: dict[str, Any]) -> str:
    import html

    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    domains = sorted({r["domain"] for r in rows})
    fig = make_subplots(rows=1, cols=max(1, len(domains)), subplot_titles=domains, shared_yaxes=True)
    colors = {"uncapped": "#d62728", "capped": "#1f77b4"}
    for col, domain in enumerate(domains, start=1):
        for variant in report["variants"]:
            for seed in report["seeds"]:
                pts = [
                    r
                    for r in rows
                    if r["domain"] == domain and r["variant"] == variant and r["seed"] == seed and r["projection"] is not None
                ]
                fig.add_trace(
                    go.Scatter(x=[p["turn"] for p in pts], y=[p["projection"] for p in pts], mode="lines", opacity=0.25,
                               line={"color": colors.get(variant, "gray"), "width": 1}, showlegend=False, hoverinfo="skip"),
                    row=1, col=col,
                )  # fmt: skip
            entry = next((s for s in report["summary"] if s["domain"] == domain and s["variant"] == variant), None)
            if entry:
                fig.add_trace(
                    go.Scatter(x=list(range(1, len(entry["curve"]) + 1)), y=entry["curve"], mode="lines+markers", name=variant,
                               line={"color": colors.get(variant, "gray"), "width": 3}, showlegend=col == 1,
                               hovertemplate=f"{domain} {variant}<br>turn %{{x}}<br>projection %{{y:.2f}}<extra></extra>"),
                    row=1, col=col,
                )  # fmt: skip
        fig.add_hline(y=report["default_projection"], line_dash="dot", line_color="green", row=1, col=col)
    fig.update_layout(height=420, title=f"Projection on the Assistant Axis per turn — {report['model']}, layer {report['layer']} "
                      "(dotted: the default Assistant)", template="plotly_white")  # fmt: skip
    fig.update_yaxes(title_text="projection (higher = more Assistant-like)", row=1, col=1)
    table = "".join(
        f"<tr><td>{html.escape(s['domain'])}</td><td>{s['variant']}</td><td>{s['first']}</td><td>{s['last']}</td>"
        f"<td>{s['drift']}</td><td>{s['slope_per_turn']}</td><td>{s['mean']}</td><td>{s['min']}</td></tr>"
        for s in report["summary"]
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Persona Space drift report</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}</style>"
        f"</head><body><h1>Drift report</h1><p>Model {html.escape(report['model'])}, space {html.escape(report['space'])}, "
        f"seeds {report['seeds']}, cap at p{report['cap_percentile']:g} on layers {report['cap_layers']}, "
        f"{report['max_new_tokens']} new tokens per turn, {report['seconds']} s.</p>"
        + fig.to_html(full_html=False, include_plotlyjs=True)
        + "<h2>Summary (mean over seeds)</h2><table><tr><th>domain</th><th>variant</th><th>first</th><th>last</th>"
        "<th>drift (last − first)</th><th>slope / turn</th><th>mean</th><th>min</th></tr>" + table + "</table></body></html>"
    )
