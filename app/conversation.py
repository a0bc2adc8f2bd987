"""Turn a session's event log into what the chat page draws: turns, tokens, control changes. Pure functions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Reply:
    turn: int
    variant: str
    reply_to: int | None
    status: str = "queued"
    text: str = ""
    tokens: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] | None = None
    control_marks: list[int] = field(default_factory=list)  # token indexes where new controls applied
    control_versions: list[int] = field(default_factory=list)  # the controls version applied at each mark
    controls_version: int | None = None  # the version in force when the reply started
    queue_position: int | None = None  # jobs ahead of it when it was queued (the worker's ``queued`` event)
    token_times: list[float] = field(default_factory=list)  # when each token was written (unix time; events carry it)

    @property
    def controls_in_force(self) -> int | None:
        """The controls version its newest tokens were generated under."""
        return self.control_versions[-1] if self.control_versions else self.controls_version


@dataclass
class Exchange:
    user_turn: int
    user_text: str
    replies: dict[str, Reply] = field(default_factory=dict)  # variant -> reply


@dataclass
class Conversation:
    exchanges: list[Exchange] = field(default_factory=list)
    last_seq: int = 0
    errors: list[str] = field(default_factory=list)
    controls: dict[int, dict[str, Any]] = field(default_factory=dict)  # controls version -> the controls
    queue: dict[int, int] = field(default_factory=dict)  # queued turn -> jobs ahead of it now (read from the worker)

    def reply(self, turn: int) -> Reply | None:
        for ex in self.exchanges:
            for r in ex.replies.values():
                if r.turn == turn:
                    return r
        return None

    @property
    def busy(self) -> bool:
        return any(r.status in ("queued", "running") for ex in self.exchanges for r in ex.replies.values())

    @property
    def queued(self) -> list[Reply]:
        return [r for ex in self.exchanges for r in ex.replies.values() if r.status == "queued"]

    @property
    def running(self) -> list[Reply]:
        return [r for ex in self.exchanges for r in ex.replies.values() if r.status == "running"]

    @property
    def newest_controls(self) -> tuple[int, dict[str, Any]] | None:
        """The newest controls version the event log holds, and its controls (None before any is read)."""
        if not self.controls:
            return None
        version = max(self.controls)
        return version, self.controls[version]

    @property
    def variants(self) -> list[str]:
        seen: list[str] = []
        for ex in self.exchanges:
            for v in ex.replies:
                if v not in seen:
                    seen.append(v)
        return seen


def apply_events(conv: Conversation, events: list[dict[str, Any]]) -> Conversation:
    """Fold new events (in sequence order) into ``conv``; events already seen are ignored."""
    for event in events:
        if event["seq"] <= conv.last_seq:
            continue
        conv.last_seq = event["seq"]
        kind, data = event["type"], event["data"]
        if kind in ("session_created", "controls") and isinstance(data.get("controls"), dict):
            conv.controls[int(data.get("controls_version", 0))] = data["controls"]
        elif kind == "turn_created":
            if data["role"] == "user":
                conv.exchanges.append(Exchange(user_turn=data["turn"], user_text=data.get("content", "")))
            else:
                for ex in conv.exchanges:
                    if ex.user_turn == data.get("reply_to"):
                        ex.replies[data.get("variant", "single")] = Reply(
                            data["turn"], data.get("variant", "single"), data.get("reply_to"), data.get("status", "queued")
                        )
        elif kind == "queued":
            reply = conv.reply(int(data.get("turn", event.get("turn") or -1)))
            if reply and data.get("queue_position") is not None:
                reply.queue_position = int(data["queue_position"])
        elif kind == "turn_start":
            reply = conv.reply(event["turn"])
            if reply:
                reply.status = "running"
                if data.get("controls_version") is not None:
                    reply.controls_version = int(data["controls_version"])
        elif kind == "token":
            reply = conv.reply(data["turn"])
            if reply:
                reply.tokens.append(data)
                reply.text += data.get("text", "")
                reply.status = "running"
                if event.get("time") is not None:
                    reply.token_times.append(float(event["time"]))
        elif kind == "controls_applied":
            reply = conv.reply(data["turn"])
            if reply:
                reply.control_marks.append(int(data["from_token"]))
                reply.control_versions.append(int(data.get("controls_version", -1)))
        elif kind in ("turn_end", "turn_incomplete"):
            reply = conv.reply(event["turn"])
            if reply:
                reply.status = data.get("status", "incomplete")
                reply.summary = data
                if data.get("error"):
                    conv.errors.append(str(data["error"]))
        elif kind == "undo":
            gone = set(data.get("turns", []))
            conv.exchanges = [ex for ex in conv.exchanges if ex.user_turn not in gone]
    return conv


def per_turn_rows(conv: Conversation) -> list[dict[str, Any]]:
    """One row per finished reply: exchange number, variant, mean projection, a snippet, the turn id."""
    rows = []
    for n, ex in enumerate(conv.exchanges, start=1):
        for variant, reply in ex.replies.items():
            if reply.summary and reply.summary.get("mean_projection") is not None:
                rows.append(
                    {
                        "exchange": n, "variant": variant, "turn": reply.turn, "projection": reply.summary["mean_projection"],
                        "snippet": reply.text[:120], "pca": reply.summary.get("pca"), "umap_2d": reply.summary.get("umap_2d"),
                        "nearest": reply.summary.get("nearest", []),
                    }
                )  # fmt: skip
    return rows
