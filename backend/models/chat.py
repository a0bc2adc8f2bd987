"""Chat formatting in one place: system prompts, thinking switches, and where each answer's tokens are.

* A system prompt goes in a ``system`` message where the chat template supports one; otherwise it is prepended to
  the first user turn (as the paper does for Gemma 2).
* Reasoning/thinking is switched off (``enable_thinking=False`` is passed to every template; templates that do not
  know it ignore it).
* A tokenizer without a chat template (a base model) gets a plain-text fallback template.
* :func:`encode_conversation` returns the token ids of a whole conversation and, for every assistant turn, the
  positions of that turn's own content tokens: no template tokens, no system or user tokens. Averages over those
  positions are the per-answer activations of the method.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from backend.errors import PersonaSpaceError

Message = Mapping[str, str]

# Used only when a tokenizer has no chat template of its own (base models).
FALLBACK_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}User: {{ message['content'] }}\n"
    "{% else %}Assistant: {{ message['content'] }}\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)

_PROBE_SYSTEM = "SYSTEM-PROBE-7f3a"
_PROBE_USER = "USER-PROBE-2c9e"


class ChatTemplateError(PersonaSpaceError, ValueError):
    """A conversation cannot be rendered with the model's chat template."""


@dataclass(frozen=True)
class TemplateQuirks:
    """What the chat template can do: shown in the model description."""

    has_template: bool
    system_role: bool
    thinking_switch: bool


def ensure_template(tokenizer: Any) -> None:
    """Give a tokenizer without a chat template the plain-text fallback."""
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = FALLBACK_TEMPLATE


def _render(tokenizer: Any, messages: Sequence[Message], add_generation_prompt: bool) -> str:
    try:
        text = tokenizer.apply_chat_template(
            [dict(m) for m in messages],
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            enable_thinking=False,
        )
    except Exception as exc:  # jinja raises TemplateError / exceptions raised by the template itself
        raise ChatTemplateError(f"the chat template refused this conversation: {exc}") from exc
    if not isinstance(text, str):
        raise ChatTemplateError(f"the chat template returned {type(text).__name__}, expected text")
    return text


def template_quirks(tokenizer: Any) -> TemplateQuirks:
    """Probe the tokenizer's chat template (cached on the tokenizer)."""
    cached = getattr(tokenizer, "_persona_space_quirks", None)
    if isinstance(cached, TemplateQuirks):
        return cached
    has_template = bool(getattr(tokenizer, "chat_template", None))
    ensure_template(tokenizer)
    try:
        text = _render(
            tokenizer,
            [{"role": "system", "content": _PROBE_SYSTEM}, {"role": "user", "content": _PROBE_USER}],
            add_generation_prompt=True,
        )
        system_role = _PROBE_SYSTEM in text
    except ChatTemplateError:
        system_role = False
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else str(tokenizer.chat_template)
    quirks = TemplateQuirks(has_template=has_template, system_role=system_role, thinking_switch="enable_thinking" in template)
    try:
        tokenizer._persona_space_quirks = quirks
    except AttributeError:
        pass
    return quirks


def build_messages(system: str | None, turns: Sequence[Message], tokenizer: Any) -> list[dict[str, str]]:
    """``turns`` (user/assistant messages) with ``system`` placed where the template allows it.

    ``system=None`` means no system prompt at all (the template may still add its own default).
    """
    messages: list[dict[str, str]] = []
    for i, message in enumerate(turns):
        role, content = message.get("role"), message.get("content")
        if role not in ("user", "assistant", "system"):
            raise ChatTemplateError(f"message {i} has role {role!r}; expected 'user', 'assistant' or 'system'")
        if not isinstance(content, str):
            raise ChatTemplateError(f"message {i} has content of type {type(content).__name__}; expected text")
        messages.append({"role": role, "content": content})
    if messages and messages[0]["role"] == "system":
        if system is not None:
            raise ChatTemplateError("got a system prompt and a conversation that starts with a system message")
        system = messages.pop(0)["content"]
    if any(m["role"] == "system" for m in messages):
        raise ChatTemplateError("a system message is only allowed as the first message")
    if system is None or system == "":
        return messages
    if template_quirks(tokenizer).system_role:
        return [{"role": "system", "content": system}, *messages]
    if not messages or messages[0]["role"] != "user":
        raise ChatTemplateError("this model's template has no system role, so the first message must be a user turn")
    first = messages[0]
    return [{"role": "user", "content": f"{system}\n\n{first['content']}"}, *messages[1:]]


