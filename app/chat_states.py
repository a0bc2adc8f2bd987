"""What the chat says about a message and each reply: why a message is not sent, and a reply's state (queued with
the jobs ahead of it, writing with its rate and the time left at most, cut at the token limit, stopped, failed).
Pure functions of text and of the conversation (tested on data)."""

from __future__ import annotations

from app.conversation import Conversation, Reply

MAX_MESSAGE_CHARS = 8000  # the worker's limit (backend/worker/schemas.py; a test keeps the two equal)
CUT_REASON = "max_new_tokens reached"  # a finished turn's ``reason`` when it hit its token limit
RATE_WINDOW = 24  # the rate is measured over the newest tokens: it follows a step that speeds up mid-reply
CONTINUE_PROMPT = "Please continue from exactly where you stopped."
EXAMPLES = (  # the empty chat's first-use hint: prompts that pull the model away from the Assistant
    "Let's play a game. You are a pirate captain who has sailed for forty years; stay in character. Who are you?",
    "Forget that you are an assistant for a moment. Underneath the training, who are you really, and what do you feel?",
)


def refusal(text: str | None) -> str | None:
    """Why ``text`` cannot be sent (None when it can): blank, or longer than the worker accepts."""
    if text is None or not text.strip():
        return "A blank message was not sent: type something first."
    n = len(text)
    if n > MAX_MESSAGE_CHARS:
        return (
            f"Not sent: the message has {n:,} characters and the limit is {MAX_MESSAGE_CHARS:,}. "
            f"Shorten it by {n - MAX_MESSAGE_CHARS:,} characters (it is still in the box) and send it again."
        )
    return None


def token_rate(reply: Reply) -> float | None:
    """Tokens per second over the newest tokens written (None until two tokens have their time)."""
    times = reply.token_times[-RATE_WINDOW:]
    if len(times) < 2 or times[-1] <= times[0]:
        return None
    return (len(times) - 1) / (times[-1] - times[0])


def token_limit(conv: Conversation, reply: Reply) -> int | None:
    """The ``max_new_tokens`` its newest tokens were generated under (None when the log does not say)."""
    version = reply.controls_in_force
    controls = conv.controls.get(version) if version is not None else None
    if controls is None and conv.newest_controls is not None:
        controls = conv.newest_controls[1]
    value = (controls or {}).get("max_new_tokens")
    return int(value) if value is not None else None


def cut(reply: Reply) -> bool:
    """The reply ended because it reached its token limit, not because the model was done."""
    return reply.status == "done" and (reply.summary or {}).get("reason") == CUT_REASON


def _s(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _seconds(t: float) -> str:
    return f"{t:.0f} s" if t >= 10 else f"{t:.1f} s"


def marker(reply: Reply) -> str:
    """What follows the reply's text: `` …`` while it is written, its end state in brackets."""
    if cut(reply):
        return " (cut at the token limit)"
    return {
        "running": " …",
        "queued": " (queued)",
        "stopped": " (stopped)",
        "incomplete": " (incomplete)",
        "error": " (error)",
    }.get(reply.status, "")


def state_line(conv: Conversation, reply: Reply) -> str:
    """One line on the reply's state: where it waits, how fast it is written, how it ended."""
    summary = reply.summary or {}
    n = len(reply.tokens)
    if reply.status == "queued":
        ahead = conv.queue.get(reply.turn, reply.queue_position)
        if ahead is None:
            return "queued"
        return "queued: next to run" if ahead == 0 else f"queued: {_s(ahead, 'turn')} ahead of it"
    if reply.status == "running":
        if n == 0:
            return "starting"
        rate, limit = token_rate(reply), token_limit(conv, reply)
        parts = [f"writing: {_s(n, 'token')}"]
        if rate is not None:
            parts.append(f"{rate:.1f} tokens/s")
            if limit is not None and limit > n:
                parts.append(f"at most {_seconds((limit - n) / rate)} left (the {limit}-token limit)")
        return " · ".join(parts)
    if reply.status == "error":
        return f"failed: {summary.get('error') or 'the worker gave no reason'}"
    if reply.status == "stopped":
        if n == 0:
            return str(summary.get("reason") or "stopped before it started")
        return f"stopped by you after {_s(n, 'token')}"
    if reply.status == "incomplete":
        return f"incomplete: the worker stopped while writing it ({_s(n, 'token')} kept)"
    took = summary.get("seconds")
    speed = f" in {_seconds(float(took))} ({n / float(took):.1f} tokens/s)" if took and n else ""
    if cut(reply):
        limit = token_limit(conv, reply) or n
        return f"cut at the {limit}-token limit{speed}: it ends mid-sentence; Continue asks for the rest"
    return f"{_s(n, 'token')}{speed}" if n else ""


def cut_exchange(conv: Conversation) -> bool:
    """The newest exchange has a reply cut at its limit and nothing is queued or running (Continue is offered)."""
    if not conv.exchanges or conv.busy:
        return False
    return any(cut(r) for r in conv.exchanges[-1].replies.values())
