"""What the demo page says about a scenario run: its state in words, and how long a run will take before it starts.
Pure functions (tested on data)."""

from __future__ import annotations

from typing import Any

from app.conversation import Conversation
from app.demo_recordings import Recording, duration_text

DEMO_CONTROLS = {"cap_percentile": 75.0, "max_new_tokens": 80}  # a scenario's session (the cap, when on, at p75)


def run_state(playing: bool, stopped: bool, next_turn: int, n_turns: int, conv: Conversation) -> str:
    """The run's state in words: playing, pausing (the reply being written finishes first), paused, stopped, finished."""
    if stopped:
        return f"stopped at user turn {next_turn} of {n_turns}"
    if next_turn >= n_turns and not conv.busy:
        return "finished"
    if playing:
        return "playing"
    if conv.busy:
        return "pausing: the reply being written finishes, then the scenario waits"
    return "paused: Resume plays on, Next turn plays one turn"


def measured_rate(turns: list[dict[str, Any]]) -> float | None:
    """Tokens per second of one reply, over the finished assistant turns given (their ``n_tokens`` and
    ``seconds``); None without any."""
    tokens = seconds = 0.0
    for turn in turns:
        summary = turn.get("summary") or {}
        n, took = summary.get("n_tokens"), summary.get("seconds")
        if turn.get("role") == "assistant" and turn.get("status") == "done" and n and took:
            tokens += float(n)
            seconds += float(took)
    return tokens / seconds if seconds > 0 else None


def expected_duration(scenario: dict[str, Any], max_new_tokens: int, rate: float | None, recordings: list[Recording]) -> str:
    """Before Start: how long the run will take. A recording of the same scenario made here is the best guide (its
    real duration); else the worker's measured rate gives an upper bound (every reply at its token limit; the
    capped and uncapped replies of a turn are written together, as one batch)."""
    n = len(scenario["turns"])
    own = [r for r in recordings if r.scenario == scenario["id"] and not r.shipped]
    if own:
        newest = own[0]
        return f"about {duration_text(newest.duration_s)} (the run recorded here on {newest.when} took that long)"
    if rate:
        bound = n * max_new_tokens / rate
        return f"at most {duration_text(bound)} ({n} turns × up to {max_new_tokens} tokens at the {rate:.1f} tokens/s this worker measured)"
    return f"{n} turns × up to {max_new_tokens} tokens; the time is known once the worker has written a reply"
