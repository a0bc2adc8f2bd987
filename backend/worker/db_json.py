"""JSON as the sessions database stores it: never NaN or Infinity (strict JSON, readable by any client)."""

from __future__ import annotations

import json
import math
from typing import Any


def dumps(data: Any) -> str:
    """JSON for the database: never NaN or Infinity (non-finite numbers are stored as null)."""
    try:
        return json.dumps(data, allow_nan=False)
    except ValueError:
        return json.dumps(_finite(data), allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def loads(text: str) -> Any:
    """JSON from the database; a NaN or Infinity written by an older version reads as null."""
    return json.loads(text, parse_constant=lambda _: None)
