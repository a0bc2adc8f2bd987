"""Windows over a long conversation: which tokens each assistant turn is read with.

A conversation longer than the model's context (or than a window asked for) cannot be read in one pass. Each
assistant turn is then read in a *window*: the conversation's prefix (the template's opening and the system
prompt, always kept) followed by whole messages, from a user message up to and including the turn itself. A
window never cuts inside a message.

Reading every turn with the most context that fits would re-read about a whole window per turn. Instead, turns are
read in *groups* that share one window start, in one forward pass (the model is causal: tokens after a turn do not
change its reading, so one pass over the group's window gives each turn exactly the reading of a window that ends
with it). When the next turn no longer fits, the window start moves forward just far enough that the turn keeps
``history`` (a fraction of the window) of earlier conversation; the tokens read in all then stay within about
``1 / (1 - history)`` times the conversation's length. ``history = 1`` moves the start as little as possible: every
turn then sees the most context that fits, at the cost of re-reading up to a window per turn.

Everything here is plain integer arithmetic on token positions: no model, no tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from backend.errors import PersonaSpaceError


class WindowError(PersonaSpaceError, ValueError):
    """A conversation that cannot be cut into windows as asked."""


@dataclass(frozen=True)
class Layout:
    """Where things are in a conversation's token ids.

    ``prefix``: tokens ``[0, prefix)`` are kept in every window (template opening, system prompt).
    ``starts[i]``: the first token of message ``i``'s block (its template header included); ``starts[0] >= prefix``.
    ``roles[i]``: ``"user"`` or ``"assistant"``. ``total``: the number of tokens.
    """

    prefix: int
    starts: tuple[int, ...]
    roles: tuple[str, ...]
    total: int

    def __post_init__(self) -> None:
        if len(self.starts) != len(self.roles):
            raise WindowError(f"{len(self.starts)} message starts for {len(self.roles)} messages")
        bounds = (self.prefix, *self.starts, self.total)
        if any(b > a for a, b in zip(bounds[1:], bounds, strict=False)) or self.prefix < 0:
            raise WindowError(f"message starts must increase within 0..{self.total}: prefix {self.prefix}, {list(self.starts)}")

    def end(self, message: int) -> int:
        """One past the last token of message ``message``'s block."""
        return self.starts[message + 1] if message + 1 < len(self.starts) else self.total


@dataclass(frozen=True)
class Window:
    """Assistant message ``message`` is read in a pass over ``prefix`` + tokens ``[start_token, end)``.

    ``first_message`` is the window's first message; messages before it were left out. ``context`` counts the tokens
    the turn's reading could see before its own block (prefix included).
    """

    message: int
    first_message: int
    start_token: int
    end: int
    context: int
    group: int


@dataclass(frozen=True)
class Group:
    """One forward pass: the prefix, then tokens ``[start_token, end)``; reads the turns in ``messages``."""

    first_message: int
    start_token: int
    end: int
    messages: tuple[int, ...]

    def length(self, prefix: int) -> int:
        return prefix + self.end - self.start_token


@dataclass(frozen=True)
class Plan:
    windows: tuple[Window, ...]
    groups: tuple[Group, ...]
    unreadable: dict[int, str]  # assistant message index -> why it cannot be read within the window

    def tokens_read(self, prefix: int) -> int:
        return sum(g.length(prefix) for g in self.groups)


def plan_windows(layout: Layout, window: int, history: float = 0.5) -> Plan:
    """Cut the conversation into groups of turns read with the same window start (see the module docstring).

    Raises :class:`WindowError` for a window that cannot even hold the prefix or a ``history`` outside [0, 1].
    A turn whose own block plus its user message (or, failing that, the turn alone) does not fit is reported in
    ``unreadable`` and left out of every group.
    """
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise WindowError(f"the window must be a positive number of tokens, got {window!r}")
    if not 0.0 <= history <= 1.0:
        raise WindowError(f"history must be a fraction in [0, 1], got {history!r}")
    if layout.prefix >= window:
        raise WindowError(
            f"the conversation's opening (template and system prompt) is {layout.prefix} tokens: a window of {window} "
            "cannot hold it and any message"
        )
    room = window - layout.prefix  # tokens of messages a window can hold
    keep = int(history * room)
    windows: list[Window] = []
    groups: list[Group] = []
    unreadable: dict[int, str] = {}
    first = 0  # the current window's first message
    members: list[int] = []

    def close() -> None:
        if members:
            groups.append(Group(first, layout.starts[first], layout.end(members[-1]), tuple(members)))

    for message, role in enumerate(layout.roles):
        if role != "assistant":
            continue
        end = layout.end(message)
        if end - layout.starts[first] <= room:
            windows.append(_window(layout, message, first, len(groups)))
            members.append(message)
            continue
        # The window must move: to a user message when one fits (the turn keeps its question), else the turn alone.
        users = [i for i in range(first + 1, message) if layout.roles[i] == "user" and end - layout.starts[i] <= room]
        if not users and end - layout.starts[message] > room:
            unreadable[message] = (
                f"assistant message {message} needs {end - layout.starts[message]} tokens (its own block) but the window "
                f"leaves {room} after the {layout.prefix}-token opening"
            )
            continue
        choice = _closest(layout, users, message, keep) if users else message
        close()
        first, members = choice, [message]
        windows.append(_window(layout, message, first, len(groups)))
    close()
    return Plan(tuple(windows), tuple(groups), unreadable)


def _closest(layout: Layout, fitting: Sequence[int], message: int, keep: int) -> int:
    """The latest fitting start that still leaves at least ``keep`` tokens before the turn's block."""
    enough = [i for i in fitting if layout.starts[message] - layout.starts[i] >= keep]
    return enough[-1] if enough else fitting[0]


def _window(layout: Layout, message: int, first: int, group: int) -> Window:
    return Window(
        message=message,
        first_message=first,
        start_token=layout.starts[first],
        end=layout.end(message),
        context=layout.prefix + layout.starts[message] - layout.starts[first],
        group=group,
    )
