"""A scripted chat-completions server on 127.0.0.1 (the OpenAI-compatible judge's stand-in)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# (status, headers, body) for one request; body is a dict (sent as JSON) or raw text.
Reply = tuple[int, dict[str, str], Any]


def ok(content: str) -> Reply:
    return 200, {}, {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class Server:
    """A chat-completions stand-in: ``respond(body, n)`` scripts the reply to request number ``n`` (0-based)."""

    base_url: str
    respond: Callable[[dict[str, Any], int], Reply] = lambda body, n: ok("3")
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
