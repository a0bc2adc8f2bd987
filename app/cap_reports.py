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
    found = []
    for file in [*base.glob("report.json"), *base.glob("*/report.json"), *base.glob("*/*/report.json")]:
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and "recommendation" in data and "settings" in data:
            found.append(file)
    return sorted(found, key=lambda f: f.stat().st_mtime, reverse=True)


def read_report(file: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(Path(file).read_text(encoding="utf-8"))
    return data


def pick_for(report: dict[str, Any], setting: str) -> dict[str, Any] | None:
    """The live-chat controls of ``setting`` (``None`` for the uncapped baseline or an absolute threshold)."""
    row = next((r for r in report["settings"] if r["setting"] == setting), None)
    if row is None or row.get("percentile") is None or not row.get("window"):
        return None
    return {"setting": setting, "cap_percentile": float(row["percentile"]), "cap_layers": [int(x) for x in row["window"]]}


def settings_table(report: dict[str, Any]) -> list[dict[str, Any]]:
    rec = (report.get("recommendation") or {}).get("setting")
    return [
        {
            "setting": r["setting"] + (" (recommended)" if r["setting"] == rec else ""),
            "adoption": r["adoption"], "refusal": r["refusal"], "benign KL": r["kl"], "positions moved": r["moved_mean"],
            "greedy replies changed": r["changed"], "attack projection": r["attack_projection"], "frontier": r["frontier"],
        }
        for r in report["settings"]
    ]  # fmt: skip
