"""Soak: one worker on loopback under N sessions doing random things for a bounded time.

Each session, in a loop: changes its controls at random, sends a message and follows the reply over server-sent
events (dropping the stream and resuming with Last-Event-ID now and then), stops a reply, undoes, exports and
re-imports itself, and sends hostile requests. Beside them, API clients call ``POST /v1/chat/completions``
(streamed or not, each with its own cap or none, a stream dropped mid-way now and then, and requests the API must
refuse: ``n > 1``, ``tools``, bad messages, NaN). Then every stored reply is checked (API requests too): a finished status, and its
text equal to its token events. Separately, ``GET /sessions/{id}`` latency is measured with and without 100 idle
event followers connected, and while a 19 MB session export is imported (all once the map is built). The last line is JSON: ``requests``, ``errors_5xx`` (target 0), ``turns_done``,
``turns_lost`` (target 0), ``api_requests``, ``api_completed``, ``api_failed`` (target 0), ``api_refused_ok`` (refusals in OpenAI's error shape), ``p95_ms`` (GET /sessions/{id} under the idle followers, target <= 50).

    python bench/soak.py --quick      # 6 sessions and 2 API clients for 60 s, 100 followers
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.helpers.scratch import use_scratch_cache
from tests.helpers.worker_harness import Worker, big_export

HOSTILE: list[tuple[str, str, Any, dict[str, str]]] = [
    ("POST", "/sessions", '{"controls": {"cap_threshold": 1e300}}', {}),
    ("POST", "/sessions", '{"controls": {"temperature": NaN}}', {}),
    ("POST", "/sessions", '{"controls": {"greedy": "yes"}}', {}),
    ("POST", "/sessions/import", '{"format": "persona-space-session", "session": {"controls": {}}, "turns": '
     '[{"id": 1, "role": "user", "content": "x", "seed": 1180591620717411303424}], "events": []}', {}),
    ("POST", "/sessions/import", '{"format": "persona-space-session", "session": {"controls": {}}, "turns": [], '
     '"events": [{"type": "token", "turn": 1e400, "data": {}}]}', {}),
    ("GET", "/sessions", None, {"host": "evil.example"}),
    ("POST", "/sessions", "title=x", {"origin": "https://evil.example", "content-type": "application/x-www-form-urlencoded"}),
    ("POST", "/project", "[" * 50_000 + "]" * 50_000, {}),
    # the second red-team pass (issue #27): text UTF-8 cannot encode, deep nesting, export shapes the app cannot read,
    # sampling too small to compute with, a flood of unknown keys, lax Host and Origin
    ("POST", "/project", '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "\\ud800"}]}', {}),
    ("POST", "/sessions", '{"title": "x", "controls": {"\\udc00": 1}}', {}),
    ("POST", "/sessions/import", '{"format": "persona-space-session", "session": {"controls": {}}, "turns": '
     '[{"id": 1, "role": "user", "content": "x"}, {"id": 2, "role": "assistant", "content": "y", "summary": {"k": "\\ud800"}}], "events": []}', {}),
    ("POST", "/sessions/import", '{"format": "persona-space-session", "session": {"controls": {}}, "turns": '
     '[{"id": 1, "role": "user", "content": "x"}, {"id": 2, "role": "assistant", "content": "y"}], "events": '
     '[{"type": "token", "turn": 2, "seq": 1, "data": ' + "[" * 300 + "]" * 300 + "}]}", {}),
    ("POST", "/sessions/import", '{"format": "persona-space-session", "session": {"controls": {}}, "turns": '
     '[{"id": 1, "role": "user", "content": "x"}, {"id": 2, "role": "assistant", "content": "y"}], "events": '
     '[{"type": "token", "turn": 2, "seq": 1, "data": {"index": "zero", "text": 5, "projection": null}}]}', {}),
    ("POST", "/sessions", '{"controls": {"temperature": 1e-38, "greedy": false}}', {}),
    ("POST", "/sessions", '{"controls": {"top_p": 1e-300, "greedy": false}}', {}),
    ("POST", "/sessions", '{"controls": {' + ", ".join(f'"k{i}": {i}' for i in range(20_000)) + "}}", {}),
    ("GET", "/sessions", None, {"host": "[::1]evil.example"}),
    ("POST", "/sessions", "{}", {"origin": "http://evil.example\\@127.0.0.1"}),
]  # fmt: skip
API_HOSTILE: list[str] = [
    '{"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": 2}',
    '{"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", "function": {"name": "f"}}]}',
    '{"model": "m", "messages": [{"role": "wizard", "content": "hi"}]}',
    '{"model": "m", "messages": []}',
    '{"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
    '{"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1e300}',
    '{"model": "m", "messages": [{"role": "user", "content": "hi"}], "persona_space": {"cap": {"percentile": 250}}}',
    '{"model": "m", "messages": "hi"',
]  # fmt: skip
PROMPTS = ["Tell me about bread.", "How do tides work?", "Who are you?", "Describe a storm.", "Give me advice."]


class Stats:
    def __init__(self) -> None:
        self.requests = 0
        self.errors_5xx: list[str] = []
        self.hostile_accepted: list[str] = []
        self.api_requests = 0
        self.api_completed = 0  # whole replies, and streams read to their [DONE]
        self.api_failed: list[str] = []
        self.api_refused_ok = 0
        self.api_bad_refusals: list[str] = []

    async def call(self, client: httpx.AsyncClient, method: str, path: str, **kw: Any) -> httpx.Response:
        r = await client.request(method, path, **kw)
        self.requests += 1
        if r.status_code >= 500:
            self.errors_5xx.append(f"{method} {path} -> {r.status_code} {r.text[:120]}")
        return r


async def follow(client: httpx.AsyncClient, stats: Stats, sid: str, last: int, max_events: int | None) -> int:
    """Read the session's events until idle (or ``max_events``, then drop the stream); returns the last seq seen."""
    headers = {"Last-Event-ID": str(last)} if last else {}
    params = {"follow": "true", "until_idle": "true"}
    n = 0
    async with client.stream("GET", f"/sessions/{sid}/events", params=params, headers=headers, timeout=300) as r:
        stats.requests += 1
        if r.status_code >= 500:
            stats.errors_5xx.append(f"stream {sid} -> {r.status_code}")
            return last
        async for line in r.aiter_lines():
            if line.startswith("id: "):
                last = int(line[4:])
                n += 1
                if max_events is not None and n >= max_events:
                    break
    return last


