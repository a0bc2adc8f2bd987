"""What JSON the worker accepts, checked once where JSON enters (request bodies, imports): no text that UTF-8
cannot encode (a lone surrogate such as ``"\\ud800"`` parses, is stored, and then breaks every answer that has to
write it out) and no nesting deeper than :data:`MAX_DEPTH` (the serializer that writes it back out has a recursion
limit). :func:`loads` parses and checks; :func:`check` checks a value already parsed. Both raise
:class:`UnacceptableJSON` with the path of the first offending value, for a 400 that names it."""

from __future__ import annotations

import json
from typing import Any

MAX_DEPTH = 64


class UnacceptableJSON(ValueError):
    """JSON that parses but that the worker will not store or act on (the message names where and why)."""


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check(value: Any, *, max_depth: int = MAX_DEPTH, where: str = "body") -> None:
    """Raise :class:`UnacceptableJSON` if ``value`` nests deeper than ``max_depth`` or holds text (a value or a key)
    that is not valid UTF-8. Iterative, so a hostile depth cannot exhaust the stack here. A first walk keeps no paths
    (an 18 MiB import is mostly fine); only when it finds something does a second walk name where."""
    if _fine(value, max_depth):
        return
    _locate(value, max_depth, where)


def _fine(value: Any, max_depth: int) -> bool:
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if type(node) is str:
            if not node.isascii() and not _encodable(node):
                return False
        elif isinstance(node, dict):
            if depth >= max_depth:
                return False
            for key, item in node.items():
                if isinstance(key, str) and not key.isascii() and not _encodable(key):
                    return False
                if isinstance(item, (str, dict, list)):
                    stack.append((item, depth + 1))
        elif isinstance(node, list):
            if depth >= max_depth:
                return False
            stack.extend((item, depth + 1) for item in node if isinstance(item, (str, dict, list)))
        elif isinstance(node, str) and not _encodable(node):  # a str subclass
            return False
    return True


def _locate(value: Any, max_depth: int, where: str) -> None:
    stack: list[tuple[Any, str, int]] = [(value, where, 0)]
    while stack:
        node, path, depth = stack.pop()
        if isinstance(node, str):
            if not _encodable(node):
                raise UnacceptableJSON(f"{path}: text with an unpaired surrogate (not valid UTF-8)")
        elif isinstance(node, (dict, list)):
            if depth >= max_depth:
                raise UnacceptableJSON(f"{path}: nested deeper than {max_depth} levels")
            if isinstance(node, dict):
                for key, item in node.items():
                    if isinstance(key, str) and not _encodable(key):
                        raise UnacceptableJSON(f"{path}: a key with an unpaired surrogate (not valid UTF-8)")
                    stack.append((item, f"{path}.{key}" if len(path) < 200 else path, depth + 1))
            else:
                for i, item in enumerate(node):
                    stack.append((item, f"{path}[{i}]" if len(path) < 200 else path, depth + 1))


def loads(raw: bytes | str, *, max_depth: int = MAX_DEPTH, where: str = "body") -> Any:
    """``json.loads`` then :func:`check`; a document too deep for the parser itself is refused the same way. Other
    parse errors propagate as :class:`json.JSONDecodeError` (the caller words those)."""
    try:
        value = json.loads(raw)
    except RecursionError:
        raise UnacceptableJSON(f"{where}: nested deeper than {max_depth} levels") from None
    check(value, max_depth=max_depth, where=where)
    return value
