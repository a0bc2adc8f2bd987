"""The worker's host and origin rules, row by row (pure functions of header text; the ASGI gate that applies them
is driven by tests/integration/test_hardening_http.py). Each row's answer is read off RFC 3986/6761 by hand."""

from __future__ import annotations

import pytest

from backend.worker.guards import allowed_origin, host_of


@pytest.mark.parametrize(
    ("value", "host"),
    [
        ("localhost", "localhost"),
        ("localhost:8501", "localhost"),
        ("a-b.c_d.example:0", "a-b.c_d.example"),
        ("host:65535", "host"),
        ("host:65536", None),  # past the last port
        ("host:123456", None),
        ("host:", None),
        ("host:8x", None),
        (":80", None),
        ("", None),
        ("user@host", None),
        ("host/path", None),
        ("host name", None),
        ("ho\\st", None),
        ("[::1]", "::1"),
        ("[::1]:8000", "::1"),
        ("[::1]:", None),
        ("[::1]x", None),
        ("[::1", None),
        ("[not-v6]", None),
        ("[fe80::1%eth0]", None),  # a zone id
        ("[127.0.0.1]", None),  # brackets hold IPv6 only
    ],
)
def test_host_of(value: str, host: str | None) -> None:
    assert host_of(value) == host


@pytest.mark.parametrize(
    ("origin", "fetch_site", "allowed"),
    [
        (None, None, True),  # a program, not a browser
        (None, "same-origin", True),
        (None, "cross-site", False),
        (None, " Cross-Site ", False),
        ("http://localhost:8501", None, True),
        ("https://127.0.0.1", "same-site", True),
        ("HTTP://app.localhost", None, True),
        ("http://evil.example", None, False),
        ("ftp://localhost", None, False),
        ("localhost:8501", None, False),  # no scheme
        ("http://localhost:8501", "cross-site", False),
        ("null", None, False),
        ("http://", None, False),
    ],
)
def test_allowed_origin(origin: str | None, fetch_site: str | None, allowed: bool) -> None:
    assert allowed_origin(origin, fetch_site) is allowed
