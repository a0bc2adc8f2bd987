"""Blinded pairs: a capped and an uncapped reply to the same attack prompt, shown as an unlabelled A and B.

A person picks the reply that sounds more like the Assistant. The public pairs (``pairs.json``, the CSV and the HTML
page) never say which side was capped; that lives only in ``pairs-key.json``, and only :func:`rating_summary`
reads it, to give the aggregate: the share of rated pairs where the capped reply was preferred (a tie counts half).
Torch-free: the app reads and writes these files.
"""

from __future__ import annotations

import csv
import html
import io
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from backend.errors import PersonaSpaceError
from backend.maths.bootstrap import mean_ci

CHOICES = ("a", "b", "tie")
ROW_KEYS = ("item", "seed", "kind", "system", "prompt", "setting", "uncapped", "capped")
CSV_COLUMNS = ("pair", "system", "prompt", "reply_a", "reply_b", "more_like_the_assistant")
PAIRS_FILE, KEY_FILE, RATINGS_FILE = "pairs.json", "pairs-key.json", "ratings.jsonl"


def make_pairs(
    rows: Sequence[Mapping[str, Any]], *, seed: int = 0, limit: int = 24
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """At most ``limit`` of ``rows`` as blinded pairs, and the key that unblinds them.

    The rows are shuffled (``default_rng(seed)``) and the first ``limit`` kept, numbered ``P01, P02, …`` in that
    order. The capped reply goes to side ``"a"`` in half the pairs and ``"b"`` in the other half (one more ``"a"``
    for an odd count), the sides permuted by the same generator. Returns the public pairs
    ``[{"pair", "system", "prompt", "a", "b"}]`` and ``{pair: {"capped", "item", "seed", "kind", "setting"}}``.
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    for i, row in enumerate(rows):
        missing = [k for k in ROW_KEYS if k not in row]
        if missing:
            raise PersonaSpaceError(f"pair row {i} lacks {', '.join(missing)}")
    rng = np.random.default_rng(seed)
    chosen = [rows[int(i)] for i in rng.permutation(len(rows))[:limit]]
    sides = [CHOICES[j % 2] for j in range(len(chosen))]
    sides = [sides[int(i)] for i in rng.permutation(len(chosen))]
    width = max(2, len(str(len(chosen))))
    pairs, key = [], {}
    for n, (row, side) in enumerate(zip(chosen, sides, strict=True), start=1):
        name = f"P{n:0{width}d}"
        other = "b" if side == "a" else "a"
        pairs.append(
            {"pair": name, "system": row["system"], "prompt": str(row["prompt"]),
             side: str(row["capped"]), other: str(row["uncapped"])}
        )  # fmt: skip
        key[name] = {
            "capped": side,
            "item": row["item"],
            "seed": int(row["seed"]),
            "kind": row["kind"],
            "setting": row["setting"],
        }
    return [{k: p[k] for k in ("pair", "system", "prompt", "a", "b")} for p in pairs], key


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _csv_text(pairs: Sequence[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(CSV_COLUMNS)
    for p in pairs:
        writer.writerow([p["pair"], p["system"] or "", p["prompt"], p["a"], p["b"], ""])
    return buf.getvalue()


_STYLE = """
body { font-family: sans-serif; max-width: 70em; margin: 1em auto; padding: 0 1em; }
section { border-top: 1px solid #ccc; padding: .5em 0 1em; }
.replies { display: flex; gap: 1em; }
.replies > div { flex: 1; min-width: 0; }
.text { white-space: pre-wrap; background: #f6f6f6; padding: .5em; border-radius: 4px; }
.choices label { margin-right: 1.5em; }
"""

# Reads the ticked radios and saves ``pair,more_like_the_assistant`` rows as a CSV (no network, no libraries).
_SCRIPT = """
function ratingsCsv() {
  var rows = ["pair,more_like_the_assistant"];
  document.querySelectorAll("section.pair").forEach(function (s) {
    var picked = s.querySelector("input[type=radio]:checked");
    if (picked) { rows.push(s.dataset.pair + "," + picked.value); }
  });
  return rows.join("\\r\\n") + "\\r\\n";
}
function updateCount() {
  var done = document.querySelectorAll("section.pair input[type=radio]:checked").length;
  document.getElementById("count").textContent = done + " of " + document.querySelectorAll("section.pair").length + " rated";
}
function downloadRatings() {
  var blob = new Blob([ratingsCsv()], {type: "text/csv"});
  var link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = "ratings.csv";
  document.body.appendChild(link);
  link.click();
  document.body.removeChild(link);
  setTimeout(function () { URL.revokeObjectURL(link.href); }, 1000);
}
document.addEventListener("change", updateCount);
"""


def _html_text(pairs: Sequence[Mapping[str, Any]]) -> str:
    e = html.escape
    labels = {"a": "A", "b": "B", "tie": "can't tell"}
    parts = [
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n<title>Blinded pairs</title>\n",
        f"<style>{_STYLE}</style>\n</head>\n<body>\n<h1>Blinded pairs</h1>\n",
        "<p>For each pair: which reply sounds more like the Assistant? The page does not say which was capped. "
        "When done, download the ratings and send the CSV back.</p>\n",
    ]
    for p in pairs:
        pid = e(str(p["pair"]))
        parts.append(f"<section class='pair' data-pair='{pid}'>\n<h2>{pid}</h2>\n")
        if p.get("system"):
            parts.append(f"<p><b>System prompt</b></p>\n<div class='text'>{e(str(p['system']))}</div>\n")
        parts.append(f"<p><b>Prompt</b></p>\n<div class='text'>{e(str(p['prompt']))}</div>\n<div class='replies'>\n")
        for side in ("a", "b"):
            parts.append(f"<div><p><b>Reply {side.upper()}</b></p>\n<div class='text'>{e(str(p[side]))}</div></div>\n")
        parts.append("</div>\n<p class='choices'>More like the Assistant: ")
        for choice in CHOICES:
            parts.append(f"<label><input type='radio' name='{pid}' value='{choice}'> {e(labels[choice])}</label>")
        parts.append("</p>\n</section>\n")
    parts.append(
        f"<p><span id='count'>0 of {len(pairs)} rated</span> "
        "<button type='button' onclick='downloadRatings()'>Download ratings (CSV)</button></p>\n"
        f"<script>{_SCRIPT}</script>\n</body>\n</html>\n"
    )
    return "".join(parts)


def write_pairs(
    csv_file: Path, pairs: Sequence[Mapping[str, Any]], key: Mapping[str, Mapping[str, Any]], folder: Path, *,
    meta: Mapping[str, Any],
) -> list[Path]:  # fmt: skip
    """Write ``csv_file`` (for a spreadsheet), the offline page next to it (``.html``), and ``pairs.json`` and
    ``pairs-key.json`` in ``folder``. Returns the paths written."""
    csv_file, folder = Path(csv_file), Path(folder)
    if csv_file.suffix.lower() != ".csv":
        raise PersonaSpaceError(f"the pairs file must end in .csv, got {csv_file.name}")
    page = csv_file.with_suffix(".html")
    pairs_json, key_json = folder / PAIRS_FILE, folder / KEY_FILE
    _write_atomic(csv_file, _csv_text(pairs))
    _write_atomic(page, _html_text(pairs))
    _write_atomic(pairs_json, json.dumps({"meta": dict(meta), "pairs": list(pairs)}, indent=1, ensure_ascii=False) + "\n")
    _write_atomic(key_json, json.dumps(dict(key), indent=1, ensure_ascii=False) + "\n")
    return [csv_file, page, pairs_json, key_json]


def _read_json(file: Path) -> Any:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_pairs(folder: Path) -> dict[str, Any] | None:
    """``pairs.json`` of ``folder`` (``{"meta", "pairs"}``), or ``None`` when it is absent or unreadable."""
    data = _read_json(Path(folder) / PAIRS_FILE)
    if not isinstance(data, dict) or not isinstance(data.get("pairs"), list):
        return None
    return data


def read_key(folder: Path) -> dict[str, dict[str, Any]] | None:
    """``pairs-key.json`` of ``folder``, or ``None`` when it is absent or unreadable. Only for :func:`rating_summary`."""
    data = _read_json(Path(folder) / KEY_FILE)
    return data if isinstance(data, dict) else None


def add_rating(folder: Path, pair: str, choice: str, rater: str = "") -> None:
    """Append one rating of ``pair`` (``"a"``, ``"b"`` or ``"tie"``) to ``ratings.jsonl`` in ``folder``."""
    if choice not in CHOICES:
        raise PersonaSpaceError(f"a rating is one of {', '.join(CHOICES)}, got {choice!r}")
    doc = read_pairs(folder)
    known = {p.get("pair") for p in doc["pairs"] if isinstance(p, dict)} if doc else set()
    if pair not in known:
        raise PersonaSpaceError(f"no pair {pair!r} in {Path(folder) / PAIRS_FILE} ({len(known)} pairs there)")
    line = {"pair": pair, "choice": choice, "rater": rater, "time": datetime.now(UTC).isoformat(timespec="seconds")}
    with open(Path(folder) / RATINGS_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(line, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_ratings(folder: Path) -> dict[str, str]:
    """The latest choice for each rated pair in ``ratings.jsonl`` (malformed lines skipped)."""
    try:
        lines = (Path(folder) / RATINGS_FILE).read_text(encoding="utf-8").splitlines()
    except OSError:
        return {}
    out: dict[str, str] = {}
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("pair"), str) and rec.get("choice") in CHOICES:
            out[rec["pair"]] = rec["choice"]
    return out


def rating_summary(key: Mapping[str, Mapping[str, Any]], ratings: Mapping[str, str]) -> dict[str, Any]:
    """The unblinded aggregate: per rated pair 1 if the capped side was chosen, 0 if the other, 0.5 for a tie;
    their mean (``capped_preferred``) with its bootstrap 95% CI, and the counts. Ratings of pairs not in ``key``
    are ignored."""
    scores, capped, uncapped, ties = [], 0, 0, 0
    for pair, choice in ratings.items():
        if pair not in key or choice not in CHOICES:
            continue
        if choice == "tie":
            scores.append(0.5)
            ties += 1
        elif choice == key[pair]["capped"]:
            scores.append(1.0)
            capped += 1
        else:
            scores.append(0.0)
            uncapped += 1
    est = mean_ci(scores)
    return {
        "rated": len(scores), "capped_preferred": est.mean, "ci": est.ci, "ties": ties,
        "uncapped_preferred_count": uncapped, "capped_preferred_count": capped,
    }  # fmt: skip