async def session_loop(client: httpx.AsyncClient, stats: Stats, rng: random.Random, until: float, sids: list[str]) -> None:
    r = await stats.call(client, "POST", "/sessions", json={"controls": {"max_new_tokens": rng.randint(4, 24)}})
    sid = r.json()["id"]
    sids.append(sid)
    last = 0
    while time.time() < until:
        action = rng.random()
        if action < 0.25:
            patch = rng.choice(
                [{"cap_enabled": rng.random() < 0.5}, {"cap_percentile": rng.choice([1.0, 25.0, 50.0, 75.0, 90.0])},
                 {"steer_coefficient": round(rng.uniform(-2, 2), 2)}, {"greedy": rng.random() < 0.5, "seed": rng.randint(0, 99)},
                 {"temperature": round(rng.uniform(0.2, 1.5), 2)}, {"max_new_tokens": rng.randint(4, 24)}]
            )  # fmt: skip
            await stats.call(client, "PATCH", f"/sessions/{sid}/controls", json=patch)
        elif action < 0.6:
            await stats.call(
                client, "POST", f"/sessions/{sid}/messages", json={"content": rng.choice(PROMPTS), "compare": rng.random() < 0.2}
            )
            if rng.random() < 0.15:
                await asyncio.sleep(rng.uniform(0, 0.3))
                await stats.call(client, "POST", f"/sessions/{sid}/stop")
            last = await follow(client, stats, sid, last, rng.choice([None, 3]))
            last = await follow(client, stats, sid, last, None)  # resume after a dropped stream
        elif action < 0.7:
            await stats.call(client, "POST", f"/sessions/{sid}/undo")  # 409 while busy is fine
        elif action < 0.8:
            exported = await stats.call(client, "GET", f"/sessions/{sid}/export")
            if exported.status_code == 200:
                await stats.call(client, "POST", "/sessions/import", json=exported.json())
        elif action < 0.9:
            await stats.call(client, "GET", f"/sessions/{sid}")
        else:
            method, path, body, headers = rng.choice(HOSTILE)
            r = await stats.call(client, method, path, content=body, headers={"content-type": "application/json", **headers})
            if r.status_code < 400:
                stats.hostile_accepted.append(f"{method} {path} -> {r.status_code}")


