"""JSON as the sessions database stores it: compact, never NaN or Infinity (strict JSON, readable by any client), and
always text UTF-8 can encode when it is read back."""

from __future__ import annotations

import json
import math
import re
from typing import Any

_LONE = re.compile("[\ud800-\udfff]")  # in a decoded str every surrogate left is unpaired


def dumps(data: Any) -> str:
    """JSON for the database: compact, ASCII (non-ASCII escaped), never NaN or Infinity (non-finite numbers are
    stored as null)."""
    try:
        return json.dumps(data, allow_nan=False, separators=(",", ":"))
    except ValueError:
        return json.dumps(_finite(data), allow_nan=False, separators=(",", ":"))


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def loads(text: str) -> Any:
    """JSON from the database; a NaN or Infinity written by an older version reads as null, and a lone surrogate it
    stored (``"\\ud800"``, which no answer could encode as UTF-8) as U+FFFD."""
    value = json.loads(text, parse_constant=lambda _: None)
    if "\\ud" in text or "\\uD" in text:  # stored texts are ASCII: a surrogate can only be an escape
        try:
            value = _repaired(value)
        except RecursionError:  # nested too deep to walk: left as it is
            pass
    return value


def _repaired(value: Any) -> Any:
    if isinstance(value, str):
        return _LONE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_repaired(k): _repaired(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_repaired(v) for v in value]
    return value
