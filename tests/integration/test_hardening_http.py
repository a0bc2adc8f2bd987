"""The HTTP boundary of a real worker on a real socket (issue #27): text that UTF-8 cannot encode and nesting too
deep are refused where a JSON body enters, on every route; validation errors stay small and quick however many a
body holds; sampling parameters stay where the arithmetic is finite; Host, Origin and Authorization are parsed
strictly, and a request that names one of them twice is refused."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.worker_harness import Worker

CONVERSATION = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi there."}]


def _post(worker: Worker, method: str, path: str, raw: str | bytes) -> httpx.Response:
    content = raw.encode() if isinstance(raw, str) else raw
    return worker.client.request(method, path, content=content, headers={"content-type": "application/json"})


def _count(worker: Worker) -> int:
    return len(worker.client.get("/sessions").json()["sessions"])


def _raw(port: int, head: list[str], body: bytes = b"") -> tuple[int, bytes]:
    """One request written byte for byte (duplicate headers included): (status, answer body)."""
    lines = [*head, f"Content-Length: {len(body)}", "Connection: close", "", ""]
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall("\r\n".join(lines).encode() + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


# 2. text that UTF-8 cannot encode --------------------------------------------------------------------------------

# JSON escapes of unpaired surrogates: valid JSON, parsed into text that no answer can write back out
SURROGATES = [
    ("project: a message", "POST", "/project", json.dumps([{"role": "user", "content": "\ud800"}, CONVERSATION[1]])),
    ("project: a key", "POST", "/project", json.dumps({"conversation": CONVERSATION, "\udfff": 1})),
    ("session: a title", "POST", "/sessions", '{"title": "a\\ud800b"}'),
    ("session: a system prompt", "POST", "/sessions", '{"system": "\\udc00"}'),
    ("session: an unknown key", "POST", "/sessions", '{"\\ud800": 1}'),
    ("session: a key of the controls", "POST", "/sessions", '{"controls": {"\\udbff": 1}}'),
    ("message: its content", "POST", "/sessions/{sid}/messages", '{"content": "\\ud800"}'),
    ("controls: an unknown key", "PATCH", "/sessions/{sid}/controls", '{"\\ud800x": 1}'),
    ("controls: a value", "PATCH", "/sessions/{sid}/controls", '{"greedy": "\\ud800"}'),
]  # fmt: skip


@pytest.mark.parametrize(("name", "method", "path", "raw"), SURROGATES, ids=[s[0] for s in SURROGATES])
def test_an_unpaired_surrogate_is_refused_where_the_body_enters(worker, name, method, path, raw) -> None:  # type: ignore[no-untyped-def]
    sid = worker.session(controls={"max_new_tokens": 3})
    before = (_count(worker), worker.client.get(f"/sessions/{sid}").json())
    r = _post(worker, method, path.format(sid=sid), raw)  # a reset connection raises here
    assert r.status_code == 400, r.text[:300]
    assert set(r.json()) == {"error", "detail"} and "unpaired surrogate" in r.json()["error"], r.text[:300]
    assert worker.client.get("/health").json()["ready"]
    assert (_count(worker), worker.client.get(f"/sessions/{sid}").json()) == before  # nothing stored or queued


@pytest.mark.parametrize("raw", ["null", "1.5", '"text"', "true", "[]", "{}", "[null, 1]"])
def test_a_body_that_is_not_an_object_goes_on_to_the_route(worker, raw) -> None:  # type: ignore[no-untyped-def]
    assert _post(worker, "POST", "/project", raw).status_code == 400  # the transcript's own refusal
    assert _post(worker, "POST", "/sessions", raw).status_code == (201 if raw in ("{}", "null") else 422)  # null: no body


# 3. nesting ------------------------------------------------------------------------------------------------------


def _nest(levels: int) -> str:
    return "[" * levels + "]" * levels


NESTED = [
    ("project: extra metadata", "POST", "/project", '{"conversation": ' + json.dumps(CONVERSATION) + ', "steering_config": ' + _nest(100) + "}"),
    ("session: the controls", "POST", "/sessions", '{"title": "t", "controls": ' + _nest(100) + "}"),
    ("message: compare", "POST", "/sessions/{sid}/messages", '{"content": "hi", "compare": ' + _nest(100) + "}"),
    ("controls: a window", "PATCH", "/sessions/{sid}/controls", '{"cap_layers": ' + _nest(100) + "}"),
    ("controls: past the parser", "PATCH", "/sessions/{sid}/controls", '{"cap_layers": ' + _nest(100_000) + "}"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "method", "path", "raw"), NESTED, ids=[n[0] for n in NESTED])
def test_nesting_is_bounded_where_the_body_enters(worker, name, method, path, raw) -> None:  # type: ignore[no-untyped-def]
    sid = worker.session(controls={"max_new_tokens": 3})
    before = _count(worker)
    r = _post(worker, method, path.format(sid=sid), raw)
    assert r.status_code == 400 and "nested deeper than 64 levels" in r.json()["error"], r.text[:300]
    assert _count(worker) == before and worker.client.get(f"/sessions/{sid}").json()["turns"] == []


def test_nesting_up_to_the_bound_is_read(worker) -> None:  # type: ignore[no-untyped-def]
    from backend.worker.json_check import MAX_DEPTH

    def body(levels: int) -> str:  # the object itself is the first level
        return '{"conversation": ' + json.dumps(CONVERSATION) + ', "steering_config": ' + _nest(levels - 1) + "}"

    assert _post(worker, "POST", "/project", body(MAX_DEPTH)).status_code == 200
    assert _post(worker, "POST", "/project", body(MAX_DEPTH + 1)).status_code == 400


# 6. validation errors, however many ------------------------------------------------------------------------------

UNKNOWN = {f"unknown_{i}": 1 for i in range(50)}
MANY_ERRORS = [
    ("session", "POST", "/sessions", UNKNOWN),
    ("session controls", "POST", "/sessions", {"controls": UNKNOWN}),
    ("message", "POST", "/sessions/{sid}/messages", {"content": "hi", **UNKNOWN}),
    ("controls", "PATCH", "/sessions/{sid}/controls", UNKNOWN),
]


@pytest.mark.parametrize(("name", "method", "path", "body"), MANY_ERRORS, ids=[m[0] for m in MANY_ERRORS])
def test_validation_errors_are_few_and_short_on_every_route(worker, name, method, path, body) -> None:  # type: ignore[no-untyped-def]
    sid = worker.session(controls={"max_new_tokens": 3})
    r = _post(worker, method, path.format(sid=sid), json.dumps(body))
    assert r.status_code == 422, r.text[:300]
    error, detail = r.json()["error"], r.json()["detail"]
    assert len(detail) == 5 and error.count("Extra inputs are not permitted") == 5, error
    assert error.endswith("(and 45 more)") and len(r.content) < 2000, error


def test_a_long_unknown_key_gets_a_short_answer(worker) -> None:  # type: ignore[no-untyped-def]
    sid = worker.session(controls={"max_new_tokens": 3})
    r = _post(worker, "PATCH", f"/sessions/{sid}/controls", json.dumps({"k" * 1_000_000: 1, "x" * 1000: 2}))
    assert r.status_code == 422 and "Extra inputs are not permitted" in r.json()["error"], r.text[:300]
    assert len(r.content) < 2000


def test_a_body_of_a_million_unknown_keys_is_answered_small_and_quickly(worker) -> None:  # type: ignore[no-untyped-def]
    # Before: this 17 MiB body got a 158 MiB answer listing every error after ~40 s, and held /health meanwhile (here,
    # on a shared 2-core machine, no answer came within 120 s). Decoding it cannot be avoided, and holds the
    # interpreter lock for its duration.
    sid = worker.session(controls={"max_new_tokens": 3})
    raw = json.dumps({f"c{i}": 0 for i in range(1_300_000)}).encode()
    assert 15 * 2**20 < len(raw) < 20 * 2**20
    answer: list[httpx.Response] = []
    took: list[float] = []

    def send() -> None:
        with httpx.Client(base_url=worker.url, timeout=120) as client:
            t0 = time.perf_counter()
            answer.append(client.patch(f"/sessions/{sid}/controls", content=raw, headers={"content-type": "application/json"}))
            took.append(time.perf_counter() - t0)

    thread = threading.Thread(target=send)
    thread.start()
    probes: list[float] = []
    while thread.is_alive():
        t0 = time.perf_counter()
        assert worker.client.get("/health").status_code == 200
        probes.append(time.perf_counter() - t0)
        time.sleep(0.05)
    thread.join()
    r = answer[0]
    assert r.status_code == 422 and "1300000 keys" in r.json()["error"] and len(r.content) < 2000, r.text[:300]
    # the worker kept answering /health while it handled the body (how fast is a benchmark's question, not a test's:
    # measured on 2 cores with a load of 9-12, the answer took 3.3-5.7 s and the slowest /health 3.0-5.5 s)
    assert probes and took, (took, probes)
    assert worker.client.get(f"/sessions/{sid}/controls").json()["controls_version"] == 0


# 9. sampling parameters ------------------------------------------------------------------------------------------

TINY_SAMPLING = [{"temperature": 1e-38}, {"top_p": 1e-300}, {"temperature": 5e-324}, {"top_p": 1e-4}, {"temperature": 1e-3}]


@pytest.mark.parametrize("controls", TINY_SAMPLING, ids=[json.dumps(c) for c in TINY_SAMPLING])
def test_sampling_parameters_too_small_to_compute_with_are_refused(worker, controls) -> None:  # type: ignore[no-untyped-def]
    before = _count(worker)
    r = worker.client.post("/sessions", json={"controls": {"greedy": False, **controls}})
    assert r.status_code == 422 and next(iter(controls)) in r.json()["error"], r.text[:300]
    sid = worker.session(controls={"max_new_tokens": 3})
    assert worker.client.patch(f"/sessions/{sid}/controls", json=controls).status_code == 422
    export = {"format": "persona-space-session", "session": {"controls": controls}, "turns": [], "events": []}
    assert worker.client.post("/sessions/import", json=export).status_code == 422
    assert _count(worker) == before + 1


def test_the_smallest_sampling_parameters_accepted_still_generate(worker) -> None:  # type: ignore[no-untyped-def]
    from backend.worker.schemas import MIN_TEMPERATURE, MIN_TOP_P

    sid = worker.session(controls={"greedy": False, "temperature": MIN_TEMPERATURE, "top_p": MIN_TOP_P, "max_new_tokens": 4})
    worker.say(sid, "Say something.")
    worker.wait_idle(sid)
    reply = worker.client.get(f"/sessions/{sid}").json()["turns"][-1]
    assert reply["status"] == "done", [e for e in worker.events(sid) if e["type"] == "turn_error"]
    assert [e["type"] for e in worker.events(sid)].count("token") >= 1


# 12. headers -----------------------------------------------------------------------------------------------------

BAD_HOSTS = [
    "[::1]evil.example", "[::1]:1:2", "[::1", "[127.0.0.1]", "127.0.0.1:8765:1", "127.0.0.1:", "127.0.0.1:99999",
    "127.0.0.1:８７", "127.0.0.1 evil.example", "localhost@evil.example", "evil.example@localhost", "127.0.0.1/x",
    "127.0.0.1\\@evil.example", "evil.example#.localhost",
]  # fmt: skip


@pytest.mark.parametrize("host", BAD_HOSTS)
def test_a_host_is_a_name_or_bracketed_address_and_a_port_and_nothing_else(worker, host) -> None:  # type: ignore[no-untyped-def]
    status, body = _raw(worker.port, ["GET /health HTTP/1.1", f"Host: {host}"])
    assert status in (400, 421), (status, body[:200])
    if status == 421:  # 400 is the HTTP server's own refusal of a value it cannot parse at all
        assert "only answers requests addressed to" in json.loads(body)["error"]


BAD_ORIGINS = [
    "http://evil.example\\@127.0.0.1", "http://user@127.0.0.1", "http://127.0.0.1@evil.example", "http://127.0.0.1:8501/",
    "http://127.0.0.1:8501/path", "http://[::1]evil.example", "http://127.0.0.1 evil", "ftp://127.0.0.1",
    "http://127.0.0.1:x", "http:/127.0.0.1", "//127.0.0.1", "127.0.0.1", "http://127.0.0.1?x", "http://127.0.0.1#x",
]  # fmt: skip


@pytest.mark.parametrize("origin", BAD_ORIGINS)
def test_an_origin_is_a_scheme_a_host_and_a_port_and_nothing_else(worker, origin) -> None:  # type: ignore[no-untyped-def]
    before = _count(worker)
    r = worker.client.post("/sessions", json={"title": "from a page"}, headers={"origin": origin})
    assert r.status_code == 403 and "cross-site" in r.json()["error"], (origin, r.text[:200])
    assert _count(worker) == before


def test_the_apps_own_origins_are_still_served(worker) -> None:  # type: ignore[no-untyped-def]
    for origin in (
        "http://127.0.0.1:8501",
        "http://localhost:8501",
        "https://localhost",
        "http://[::1]:8501",
        "HTTP://LOCALHOST",
    ):
        r = worker.client.post("/sessions", json={"title": "from the app"}, headers={"origin": origin})
        assert r.status_code == 201, (origin, r.text)


DUPLICATES = [
    ("two hosts", ["Host: 127.0.0.1", "Host: evil.example"]),
    ("two hosts, the same", ["Host: 127.0.0.1", "Host: 127.0.0.1"]),
    ("two origins", ["Host: 127.0.0.1", "Origin: http://127.0.0.1:8501", "Origin: https://evil.example"]),
    ("two fetch sites", ["Host: 127.0.0.1", "Sec-Fetch-Site: same-origin", "Sec-Fetch-Site: cross-site"]),
    ("two tokens", ["Host: 127.0.0.1", "Authorization: Bearer a", "Authorization: Bearer b"]),
]


@pytest.mark.parametrize(("name", "headers"), DUPLICATES, ids=[d[0] for d in DUPLICATES])
def test_a_request_naming_a_guarded_header_twice_is_refused(worker, name, headers) -> None:  # type: ignore[no-untyped-def]
    before = _count(worker)
    body = b'{"title": "twice"}'
    status, answer = _raw(worker.port, ["POST /sessions HTTP/1.1", *headers, "Content-Type: application/json"], body)
    assert status == 400, (status, answer[:200])
    if not name.startswith("two hosts"):  # h11 itself refuses two Hosts (in plain text); the worker does too
        assert "more than once" in json.loads(answer)["error"]
    assert _count(worker) == before


def test_the_gate_refuses_two_hosts_itself() -> None:
    # h11 refuses a second Host before the worker sees it; another HTTP server may not
    import asyncio
    import concurrent.futures

    from backend.worker.guards import Gate

    async def app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    def status(headers: list[tuple[bytes, bytes]], token: str | None = None) -> int:
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "GET", "path": "/health", "headers": headers}
        # a loop of its own on a thread of its own: an earlier test of the suite may leave this thread's loop running
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, Gate(app, token)(scope, receive, send)).result()  # type: ignore[arg-type]
        return int(sent[0]["status"])

    assert status([(b"host", b"127.0.0.1")]) == 200
    assert status([(b"host", b"127.0.0.1"), (b"host", b"evil.example")]) == 400
    assert status([(b"host", b"evil.example"), (b"host", b"127.0.0.1")]) == 400
    assert status([(b"host", b"a"), (b"host", b"b"), (b"authorization", b"Bearer t")], token="t") == 400
    assert status([(b"host", b"a"), (b"authorization", b"bEaReR t")], token="t") == 200


def test_read_token_drops_a_byte_order_mark(tmp_path: Path) -> None:
    from backend.worker.server import read_token

    secret = tmp_path / "token"
    secret.write_bytes(b"\xef\xbb\xbfs3cret\r\n")
    assert read_token(None, str(secret)) == "s3cret"


def test_the_bearer_scheme_is_case_insensitive_and_a_bom_is_not_part_of_the_token(tiny_world, tmp_path) -> None:  # type: ignore[no-untyped-def]
    model, space, _ = tiny_world
    secret = tmp_path / "token"
    secret.write_text("\ufeffs3cret\n", encoding="utf-8")  # as Notepad saves it
    w = Worker(model, space, tmp_path / "bom.sqlite3", extra=["--token-file", str(secret)])
    try:
        w.client.headers["Authorization"] = "Bearer s3cret"
        w.wait_ready()
        for value in ("bearer s3cret", "BEARER s3cret", "Bearer  s3cret"):
            assert httpx.get(f"{w.url}/sessions", headers={"Authorization": value}).status_code == 200, value
        for value in ("Bearer \ufeffs3cret".encode(), b"Bearers3cret", b"Basic s3cret", b"s3cret", b"Bearer s3cret x"):
            assert httpx.get(f"{w.url}/sessions", headers={"Authorization": value}).status_code == 401, value
    finally:
        w.close()
