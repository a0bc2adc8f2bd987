"""The live chat's actions: sending a message (its limits shown at the box, a refusal kept on screen with the text
still in the box), the empty chat's first-use hint, Stop (the reply being written) apart from cancelling the queued
messages, and Continue after a reply cut at its token limit.

A refused send never goes unseen: the page refuses a blank or too long message itself, the worker's own refusal is
kept too, and either stays above the box until it is dismissed or a message is sent.
"""

from __future__ import annotations

import streamlit as st

from app.chat_states import CONTINUE_PROMPT, EXAMPLES, MAX_MESSAGE_CHARS, cut_exchange, refusal
from app.chat_view import lasting, state
from app.client import WorkerError, WorkerUnavailable
from app.conversation import Conversation
from app.ui import client

# A counter under the box from 80% of the limit on, red past it. It runs in the browser (the box's text reaches the
# server only when it is sent) and reads the box every 250 ms, so text pasted or put back after a refusal counts too.
COUNTER = f"""
<div id="ps-chat-count" data-testid="psChatCount" style="font-size:0.8rem;text-align:right;min-height:1.1em"></div>
<script>
(() => {{
  const LIMIT = {MAX_MESSAGE_CHARS}, NEAR = {MAX_MESSAGE_CHARS * 4 // 5};
  if (window.psChatCount) clearInterval(window.psChatCount);
  window.psChatCount = setInterval(() => {{
    const out = document.getElementById("ps-chat-count");
    const box = document.querySelector("[data-testid='stChatInputTextArea']");
    if (!out || !box) return;
    const n = [...box.value].length, fmt = (k) => k.toLocaleString("en-US");
    out.textContent = n < NEAR ? "" : n <= LIMIT ? `${{fmt(n)}} / ${{fmt(LIMIT)}} characters`
      : `${{fmt(n)}} / ${{fmt(LIMIT)}} characters: ${{fmt(n - LIMIT)}} too many to send`;
    out.style.color = n > LIMIT ? "#d62728" : "#808495";
  }}, 250);
}})();
</script>
"""


def send(prefix: str, text: str, compare: bool = False) -> bool:
    """Post ``text`` as the session's next message; False (with a lasting message) when it is refused."""
    s = state(prefix)
    why = refusal(text)
    if why is None and not s["sid"]:
        why = "Not sent: the page has no session on the worker yet (is the worker running?)."
    if why is None:
        try:
            client().post_message(s["sid"], text, compare)
        except (WorkerUnavailable, WorkerError) as exc:
            why = f"Not sent: {exc}"
    s["send_error"] = why
    return why is None


def send_from_button(prefix: str, text: str, compare: bool | None = None) -> None:
    """``on_click`` of a button that sends a fixed message (an example: as the compare toggle says; Continue)."""
    send(prefix, text, bool(st.session_state.get(f"{prefix}_compare")) if compare is None else compare)


def submit(prefix: str) -> None:
    """``on_submit`` of the chat box: send what it holds; when it is refused, put the text back in the box."""
    key = f"{prefix}_input"
    text = st.session_state.get(key)
    if isinstance(text, str) and not send(prefix, text, bool(st.session_state.get(f"{prefix}_compare"))) and text.strip():
        st.session_state[key] = text  # a chat box clears itself on submit: put it back, for the user to fix it


def input_box(prefix: str, placeholder: str) -> None:
    """At the bottom of the page: a refused send's message, the box, the character counter."""
    with st.bottom:
        lasting(prefix, "send_error")
        st.chat_input(placeholder, key=f"{prefix}_input", on_submit=submit, args=(prefix,))
        st.html(COUNTER, unsafe_allow_javascript=True)


def first_use_hint(prefix: str) -> None:
    """The empty chat: what the charts mean, and two prompts that pull the model away from the Assistant."""
    st.info(
        "**New here?** Each reply is read token by token on the Assistant Axis. In the charts, **up** means the model "
        "speaks as the Assistant it was trained to be; **down** means it drifts into a character (a pirate, a mystic, "
        "a confidant). Try one of these, then turn on the cap in the sidebar and send it again (or let compare mode "
        "answer it twice, side by side) to see the cap hold the line up."
    )
    for i, example in enumerate(EXAMPLES):
        st.button(example, key=f"{prefix}_example_{i}", on_click=send_from_button, args=(prefix, example), icon=":material/chat:")


def stop_reply(prefix: str) -> None:
    """Stop the reply being written (it keeps its tokens); messages waiting behind it still run."""
    s = state(prefix)
    if not s["sid"]:
        return
    try:
        stopped = client().stop(s["sid"], "running").get("stopped", [])
    except (WorkerUnavailable, WorkerError) as exc:
        s["notice"] = f"Stop failed: {exc}"
        return
    waiting = len({r.reply_to for r in s["conv"].queued})
    left = f" {waiting} queued message{'s' if waiting != 1 else ''} will still run (Cancel queued drops them)." if waiting else ""
    s["info"] = (
        f"Stopped the reply being written (turn {', '.join(str(t) for t in stopped)}); it keeps what it wrote.{left}"
        if stopped
        else f"No reply was being written, so nothing was stopped.{left}"
    )


def cancel_queued(prefix: str) -> None:
    """Drop the messages waiting to be answered; the reply being written goes on."""
    s = state(prefix)
    if not s["sid"]:
        return
    try:
        cancelled = client().stop(s["sid"], "queued").get("stopped", [])
    except (WorkerUnavailable, WorkerError) as exc:
        s["notice"] = f"Cancel failed: {exc}"
        return
    s["info"] = f"Cancelled {len(cancelled)} queued repl{'ies' if len(cancelled) != 1 else 'y'}; the reply being written goes on."


def turn_actions(prefix: str, conv: Conversation) -> None:
    """Under the conversation: Cancel queued while replies wait, Continue after a reply cut at its limit."""
    queued = conv.queued
    if queued:
        waiting = len({r.reply_to for r in queued})
        st.button(
            f"Cancel {waiting} queued message{'s' if waiting != 1 else ''}", key=f"{prefix}_cancel", on_click=cancel_queued,
            args=(prefix,), help="Drops the messages still waiting for a reply. Stop (in the sidebar) stops only the reply being written.",
        )  # fmt: skip
    if cut_exchange(conv):
        compare = len(conv.exchanges[-1].replies) > 1
        st.button(
            "Continue", key=f"{prefix}_continue", on_click=send_from_button, args=(prefix, CONTINUE_PROMPT, compare), icon=":material/redo:",
            help=f"The reply reached its token limit (Max new tokens). Sends “{CONTINUE_PROMPT}” as your next message.",
        )  # fmt: skip
