"""A real worker process on a free port, and small helpers to talk to it (used by the worker tests)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def big_export(n_turns: int = 100, tokens_per_turn: int = 460) -> dict[str, Any]:
    """A session export of about 19 MB: ``n_turns`` exchanges with ``tokens_per_turn`` token events each."""
    turns: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    for i in range(n_turns):
        user, reply = 2 * i + 1, 2 * i + 2
        turns.append({"id": user, "role": "user", "content": "hello " * 20, "status": "done"})
        turns.append({"id": reply, "role": "assistant", "content": " word" * tokens_per_turn, "status": "done", "reply_to": user})
        for k in range(tokens_per_turn):
            data = {"turn": reply, "index": k, "token_id": 123, "text": " word", "projection": 1.23456, "monitor_layer": 15,
                    "controls_version": 0, "variant": "single", "cap_on": True, "tau": [1.1] * 6, "cap_delta": 0.1,
                    "cap_deltas": [0.1] * 6, "projection_before_cap": 1.0, "projection_after_cap": 1.1, "cap_layers": [21, 27]}  # fmt: skip
            events.append({"seq": len(events) + 1, "type": "token", "turn": reply, "data": data})
    return {"format": "persona-space-session", "session": {"controls": {}}, "turns": turns, "events": events}


class Worker:
    def __init__(
        self,
        model: str,
        space: Path,
        db: Path,
        token: str | None = None,
        extra: list[str] | None = None,
        env: dict[str, str] | None = None,
        compile: bool = False,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = db.with_suffix(f".{self.port}.log")
        cmd = [
            sys.executable,
            "-m",
            "backend",
            "serve",
            "--model",
            model,
            "--space",
            str(space),
            "--port",
            str(self.port),
            "--db",
            str(db),
        ]
        environ = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
        environ.pop("PERSONA_SPACE_TOKEN", None)
        environ.pop("PERSONA_SPACE_PRECISION", None)  # a test asks for int8 with --precision
        environ.update(env or {})
        if token:
            environ["PERSONA_SPACE_TOKEN"] = token  # never on the command line, where `ps` shows it
        if not compile:  # compiling the decode step in every test worker would keep two cores busy for minutes
            cmd.append("--no-compile")
        self.proc = subprocess.Popen(
            cmd + (extra or []), cwd=ROOT, env=environ, stdout=open(self.log, "w"), stderr=subprocess.STDOUT
        )
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.Client(base_url=self.url, timeout=60, headers=headers)

    def wait_ready(self, timeout: float = 180) -> dict[str, Any]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}: {self.log.read_text()[-3000:]}")
            try:
                health = self.client.get("/health").json()
                if health.get("ready"):
                    return health
                if health.get("error"):
                    raise RuntimeError(health["error"])
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"worker not ready after {timeout}s: {self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def close(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    # API helpers ---------------------------------------------------------------------------------------
    def session(self, **body: Any) -> str:
        r = self.client.post("/sessions", json=body)
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def say(self, sid: str, content: str, **extra: Any) -> dict[str, Any]:
        r = self.client.post(f"/sessions/{sid}/messages", json={"content": content, **extra})
        assert r.status_code == 202, r.text
        return dict(r.json())

    def events(self, sid: str, after: int = 0) -> list[dict[str, Any]]:
        return list(self.client.get(f"/sessions/{sid}/events", params={"after": after}).json()["events"])

    def stream(
        self, sid: str, after: int = 0, until_idle: bool = True, max_events: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """Server-sent events, parsed; stops after ``max_events`` (simulating a dropped connection)."""
        params = {"after": after, "follow": "true", "until_idle": "true" if until_idle else "false"}
        n = 0
        with self.client.stream("GET", f"/sessions/{sid}/events", params=params, timeout=120) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            data = None
            for line in response.iter_lines():
                if line.startswith("data: "):
                    data = line[6:]
                elif line == "" and data is not None:
                    event = json.loads(data)
                    data = None
                    if not event:
                        return  # the idle marker
                    yield event
                    n += 1
                    if max_events is not None and n >= max_events:
                        return

    def wait_idle(self, sid: str, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if not self.client.get(f"/sessions/{sid}").json()["busy"]:
                return
            time.sleep(0.1)
        raise TimeoutError("session still busy")

    def wait_tokens(self, sid: str, turn: int, n: int, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if sum(1 for e in self.events(sid) if e["type"] == "token" and e["turn"] == turn) >= n:
                return
            time.sleep(0.02)
        raise TimeoutError(f"turn {turn} did not reach {n} tokens")