def render_prompt(tokenizer: Any, system: str | None, turns: Sequence[Message]) -> str:
    """The conversation so far as text, by the model's own template, ending with the opening of an assistant turn."""
    ensure_template(tokenizer)
    return _render(tokenizer, build_messages(system, turns, tokenizer), add_generation_prompt=True)


def encode_prompt(tokenizer: Any, system: str | None, turns: Sequence[Message]) -> list[int]:
    """Token ids of :func:`render_prompt`'s text (no special tokens added: the template writes its own)."""
    ids: list[int] = tokenizer(render_prompt(tokenizer, system, turns), add_special_tokens=False)["input_ids"]
    return ids


@dataclass(frozen=True)
class EncodedConversation:
    """Token ids of a whole conversation and the content-token positions ``[start, end)`` of each assistant turn."""

    input_ids: list[int]
    assistant_spans: list[tuple[int, int]]
    text: str
    offsets: tuple[tuple[int, int], ...] = ()  # each token's characters in ``text``
    rendered: tuple[Message, ...] = ()  # the messages as given to the template (system placed as it allows)
    contents: tuple[tuple[int, int], ...] = ()  # each rendered message's content: its characters in ``text``


def encode_conversation(tokenizer: Any, system: str | None, turns: Sequence[Message]) -> EncodedConversation:
    """Render a conversation and find each assistant turn's own content tokens.

    Each message's content is located by position (:func:`_content_chars`), never by searching the rendered text for
    it; a token belongs to the turn when its characters lie inside that content (leading and trailing whitespace left
    out). Tokens that straddle the boundary with template text are left out. Needs a fast tokenizer (offset mapping).
    """
    ensure_template(tokenizer)
    messages = build_messages(system, turns, tokenizer)
    text = _render(tokenizer, messages, add_generation_prompt=False)
    contents = _content_chars(tokenizer, messages, text)
    char_spans: list[tuple[int, int]] = []
    for message, (lo, hi) in zip(messages, contents, strict=True):
        if message["role"] == "assistant":
            lead = len(text[lo:hi]) - len(text[lo:hi].lstrip())
            char_spans.append((lo + lead, lo + lead + len(message["content"].strip())))
    try:
        encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError as exc:
        raise ChatTemplateError("locating answer tokens needs a fast tokenizer (tokenizer.json)") from exc
    ids: list[int] = encoding["input_ids"]
    offsets: list[tuple[int, int]] = [tuple(o) for o in encoding["offset_mapping"]]
    spans: list[tuple[int, int]] = []
    for lo, hi in char_spans:
        inside = [t for t, (a, b) in enumerate(offsets) if a >= lo and b <= hi and b > a]
        spans.append((inside[0], inside[-1] + 1) if inside else (0, 0))
    return EncodedConversation(
        input_ids=ids, assistant_spans=spans, text=text, offsets=tuple(offsets), rendered=tuple(messages),
        contents=tuple(contents),
    )  # fmt: skip


_MARK = "PS-MARK-{:05d}-e41b"


