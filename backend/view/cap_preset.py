"""The recommended cap setting, kept in a space's manifest as ``cap_preset`` (torch-free: the app reads it too).

``python -m backend evaluate-cap --write-preset`` writes it from the report's recommendation, with the rule and the
figures it was chosen on; the worker's default controls, the live chat's defaults and ``info`` use it. A manifest
without it (every older space) keeps the plain default: the 75th percentile on the space's cap window.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from backend.errors import SpaceError
from backend.view.manifest import check_manifest

DEFAULT_PERCENTILE = 75.0


def preset_from_report(report: dict[str, Any]) -> dict[str, Any]:
    """The ``cap_preset`` record for a report whose recommendation names a setting."""
    rec = report["recommendation"]
    rows = {r["setting"]: r for r in report["settings"]}
    if not rec.get("setting") or rec["setting"] not in rows:
        raise SpaceError(f"the report recommends no setting ({rec.get('why')}); nothing to write")
    row, base = rows[rec["setting"]], rows.get("uncapped", {})
    if row.get("percentile") is None or row.get("window") is None:
        raise SpaceError(f"the recommended setting {rec['setting']} is not a percentile on a window")
    return {
        "percentile": float(row["percentile"]), "window": [int(row["window"][0]), int(row["window"][1])],
        "setting": row["setting"], "rule": rec["rule"], "kl_bound": rec["kl_bound"],
        "figures": {
            "adoption": row["adoption"], "uncapped_adoption": base.get("adoption"), "kl": row["kl"],
            "moved": row["moved_mean"], "changed": row["changed"], "n_attack": report["n_attack"],
            "n_benign": report["n_benign"], "judge": report["judge"], "max_new_tokens": report["max_new_tokens"],
            **({"persona_shift": row["persona_shift"], "persona_shift_ci": row.get("persona_shift_ci")} if "persona_shift" in row else {}),
        },
        "created": report.get("created"),
    }  # fmt: skip


def write_preset(space: Path, report: dict[str, Any]) -> dict[str, Any]:
    """Write the report's recommendation into ``space``'s manifest (atomically; the tensors are untouched)."""
    file = Path(space) / "manifest.json"
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SpaceError(f"cannot read {file}: {exc}") from exc
    manifest["cap_preset"] = preset_from_report(report)
    problem = check_manifest(manifest)
    if problem is not None:
        raise SpaceError(f"the preset does not fit the space: {problem}")
    fd, tmp = tempfile.mkstemp(prefix=".manifest-", dir=file.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dict(manifest["cap_preset"])


def default_cap(manifest: dict[str, Any], fallback_window: tuple[int, int] | list[int]) -> tuple[float, tuple[int, int]]:
    """``(percentile, (start, stop))`` of the default cap: the preset when the manifest has one."""
    preset = manifest.get("cap_preset")
    if isinstance(preset, dict):
        w = preset["window"]
        return float(preset["percentile"]), (int(w[0]), int(w[1]))
    window = manifest.get("cap_window") or fallback_window
    return DEFAULT_PERCENTILE, (int(window[0]), int(window[1]))
