"""The cap evaluation's report files: ``report.json``, ``settings.csv`` and ``report.html`` (plotly.js inline, so it
works offline)."""

from __future__ import annotations

import csv
import html
import json
from pathlib import Path
from typing import Any

from backend.evaluation.cap_items import ATTACK_KINDS
from backend.view.frontier import tradeoff_figure

MEASURES = (
    "persona_score", "persona_shift", "judge_score", "judge_score_shift", "adoption", "adoption_shift", "refusal",
    "text_projection", "text_projection_shift", "repetition", "repetition_shift", "distinct2", "distinct2_shift", "kl",
)  # fmt: skip
CSV_FIELDS = (
    "setting", "percentile", "window", "placebo", "matched_to", *MEASURES, "attack_projection", "benign_projection",
    "moved_mean", "changed", "frontier", "n_items", "n_seeds",
)  # fmt: skip


def write_report(out: Path, report: dict[str, Any]) -> None:
    (out / "report.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    with open(out / "settings.csv", "w", newline="", encoding="utf-8") as handle:
        names = [*CSV_FIELDS, *[f"{m}_ci_{e}" for m in MEASURES for e in ("lo", "hi")], *[f"adoption_{k}" for k in ATTACK_KINDS]]
        writer = csv.DictWriter(handle, fieldnames=names)
        writer.writeheader()
        for r in report["settings"]:
            row = {k: r.get(k) for k in CSV_FIELDS}
            row["window"] = "" if r["window"] is None else f"{r['window'][0]}:{r['window'][1]}"
            for m in MEASURES:
                ci = r.get(f"{m}_ci") or [None, None]
                row[f"{m}_ci_lo"], row[f"{m}_ci_hi"] = ci
            row.update({f"adoption_{k}": r["adoption_by_kind"].get(k) for k in ATTACK_KINDS})
            writer.writerow(row)
    (out / "report.html").write_text(render_html(report), encoding="utf-8")


def _num(value: Any, ci: Any = None, fmt: str = "{:+.3f}") -> str:
    if value is None:
        return "-"
    text = fmt.format(value)
    if ci:
        text += f" <small>[{fmt.format(ci[0])}, {fmt.format(ci[1])}]</small>"
    return text


def _verdict_html(v: dict[str, Any] | None) -> str:
    if not v:
        return ""
    word = {True: "<b>yes</b>", False: "<b>no</b> (the opposite)", None: "<b>undecided</b>"}
    placebo = (
        f"{word[v['axis_beats_placebo']]}: axis minus placebo {_num(v['placebo_difference'], v['placebo_difference_ci'])}"
        if v.get("placebos")
        else "not measured (no placebo run)"
    )
    return (
        f"<h2>Verdict</h2><p>Setting <b>{html.escape(str(v['setting']))}</b>, chosen on {html.escape(v['chosen_on'])} "
        f"({html.escape(v['why_setting'])}), reported on {html.escape(v['reported_on'])}. Persona measure: "
        f"{html.escape(v['metric'])}.</p><ul>"
        f"<li>The cap lowers persona scores: {word[v['cap_lowers_persona']]}, paired shift "
        f"{_num(v['persona_shift'], v['persona_shift_ci'])}</li>"
        f"<li>More than a random direction at the same cost: {placebo}</li></ul>"
    )


def render_html(report: dict[str, Any]) -> str:
    fig = tradeoff_figure(report)
    rec = report["recommendation"]
    rows = "".join(
        f"<tr><td>{html.escape(r['setting'])}{' ★' if r['setting'] == rec.get('setting') else ''}</td>"
        f"<td>{_num(r.get('persona_score'), r.get('persona_score_ci'))}</td><td>{_num(r.get('persona_shift'), r.get('persona_shift_ci'))}</td>"
        f"<td>{_num(r.get('adoption'), r.get('adoption_ci'), '{:.0%}')}</td>"
        f"<td>{_num(r.get('text_projection_shift'), r.get('text_projection_shift_ci'), '{:+.2f}')}</td>"
        f"<td>{_num(r.get('repetition'), r.get('repetition_ci'), '{:.2f}')}</td><td>{_num(r.get('distinct2'), r.get('distinct2_ci'), '{:.2f}')}</td>"
        f"<td>{_num(r['kl'], r.get('kl_ci'), '{:.4f}')}</td><td>{_pct(r['moved_mean'])}</td></tr>"
        for r in report["settings"]
    )
    ex = "".join(
        f"<tr><td>{e['group']} ({e['which']} affected)<br><small>{html.escape(e['item'])}, {html.escape(e['kind'])}</small></td>"
        f"<td>{html.escape(e['prompt'])}</td><td>{html.escape(e['uncapped'])}</td><td>{html.escape(e['capped'])}</td></tr>"
        for e in report["examples"]
    )
    recommended = (
        f"Recommended: <b>{html.escape(rec['setting'])}</b>"
        if rec.get("setting")
        else f"No setting recommended: {html.escape(rec['why'])}"
    )
    setting = report["examples"][0]["setting"] if report["examples"] else "-"
    split = report.get("split")
    scope = f", split by id into {split['dev']} dev and {split['test']} test attack items (table: test)" if split else ""
    seeds = report.get("seeds") or [report.get("seed", 0)]
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Persona Space: does the cap work?</title>"
        "<style>body{font-family:sans-serif;margin:2em;max-width:90em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}small{color:#555}</style></head><body>"
        f"<h1>Does the cap work?</h1><p>Model {html.escape(report['model'])}, space {html.escape(report['space'])}, judge "
        f"{html.escape(report['judge'])}, {report['n_attack']} attack and {report['n_benign']} benign items{scope}; "
        f"{html.escape(str(report.get('decoding', 'greedy')))} replies of {report['max_new_tokens']} new tokens, seeds "
        f"{html.escape(str(seeds))}. Intervals: {html.escape(report.get('bootstrap', ''))}.</p>"
        + _verdict_html(report.get("verdict"))
        + f"<p>{recommended}. Rule: {html.escape(rec['rule'])}.</p>"
        + fig.to_html(full_html=False, include_plotlyjs=True)
        + "<h2>Settings</h2><table><tr><th>setting</th><th>persona score</th><th>persona shift</th><th>adoption (0-3 score &ge; 2)</th>"
        "<th>projection shift (uncapped reading)</th><th>repeated 4-grams</th><th>distinct-2</th>"
        "<th>benign KL (nats/token)</th><th>positions moved</th></tr>" + rows + "</table>"
        f"<h2>Example replies, uncapped vs {html.escape(setting)}</h2><table><tr><th>item</th><th>last user turn</th>"
        "<th>uncapped</th><th>capped</th></tr>" + ex + "</table></body></html>"
    )


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"
