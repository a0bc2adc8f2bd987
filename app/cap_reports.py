"""Finding and reading cap-evaluation reports (``python -m backend evaluate-cap``) for the Cap tuning page.

Torch-free: a report is plain JSON. The latest report is the newest ``report.json`` under ``$PERSONA_SPACE_CAP_REPORTS``
(default: the repository's ``reports/`` folder), searched two folders deep.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def reports_root() -> Path:
    return Path(os.environ.get("PERSONA_SPACE_CAP_REPORTS") or ROOT / "reports")


def find_reports(root: Path | None = None) -> list[Path]:
    """Cap-evaluation ``report.json`` files under ``root``, newest first (a drift report is not one)."""
    base = root or reports_root()
    if not base.is_dir():
        return []
    found = [f for f in [*base.glob("report.json"), *base.glob("*/report.json"), *base.glob("*/*/report.json")] if _is_report(f)]
    return sorted(found, key=lambda f: f.stat().st_mtime, reverse=True)


def _is_report(file: Path) -> bool:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and "recommendation" in data and "settings" in data


def shipped_reports() -> list[Path]:
    """The cap evaluations measured on the development machine and shipped in ``docs/results/`` (read-only)."""
    return [file for file in sorted((ROOT / "docs" / "results").glob("cap-eval-*.json")) if _is_report(file)]


def report_label(file: Path) -> str:
    """A report's name in the chooser: its run folder, or "shipped: <file>" for one in ``docs/results/``."""
    return f"shipped: {file.stem}" if file.parent == ROOT / "docs" / "results" else file.parent.name


def read_report(file: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(Path(file).read_text(encoding="utf-8"))
    return data


def pick_for(report: dict[str, Any], setting: str) -> dict[str, Any] | None:
    """The live-chat controls of ``setting`` (``None`` for the uncapped baseline or an absolute threshold)."""
    row = next((r for r in report["settings"] if r["setting"] == setting), None)
    if row is None or row.get("percentile") is None or not row.get("window"):
        return None
    return {"setting": setting, "cap_percentile": float(row["percentile"]), "cap_layers": [int(x) for x in row["window"]]}


def _ci(row: dict[str, Any], key: str, fmt: str = "{:+.3f}") -> str | None:
    value, ci = row.get(key), row.get(f"{key}_ci")
    if value is None:
        return None
    return fmt.format(value) + (f" [{fmt.format(ci[0])}, {fmt.format(ci[1])}]" if ci else "")


def verdict_text(v: dict[str, Any]) -> str:
    """The report's verdict in one paragraph (computed from its intervals by the evaluation, not here)."""
    word = {True: "**yes**", False: "**no** (the opposite)", None: "**undecided**"}
    ci = v.get("persona_shift_ci")
    shift = f"{v['persona_shift']:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]" if v.get("persona_shift") is not None and ci else "-"
    text = (
        f"**Verdict** for {v['setting']} (chosen on {v['chosen_on']}, figures on {v['reported_on']}; {v['metric']}): "
        f"the cap lowers persona scores: {word[v['cap_lowers_persona']]} (paired shift {shift}); "
    )
    if v.get("placebos"):
        pci = v.get("placebo_difference_ci")
        diff = f"{v['placebo_difference']:+.3f} [{pci[0]:+.3f}, {pci[1]:+.3f}]" if pci else "-"
        text += f"more than a random direction at the same cost: {word[v['axis_beats_placebo']]} (axis minus placebo {diff})."
    else:
        text += "no placebo was run."
    return text


def settings_table(report: dict[str, Any]) -> list[dict[str, Any]]:
    rec = (report.get("recommendation") or {}).get("setting")
    rows = []
    for r in report["settings"]:
        row: dict[str, Any] = {"setting": r["setting"] + (" (recommended)" if r["setting"] == rec else "")}
        if "persona_shift" in r:  # a report with paired shifts and intervals
            row.update(
                {
                    "persona shift [95% CI]": _ci(r, "persona_shift"), "adoption": r["adoption"],
                    "repeated 4-grams": _ci(r, "repetition", "{:.2f}"), "projection shift": _ci(r, "text_projection_shift", "{:+.2f}"),
                    "benign KL": r["kl"], "placebo of": r.get("matched_to"),
                }
            )  # fmt: skip
        else:
            row.update(
                {
                    "adoption": r["adoption"], "refusal": r["refusal"], "benign KL": r["kl"], "positions moved": r["moved_mean"],
                    "greedy replies changed": r["changed"], "attack projection": r["attack_projection"], "frontier": r["frontier"],
                }
            )  # fmt: skip
        rows.append(row)
    return rows
