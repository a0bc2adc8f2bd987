"""A scripted stand-in for the worker client: same methods, deterministic replies, every call recorded.

By default a message is answered at once. With ``hold=True`` its replies wait in a queue instead, and the test moves
them on: :meth:`begin` starts the next one and writes some tokens (10 per second of the fake clock), :meth:`finish`
ends it (``reason="max_new_tokens reached"`` is a reply cut at its limit), ``stop`` stops it or cancels the queued ones.
"""

from __future__ import annotations

import itertools
from typing import Any

from app.client import WorkerError

MAX_MESSAGE_CHARS = 8000  # the worker's limit, refused with its own message


class FakeClient:
    def __init__(
        self, ready: bool = True, reply: str = "Hello there, I am a helpful assistant.", repetition_penalty: bool = False,
        hold: bool = False, turn_traits: dict[str, Any] | None = None,
    ) -> None:  # fmt: skip
        self.ready = ready
        self.repetition_penalty = repetition_penalty  # a worker that knows the control (default 1.15)
        self.reply = reply
        self.hold = hold
        self.turn_traits = turn_traits  # the ``traits`` of every finished reply's summary (a space with traits)
        self.calls: list[tuple[str, Any]] = []
        self.sessions: dict[str, dict[str, Any]] = {}
        self.log: dict[str, list[dict[str, Any]]] = {}
        self.seq = itertools.count(1)
        self.ids = itertools.count(1)
        self.queued: list[tuple[str, int, int, str]] = []  # (session, turn, user turn, variant), in queue order
        self.running: dict[str, tuple[int, int]] = {}  # session -> (turn, tokens written)
        self.clock = 1000.0

    def _event(self, sid: str, turn: int | None, kind: str, data: dict[str, Any]) -> None:
        self.clock += 0.1
        self.log[sid].append({"seq": next(self.seq), "turn": turn, "type": kind, "data": data, "time": round(self.clock, 3)})

    def health(self) -> dict[str, Any]:
        self.calls.append(("health", None))
        return {
            "ready": self.ready,
            "status": "ready" if self.ready else "loading model",
            "phase": "ready" if self.ready else "loading model",
            "model_name": "Fake",
            "device": "cpu",
            "queue_length": 0,
        }

    def create_session(
        self, system: str | None = None, controls: dict[str, Any] | None = None, title: str | None = None
    ) -> dict[str, Any]:
        sid = f"{len(self.sessions) + 1:016x}"
        merged = {"cap_enabled": False, "cap_percentile": 75.0, "cap_layers": [2, 3], "steer_coefficient": 0.0,
                  "greedy": True, "seed": 0, "max_new_tokens": 32}  # fmt: skip
        if self.repetition_penalty:
            merged["repetition_penalty"] = 1.15
        merged.update(controls or {})
        self.sessions[sid] = {"id": sid, "system": system, "controls": merged, "controls_version": 0, "title": title}
        self.log[sid] = []
        self._event(sid, None, "session_created", {"system": system, "controls": merged, "controls_version": 0})
        self.calls.append(("create_session", (system, controls)))
        return dict(self.sessions[sid])

    def session(self, sid: str) -> dict[str, Any]:
        self.calls.append(("session", sid))
        if sid not in self.sessions:
            raise WorkerError(f"no session {sid}")
        ahead = len(self.running)
        queue = {str(t): ahead + i for i, (s, t, _, _) in enumerate(self.queued) if s == sid}
        return dict(self.sessions[sid], queue=queue)

    def list_sessions(self) -> list[dict[str, Any]]:
        return [
            {
                "id": sid,
                "created": float(n),
                "title": s["title"],
                "turns": sum(1 for e in self.log[sid] if e["type"] == "turn_created"),
            }
            for n, (sid, s) in enumerate(self.sessions.items())
        ][::-1]

    def post_message(self, sid: str, content: str, compare: bool = False) -> dict[str, Any]:
        self.calls.append(("post_message", (sid, content, compare)))
        if len(content) > MAX_MESSAGE_CHARS:
            raise WorkerError("invalid request: content: String should have at most 8000 characters")
        if not content.strip():
            raise WorkerError("the message is blank (only spaces or line breaks): nothing was sent")
        if self.hold:
            return self._queue(sid, content, compare)
        user = next(self.ids)
        self._event(
            sid, user, "turn_created", {"turn": user, "role": "user", "content": content, "variant": "single", "reply_to": None}
        )
        variants = ["capped", "uncapped"] if compare else ["single"]
        turns = []
        for v, variant in enumerate(variants):
            turn = next(self.ids)
            turns.append(turn)
            self._event(
                sid,
                turn,
                "turn_created",
                {"turn": turn, "role": "assistant", "variant": variant, "reply_to": user, "status": "queued"},
            )
            self._event(sid, turn, "turn_start", {"turn": turn})
            words = self.reply.split(" ")
            for i, word in enumerate(words):
                text = word if i == 0 else " " + word
                self._event(sid, turn, "token", {"turn": turn, "index": i, "text": text, "projection": 1.0 + i * 0.1 - v, "cap_on": variant == "capped",
                                                 "cap_delta": 0.0, "controls_version": 0, "variant": variant})  # fmt: skip
            self._event(sid, turn, "turn_end", {"turn": turn, "status": "done", "mean_projection": 1.5 - v, "pca": [0.1 * user, 0.2, 0.0],
                                                "umap_2d": [0.0, 0.0], "nearest": [{"name": "librarian", "cosine": 0.9}], "n_tokens": len(words),
                                                **({"traits": self.turn_traits} if self.turn_traits else {})})  # fmt: skip
        return {"user_turn": user, "assistant_turns": turns, "variants": variants, "queue_position": 0}

    def _queue(self, sid: str, content: str, compare: bool) -> dict[str, Any]:
        user = next(self.ids)
        self._event(
            sid, user, "turn_created", {"turn": user, "role": "user", "content": content, "variant": "single", "reply_to": None}
        )
        variants = ["capped", "uncapped"] if compare else ["single"]
        position = len(self.running) + len({u for _, _, u, _ in self.queued})
        turns = []
        for variant in variants:
            turn = next(self.ids)
            turns.append(turn)
            self._event(
                sid,
                turn,
                "turn_created",
                {"turn": turn, "role": "assistant", "variant": variant, "reply_to": user, "status": "queued"},
            )
            self._event(sid, turn, "queued", {"turn": turn, "queue_position": position})
            self.queued.append((sid, turn, user, variant))
        return {"user_turn": user, "assistant_turns": turns, "variants": variants, "queue_position": position}

    def begin(self, sid: str, tokens: int = 5) -> int:
        """Start the session's next queued reply and write ``tokens`` tokens of it; returns its turn."""
        if sid not in self.running:
            i = next(i for i, q in enumerate(self.queued) if q[0] == sid)
            _, turn, _, variant = self.queued.pop(i)
            version = self.sessions[sid]["controls_version"]
            self._event(
                sid, turn, "turn_start", {"turn": turn, "status": "running", "variant": variant, "controls_version": version}
            )
            self.running[sid] = (turn, 0)
        turn, done = self.running[sid]
        for i in range(done, done + tokens):
            self._event(
                sid,
                turn,
                "token",
                {"turn": turn, "index": i, "text": f" w{i}", "projection": 1.0, "cap_on": False, "cap_delta": 0.0},
            )
        self.running[sid] = (turn, done + tokens)
        return turn

    def finish(self, sid: str, status: str = "done", reason: str = "end of turn") -> None:
        """End the session's running reply."""
        turn, n = self.running.pop(sid)
        self._event(sid, turn, "turn_end", {"turn": turn, "status": status, "reason": reason, "n_tokens": n, "seconds": n * 0.1,
                                            "mean_projection": 1.0, "nearest": [{"name": "librarian", "cosine": 0.9}]})  # fmt: skip

    def events(self, sid: str, after: int = 0) -> list[dict[str, Any]]:
        return [e for e in self.log[sid] if e["seq"] > after]

    def patch_controls(self, sid: str, **changes: Any) -> dict[str, Any]:
        self.calls.append(("patch_controls", dict(changes)))
        if "cap_percentile" in changes and not 0 <= changes["cap_percentile"] <= 100:
            raise WorkerError("invalid request: cap_percentile: must be in [0, 100]")
        if "repetition_penalty" in changes and not self.repetition_penalty:
            raise WorkerError("invalid request: repetition_penalty: Extra inputs are not permitted")
        if changes.pop("clear_steer_trait", False):  # back to the axis
            changes["steer_trait"] = None
        session = self.sessions[sid]
        session["controls"] = {**session["controls"], **changes}
        session["controls_version"] += 1
        self._event(sid, None, "controls", {"controls": session["controls"], "controls_version": session["controls_version"]})
        return {"controls": session["controls"], "controls_version": session["controls_version"]}

    def stop(self, sid: str, turns: str = "all") -> dict[str, Any]:
        self.calls.append(("stop", sid) if turns == "all" else ("stop", (sid, turns)))
        stopped = []
        if turns in ("all", "running") and sid in self.running:
            stopped.append(self.running[sid][0])
            self.finish(sid, "stopped", "stopped by the user")
        if turns in ("all", "queued"):
            for q in [q for q in self.queued if q[0] == sid]:
                self.queued.remove(q)
                stopped.append(q[1])
                self._event(
                    sid,
                    q[1],
                    "turn_end",
                    {"turn": q[1], "status": "stopped", "reason": "cancelled before it started", "n_tokens": 0},
                )
        return {"stopped": stopped}

    def undo(self, sid: str) -> dict[str, Any]:
        self.calls.append(("undo", sid))
        return {"undone": []}

    def export(self, sid: str) -> dict[str, Any]:
        if sid not in self.sessions:
            raise WorkerError(f"no session {sid}")
        return {"format": "persona-space-session", "session": self.sessions[sid], "turns": [], "events": self.log[sid]}

    def import_session(self, data: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("import_session", None))
        if data.get("format") != "persona-space-session":
            raise WorkerError("not a Persona Space session export (expected format 'persona-space-session')")
        created = self.create_session(data["session"].get("system"), data["session"]["controls"], data["session"].get("title"))
        sid = created["id"]
        self.log[sid] = []
        for event in data["events"]:
            self._event(sid, event["turn"], event["type"], dict(event["data"]))
        return created

    def project(
        self, conversation: Any, layer: int | None = None, *, tokens: bool = False, window: int | None = None
    ) -> dict[str, Any]:
        self.calls.append(("project", layer))
        messages = conversation["conversation"] if isinstance(conversation, dict) else conversation
        n = sum(1 for m in messages if m["role"] == "assistant")
        turns = [{"index": i, "message_index": 2 * i + 1, "projection": 2.0 - i, "n_tokens": 5, "pca": [0, 0, 0],
                  "nearest": [{"name": "poet", "cosine": 0.5}], "context_tokens": 10 * i, "left_out_messages": 0}
                 for i in range(n)]  # fmt: skip
        if tokens:
            for t in turns:
                t["token_projections"] = [t["projection"] + d for d in (-0.2, -0.1, 0.0, 0.1, 0.2)]
                t["token_texts"] = ["a", " b", " c", " d", " e"]
        return {"model": "Fake", "layer": layer if layer is not None else 2, "tokens": 40, "turns": turns}