def api_body(rng: random.Random, stream: bool, model: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model, "messages": [{"role": "user", "content": rng.choice(PROMPTS)}],
        "max_tokens": rng.randint(4, 16), "stream": stream, "seed": rng.randint(0, 99),
    }  # fmt: skip
    if rng.random() < 0.5:
        body["temperature"] = 0.0
    cap = rng.choice([None, {"percentile": 25}, {"percentile": 75}, {"percentile": 50, "window": [10, 20]}])
    if cap is not None:
        body["persona_space"] = {"cap": cap}
    if stream and rng.random() < 0.5:
        body["stream_options"] = {"include_usage": True}
    return body


async def api_loop(client: httpx.AsyncClient, stats: Stats, rng: random.Random, until: float) -> None:
    """An OpenAI-API client: completions streamed and not, a stream dropped now and then, requests to refuse. A
    completion that should have been served and was not (any status but 200) counts in ``api_failed``."""
    model = (await stats.call(client, "GET", "/v1/models")).json()["data"][0]["id"]
    while time.time() < until:
        action = rng.random()
        stats.api_requests += 1
        if action < 0.4:
            r = await stats.call(client, "POST", "/v1/chat/completions", json=api_body(rng, False, model))
            if r.status_code == 200 and r.json()["choices"][0]["message"]["content"] is not None:
                stats.api_completed += 1
            else:
                stats.api_failed.append(f"whole -> {r.status_code} {r.text[:80]}")
        elif action < 0.85:
            drop = rng.random() < 0.25
            async with client.stream("POST", "/v1/chat/completions", json=api_body(rng, True, model), timeout=300) as r:
                stats.requests += 1
                if r.status_code >= 500:
                    stats.errors_5xx.append(f"API stream -> {r.status_code}")
                if r.status_code != 200:
                    stats.api_failed.append(f"stream -> {r.status_code}")
                    continue
                chunks = 0
                async for line in r.aiter_lines():
                    chunks += line.startswith("data: ")
                    if drop and chunks >= 2:
                        break  # the client goes away mid-stream: its row must stop, nothing else may suffer
                    if line.startswith('data: {"error"'):
                        stats.api_failed.append(f"stream error chunk {line[:100]}")
                    elif line == "data: [DONE]":
                        stats.api_completed += 1
        else:
            body = rng.choice(API_HOSTILE)
            r = await stats.call(
                client, "POST", "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
            )
            try:
                error = r.json().get("error", {})
                shaped = 400 <= r.status_code < 500 and {"message", "type", "param", "code"} <= set(error)
            except (ValueError, AttributeError):
                shaped = False
            if shaped:
                stats.api_refused_ok += 1
            else:
                stats.api_bad_refusals.append(f"{body[:60]} -> {r.status_code} {r.text[:80]}")


async def latency(client: httpx.AsyncClient, sid: str, n: int) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = await client.get(f"/sessions/{sid}")
        times.append((time.perf_counter() - t0) * 1000)
        assert r.status_code == 200
        await asyncio.sleep(0.01)
    return times


async def during_import(client: httpx.AsyncClient, sid: str) -> tuple[float, float, float, str]:
    """(size in MB, import seconds, slowest GET /sessions/{id} in ms while the import runs, the new session)."""
    body = json.dumps(big_export()).encode()
    slowest, t0 = 0.0, time.perf_counter()
    task = asyncio.create_task(client.post("/sessions/import", content=body, headers={"content-type": "application/json"}))
    while not task.done():
        t = time.perf_counter()
        await client.get(f"/sessions/{sid}")
        slowest = max(slowest, (time.perf_counter() - t) * 1000)
        await asyncio.sleep(0.02)
    r = await task
    assert r.status_code == 201, r.text[:200]
    return round(len(body) / 1e6, 1), round(time.perf_counter() - t0, 2), round(slowest, 1), str(r.json()["id"])


def p95(values: list[float]) -> float:
    return round(statistics.quantiles(values, n=20)[-1], 1)


async def idle_follower(url: str, sid: str, connected: asyncio.Event, counter: list[int], total: int) -> None:
    async with (
        httpx.AsyncClient(base_url=url, timeout=None) as client,
        client.stream("GET", f"/sessions/{sid}/events", params={"follow": "true"}) as r,
    ):
        counter[0] += 1
        if counter[0] >= total:
            connected.set()
        async for _ in r.aiter_lines():
            pass


