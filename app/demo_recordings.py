"""Recorded demo runs: a finished scenario run saved as its event log, replayed later without a model.

A presenter on a slow laptop, or offline without the worker, shows a run made earlier: the page folds the recorded
events into a conversation as their recorded times come due (at the real pace or faster), and draws it with the same
views as a live run, labelled as a recording. Waits between events longer than ``MAX_GAP_S`` (a paused run, a
presenter talking) are shortened to that, and the replay says so.

A recording is one JSON file: ``format``, ``version``, the scenario's id and title, the model and space it ran on,
when it was made, the controls it started with, and the session's events exactly as the worker logged them. Files
are written whole (to a temporary name, then renamed), read with every field checked, and a file that is not a
recording is listed with the reason, never shown as one. Pure functions and file IO; no Streamlit.
"""

from __future__ import annotations

import bisect
import json
import math
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMAT = "persona-space-demo-recording"
VERSION = 1
MAX_GAP_S = 2.0  # a longer wait between two recorded events is replayed as this long
SPEEDS = (1.0, 2.0, 4.0, 8.0)
MAX_BYTES = 50 * 1024 * 1024
SHIPPED = Path(__file__).resolve().parents[1] / "assets" / "recordings"


class RecordingError(ValueError):
    """A file that is not a readable recording (the message names the file and what is wrong)."""


@dataclass(frozen=True)
class Recording:
    path: Path
    scenario: str
    title: str
    model: str
    recorded: float  # unix time
    events: list[dict[str, Any]]
    shipped: bool = False

    @property
    def duration_s(self) -> float:
        """How long the run took, first event to last (as recorded: waits not shortened)."""
        times = [float(e["time"]) for e in self.events]
        return max(times) - min(times) if times else 0.0

    @property
    def when(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(self.recorded))

    @property
    def label(self) -> str:
        kind = "shipped recording" if self.shipped else "recording"
        return f"{self.title} · {kind} of {self.when} · {self.model} · {duration_text(self.duration_s)}"


def recordings_dir() -> Path:
    """Where finished runs are saved: ``$PERSONA_SPACE_RECORDINGS``, else beside the worker's sessions database
    (``$PERSONA_SPACE_CACHE`` or the user's cache folder) in ``demo-recordings/``."""
    env = os.environ.get("PERSONA_SPACE_RECORDINGS")
    if env:
        return Path(env)
    cache = os.environ.get("PERSONA_SPACE_CACHE")
    if cache:
        return Path(cache) / "demo-recordings"
    import platformdirs

    return Path(platformdirs.user_cache_dir("persona-space")) / "demo-recordings"


def duration_text(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min"


def make(scenario: dict[str, Any], model: str, events: list[dict[str, Any]], recorded: float | None = None) -> dict[str, Any]:
    """The JSON of a recording of ``scenario``'s run (``events``: the session's whole log, in sequence order)."""
    return {
        "format": FORMAT, "version": VERSION, "scenario": str(scenario["id"]), "title": str(scenario["title"]),
        "model": model, "recorded": time.time() if recorded is None else recorded, "events": events,
    }  # fmt: skip


def save(data: dict[str, Any], folder: Path | None = None) -> Path:
    """Write a recording whole into ``folder`` (made if missing); returns its path. Checked first, as it is read."""
    check(data, "the recording")
    folder = folder or recordings_dir()
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(float(data["recorded"])))
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", str(data["scenario"]))[:60]
    path = folder / f"{safe}-{stamp}.json"
    n = 1
    while path.exists():
        n += 1
        path = folder / f"{safe}-{stamp}-{n}.json"
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".recording-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(data, out, ensure_ascii=False, separators=(",", ":"))
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a recording is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def check(data: Any, name: str) -> None:
    """Raise :class:`RecordingError` unless ``data`` is a recording this page can replay."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise RecordingError(f"{name} is not a Persona Space demo recording (no format {FORMAT!r})")
    if data.get("version") != VERSION:
        raise RecordingError(f"{name} is a recording of version {data.get('version')!r}; this app reads version {VERSION}")
    for key in ("scenario", "title", "model"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise RecordingError(f"{name}: {key} must be a non-empty text")
    recorded = data.get("recorded")
    if not isinstance(recorded, int | float) or isinstance(recorded, bool) or not math.isfinite(recorded):
        raise RecordingError(f"{name}: recorded must be a time (a number)")
    events = data.get("events")
    if not isinstance(events, list) or not events:
        raise RecordingError(f"{name}: events must be a non-empty list")
    last = 0
    for i, event in enumerate(events):
        where = f"{name}: events[{i}]"
        if not isinstance(event, dict) or not isinstance(event.get("type"), str) or not isinstance(event.get("data"), dict):
            raise RecordingError(f"{where} must be an object with a type and a data object")
        seq, at = event.get("seq"), event.get("time")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq <= last:
            raise RecordingError(f"{where}: seq must be an integer above the one before ({last})")
        if not isinstance(at, int | float) or isinstance(at, bool) or not math.isfinite(at):
            raise RecordingError(f"{where}: time must be a number")
        last = seq


def load(path: Path, shipped: bool = False) -> Recording:
    """Read and check one recording file."""
    try:
        if path.stat().st_size > MAX_BYTES:
            raise RecordingError(f"{path.name} is over {MAX_BYTES // 2**20} MiB")
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecordingError(f"{path.name} cannot be read: {exc}") from exc
    return parse(data, path, shipped)


def parse(data: Any, path: Path, shipped: bool = False) -> Recording:
    check(data, path.name)
    events = sorted(data["events"], key=lambda e: e["seq"])
    return Recording(path, data["scenario"], data["title"], data["model"], float(data["recorded"]), events, shipped)


def find(folder: Path | None = None) -> tuple[list[Recording], list[str]]:
    """The recordings saved here and shipped with the app, newest first; and one line per file that is not one."""
    found: list[Recording] = []
    problems: list[str] = []
    for base, shipped in ((folder or recordings_dir(), False), (SHIPPED, True)):
        if not base.is_dir():
            continue
        for path in sorted(base.glob("*.json")):
            try:
                found.append(load(path, shipped))
            except RecordingError as exc:
                problems.append(str(exc))
    found.sort(key=lambda r: (r.shipped, -r.recorded))
    return found, problems


def timeline(events: list[dict[str, Any]], max_gap: float = MAX_GAP_S) -> tuple[list[float], int]:
    """Each event's offset in seconds from the first, with every wait longer than ``max_gap`` shortened to it;
    and how many waits were shortened."""
    offsets: list[float] = []
    shortened = 0
    now = 0.0
    for i, event in enumerate(events):
        if i:
            gap = max(0.0, float(event["time"]) - float(events[i - 1]["time"]))
            if gap > max_gap:
                gap, shortened = max_gap, shortened + 1
            now += gap
        offsets.append(now)
    return offsets, shortened


def due(offsets: list[float], elapsed: float, speed: float) -> int:
    """How many events are due ``elapsed`` seconds into a replay at ``speed`` (all of them once it is over)."""
    if speed <= 0 or not math.isfinite(speed):
        raise ValueError(f"speed must be a positive number, got {speed}")
    return bisect.bisect_right(offsets, elapsed * speed)


def replay_length(offsets: list[float], speed: float) -> float:
    """How long a replay at ``speed`` takes, in seconds."""
    return (offsets[-1] if offsets else 0.0) / speed
