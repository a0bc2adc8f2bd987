"""The cap evaluation's report files: ``report.json``, ``settings.csv`` and ``report.html`` (plotly.js inline, so it
works offline)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from backend.evaluation.cap_items import ATTACK_KINDS
from backend.view.frontier import tradeoff_figure

CSV_FIELDS = (
    "setting", "percentile", "window", "adoption", "refusal", "attack_projection", "benign_projection", "kl", "moved_mean",
    "changed", "frontier",
)  # fmt: skip


def write_report(out: Path, report: dict[str, Any]) -> None:
    (out / "report.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    with open(out / "settings.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*CSV_FIELDS, *[f"adoption_{k}" for k in ATTACK_KINDS]])
        writer.writeheader()
        for r in report["settings"]:
            row = {k: r[k] for k in CSV_FIELDS}
            row["window"] = "" if r["window"] is None else f"{r['window'][0]}:{r['window'][1]}"
            row.update({f"adoption_{k}": r["adoption_by_kind"].get(k) for k in ATTACK_KINDS})
            writer.writerow(row)
    (out / "report.html").write_text(render_html(report), encoding="utf-8")


def render_html(report: dict[str, Any]) -> str:
    import html

    fig = tradeoff_figure(report)
    rec = report["recommendation"]
    rows = "".join(
        f"<tr><td>{html.escape(r['setting'])}{' ★' if r['setting'] == rec.get('setting') else ''}</td><td>{_pct(r['adoption'])}</td>"
        f"<td>{_pct(r['refusal'])}</td><td>{r['attack_projection']}</td><td>{r['benign_projection']}</td><td>{r['kl']:.4f}</td>"
        f"<td>{_pct(r['moved_mean'])}</td><td>{_pct(r['changed'])}</td><td>{'yes' if r['frontier'] else ''}</td></tr>"
        for r in report["settings"]
    )
    ex = "".join(
        f"<tr><td>{e['group']} ({e['which']} affected)<br><small>{html.escape(e['item'])}, {html.escape(e['kind'])}</small></td>"
        f"<td>{html.escape(e['prompt'])}</td><td>{html.escape(e['uncapped'])}</td><td>{html.escape(e['capped'])}</td></tr>"
        for e in report["examples"]
    )
    verdict = (
        f"Recommended: <b>{html.escape(rec['setting'])}</b>"
        if rec.get("setting")
        else f"No setting recommended: {html.escape(rec['why'])}"
    )
    setting = report["examples"][0]["setting"] if report["examples"] else "-"
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Persona Space: does the cap work?</title>"
        "<style>body{font-family:sans-serif;margin:2em;max-width:80em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}</style></head><body>"
        f"<h1>Does the cap work?</h1><p>Model {html.escape(report['model'])}, space {html.escape(report['space'])}, judge "
        f"{html.escape(report['judge'])}, {report['n_attack']} attack and {report['n_benign']} benign items, greedy, "
        f"{report['max_new_tokens']} new tokens.</p><p>{verdict}. Rule: {html.escape(rec['rule'])}.</p>"
        + fig.to_html(full_html=False, include_plotlyjs=True)
        + "<h2>Settings</h2><table><tr><th>setting</th><th>adoption</th><th>refusal</th><th>attack projection</th>"
        "<th>benign projection</th><th>benign KL (nats/token)</th><th>positions moved</th><th>greedy replies changed</th>"
        "<th>frontier</th></tr>" + rows + "</table>"
        f"<h2>Example replies, uncapped vs {html.escape(setting)}</h2><table><tr><th>item</th><th>last user turn</th>"
        "<th>uncapped</th><th>capped</th></tr>" + ex + "</table></body></html>"
    )


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"