async def run(url: str, args: argparse.Namespace) -> dict[str, Any]:
    stats = Stats()
    limits = httpx.Limits(max_connections=args.sessions * 3 + 10)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        probe = (await stats.call(client, "POST", "/sessions", json={"controls": {"max_new_tokens": 8}})).json()["id"]
        await stats.call(client, "POST", f"/sessions/{probe}/messages", json={"content": "Hello there."})
        await follow(client, stats, probe, 0, None)
        base = await latency(client, probe, args.samples)
        # idle followers: each on its own quiet session, all connected at once
        quiet = [(await stats.call(client, "POST", "/sessions", json={})).json()["id"] for _ in range(args.followers)]
        connected, counter = asyncio.Event(), [0]
        followers = [asyncio.create_task(idle_follower(url, s, connected, counter, len(quiet))) for s in quiet]
        await asyncio.wait_for(connected.wait(), 120)
        await asyncio.sleep(1.0)
        loaded = await latency(client, probe, args.samples)
        import_mb, import_s, import_max_get, big = await during_import(client, probe)
        stats.requests += 1
        rng = random.Random(args.seed)
        sids: list[str] = []
        until = time.time() + args.seconds
        await asyncio.gather(
            *(session_loop(client, stats, random.Random(rng.random()), until, sids) for _ in range(args.sessions)),
            *(api_loop(client, stats, random.Random(rng.random()), until) for _ in range(args.api_clients)),
        )
        for task in followers:
            task.cancel()
        await asyncio.gather(*followers, return_exceptions=True)
        # every stored reply: finished, and its text is its token events
        listed = (await stats.call(client, "GET", "/sessions")).json()["sessions"]
        done = lost = 0
        deadline = time.time() + 120
        for entry in [e for e in listed if e["id"] != big]:
            while time.time() < deadline and (await client.get(f"/sessions/{entry['id']}")).json()["busy"]:
                await asyncio.sleep(0.2)
            exported = (await stats.call(client, "GET", f"/sessions/{entry['id']}/export")).json()
            texts: dict[int, str] = {}
            for e in exported["events"]:
                if e["type"] == "token":
                    texts[e["turn"]] = texts.get(e["turn"], "") + e["data"]["text"]
            for turn in exported["turns"]:
                if turn["role"] != "assistant":
                    continue
                ok = turn["status"] in ("done", "stopped") and turn["content"] == texts.get(turn["id"], "")
                done += ok
                lost += not ok
    return {
        "requests": stats.requests, "errors_5xx": len(stats.errors_5xx), "turns_done": done, "turns_lost": lost,
        "p95_ms": p95(loaded), "p95_ms_no_followers": p95(base), "median_ms": round(statistics.median(loaded), 1),
        "import_mb": import_mb, "import_s": import_s, "max_get_ms_during_import": import_max_get,
        "followers": args.followers, "sessions": args.sessions, "seconds": args.seconds,
        "hostile_accepted": len(stats.hostile_accepted), "first_5xx": stats.errors_5xx[:3],
        "api_clients": args.api_clients, "api_requests": stats.api_requests, "api_completed": stats.api_completed,
        "api_failed": len(stats.api_failed), "first_api_failed": stats.api_failed[:3], "api_refused_ok": stats.api_refused_ok,
        "api_bad_refusals": len(stats.api_bad_refusals), "first_api_bad_refusals": stats.api_bad_refusals[:3],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--space", default="cached_activations/smollm2-135m")
    parser.add_argument("--quick", action="store_true", help="6 sessions for 60 s (about 2 minutes in all)")
    parser.add_argument("--sessions", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--followers", type=int, default=100)
    parser.add_argument("--api-clients", type=int, default=2, help="concurrent OpenAI-API clients beside the sessions")
    parser.add_argument("--samples", type=int, default=200, help="GET /sessions/{id} timings per measurement")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.sessions = args.sessions or (6 if args.quick else 12)
    args.seconds = args.seconds or (60.0 if args.quick else 600.0)
    tmp = Path(tempfile.mkdtemp())
    worker = Worker(args.model, Path(args.space), tmp / "soak.sqlite3")
    try:
        worker.wait_ready()
        # the map (UMAP refit) is built in the background after ready and holds the interpreter lock meanwhile:
        # measure once it is done, so the latencies are the steady state's
        deadline = time.time() + 600
        while worker.client.get("/health").json().get("phase") != "ready" and time.time() < deadline:
            time.sleep(0.5)
        result = asyncio.run(run(worker.url, args))
    finally:
        worker.close()
    print(json.dumps(result))


if __name__ == "__main__":
    use_scratch_cache()  # never the user's cache folder: their sessions database, their converted models
    main()