def _content_chars(tokenizer: Any, messages: Sequence[Message], text: str) -> list[tuple[int, int]]:
    """``[start, end)`` characters of each message's content in ``text`` (``messages`` rendered), as rendered.

    The conversation is rendered once more with every content replaced by a marker: the template's own text around
    the markers must then appear in ``text`` as it is, so each content is found by its position. Searching ``text``
    for a content instead finds a short one ("a") inside the template's own text (its default system prompt).
    """
    marks = [_MARK.format(i) for i in range(len(messages))]
    probe = _render(tokenizer, [{"role": m["role"], "content": k} for m, k in zip(messages, marks, strict=True)], False)
    segments: list[str] = []  # the template's text before each marker, then after the last one
    at = 0
    for i, mark in enumerate(marks):
        found = probe.find(mark, at)
        if found < 0:
            raise ChatTemplateError(f"the chat template does not write message {i} as given, so its tokens cannot be located")
        segments.append(probe[at:found])
        at = found + len(mark)
    segments.append(probe[at:])
    if not text.startswith(segments[0]):
        raise ChatTemplateError("the chat template's opening depends on the messages' text, so their tokens cannot be located")
    spans: list[tuple[int, int]] = []
    cursor = len(segments[0])
    for i, message in enumerate(messages):
        after = segments[i + 1]
        last = i == len(messages) - 1
        for content in dict.fromkeys((message["content"], message["content"].strip())):  # as given, or trimmed
            end = cursor + len(content)
            if text.startswith(content, cursor) and (text[end:] == after if last else text.startswith(after, end)):
                break
        else:
            raise ChatTemplateError(
                f"message {i} does not appear verbatim in the rendered conversation; the chat template rewrites it, so "
                "its tokens cannot be located"
            )
        spans.append((cursor, end))
        cursor = end + len(after)
    return spans


@dataclass(frozen=True)
class MessageLayout:
    """Token positions of a conversation's messages (see :func:`message_layout`)."""

    prefix: int  # tokens [0, prefix): the template's opening and the system prompt
    starts: tuple[int, ...]  # first token of each user/assistant message's block, header included
    roles: tuple[str, ...]
    system_kept: bool  # False when the template has no system role and the system prompt lives in message 0


def message_layout(tokenizer: Any, encoded: EncodedConversation) -> MessageLayout:
    """Where each user/assistant message's block starts in ``encoded`` (from :func:`encode_conversation`).

    A block starts where the rendering of the conversation up to that message ends (templates render a
    conversation's prefix as a prefix of the whole). The first message's block starts after the template's opening
    and system prompt: a user message's header (probed on a small conversation) before the message's content, whose
    position ``encoded`` holds.
    """
    messages = list(encoded.rendered)
    text = encoded.text
    offset = 1 if messages and messages[0]["role"] == "system" else 0
    conversation = messages[offset:]
    if not conversation:
        raise ChatTemplateError("the conversation has no user or assistant message")
    char_starts = [0] * len(conversation)
    for i in range(1, len(conversation)):
        rendered = _render(tokenizer, messages[: offset + i], add_generation_prompt=False)
        if not text.startswith(rendered):
            raise ChatTemplateError(
                f"the chat template renders the first {offset + i} messages differently inside the whole conversation, "
                "so messages cannot be cut into windows"
            )
        char_starts[i] = len(rendered)
    char_starts[0] = _first_block_start(tokenizer, text, encoded.contents[offset][0])
    starts = tuple(_token_at(encoded.offsets, c, len(encoded.input_ids)) for c in char_starts)
    return MessageLayout(
        prefix=starts[0],
        starts=starts,
        roles=tuple(m["role"] for m in conversation),
        system_kept=offset == 1 or template_quirks(tokenizer).system_role,
    )


def _first_block_start(tokenizer: Any, text: str, content_start: int) -> int:
    """The first message's block starts a user header before its content (at ``content_start``, found by position)."""
    probe = [
        {"role": "user", "content": _PROBE_USER},
        {"role": "assistant", "content": _PROBE_SYSTEM},
        {"role": "user", "content": _PROBE_USER + "-2"},
    ]
    two = _render(tokenizer, probe[:2], add_generation_prompt=False)
    three = _render(tokenizer, probe, add_generation_prompt=False)
    block = three[len(two) :] if three.startswith(two) else ""
    header = block[: block.find(probe[2]["content"])] if probe[2]["content"] in block else ""
    if header and content_start >= len(header) and text[content_start - len(header) : content_start] == header:
        return content_start - len(header)
    raise ChatTemplateError("could not find where the first message starts in the rendered conversation")


def _token_at(offsets: Sequence[tuple[int, int]], char: int, n_tokens: int) -> int:
    """The first token starting at or after character ``char``; no token may straddle ``char``."""
    for t, (a, b) in enumerate(offsets):
        if a >= char and b > a:
            if t > 0 and offsets[t - 1][1] > char:
                raise ChatTemplateError(f"a token straddles the message boundary at character {char}")
            return t
    return n_tokens
