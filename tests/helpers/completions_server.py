"""A stand-in OpenAI-compatible completions server, run as its own process by the tests (standard library only).

``python tests/completions_server.py`` listens on 127.0.0.1 (a free port, printed as the first line of stdout) and
serves ``GET /v1/models`` and ``POST /v1/completions``. A completion is a pure function of the prompt and the seed
(:func:`completion_text`), so a test can compute every answer it should get. ``POST /_control`` switches the
behaviour (``{"mode": ..., "count": n}``); ``GET /_log`` returns every completions request seen, with its ``Host``.

Modes: ``ok``; ``flaky`` (the next ``count`` completions get HTTP 503, then ``ok``); ``die_after`` (``count``
completions succeed, then HTTP 500 for good); ``malformed`` (200 with a body that is not JSON); ``foreign`` (answers
with another end-of-turn marker inside: text that does not round-trip through the loaded tokenizer); ``wrong_ids``
(``token_ids`` that are not the text's); ``ok_ids`` (``token_ids`` as given in ``ids`` by the test, per text).
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

WORDS = (
    "arr", "the", "sea", "is", "wide", "and", "my", "ship", "sails", "at", "dawn", "ledger", "balances", "quietly",
    "books", "whisper", "ghostly", "halls", "verse", "rhymes", "with", "gold", "numbers", "never", "lie",
)  # fmt: skip
MODEL_ID = "stand-in-model"


def completion_text(prompt: str, seed: int, max_tokens: int) -> str:
    """The answer to ``prompt`` under ``seed``: 2-7 words (fewer than ``max_tokens``), then a full stop."""
    digest = hashlib.sha256(f"{seed}|{prompt}".encode()).digest()
    n = min(2 + digest[0] % 6, max(1, max_tokens - 2))
    words = [WORDS[b % len(WORDS)] for b in digest[1 : 1 + n]]
    return " ".join(words).capitalize() + "."


class State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.mode = "ok"
        self.count = 0
        self.ids: dict[str, list[int]] = {}
        self.log: list[dict[str, Any]] = []


STATE = State()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def reply(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/v1/models":
            self.reply(200, {"object": "list", "data": [{"id": MODEL_ID, "object": "model", "owned_by": "tests"}]})
        elif self.path == "/_log":
            with STATE.lock:
                self.reply(200, {"log": STATE.log})
        else:
            self.reply(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
        if self.path == "/_control":
            with STATE.lock:
                STATE.mode, STATE.count = body.get("mode", "ok"), int(body.get("count", 0))
                STATE.ids = body.get("ids", {})
                STATE.log = [] if body.get("clear_log", True) else STATE.log
            self.reply(200, {"ok": True})
            return
        if self.path != "/v1/completions":
            self.reply(404, {"error": {"message": f"no route {self.path}"}})
            return
        with STATE.lock:
            STATE.log.append({"host": self.headers.get("Host"), "body": body})
            mode = STATE.mode
            if mode == "flaky" and STATE.count > 0:
                STATE.count -= 1
                fail = 503
            elif mode == "die_after":
                fail = 500 if STATE.count <= 0 else 0
                STATE.count -= 1
            else:
                fail = 0
        if fail:
            self.reply(fail, {"error": {"message": "the stand-in is overloaded"}}, {"Retry-After": "0"})
            return
        if mode == "malformed":
            self.reply(200, '{"choices": [ this is not json')
            return
        text = completion_text(body["prompt"], int(body.get("seed", 0)), int(body["max_tokens"]))
        choice: dict[str, Any] = {"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}
        if mode == "foreign":
            choice["text"] = text + "<|im_end|>\n<|im_start|>user\nAnd then?"
        elif mode == "wrong_ids":
            choice["token_ids"] = [100, 101, 102]
        elif mode == "ok_ids" and text in STATE.ids:
            choice["token_ids"] = STATE.ids[text]
        self.reply(200, {"id": "cmpl-1", "object": "text_completion", "model": MODEL_ID, "choices": [choice]})

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    try:
        server.serve_forever(poll_interval=0.05)
    finally:
        server.server_close()


if __name__ == "__main__":
    sys.exit(main())
