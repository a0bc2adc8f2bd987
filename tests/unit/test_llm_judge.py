"""The ``openai`` judge against a scripted chat-completions server on 127.0.0.1 (nothing leaves the machine)."""

from __future__ import annotations

import re
import socket
import threading
import time
from typing import Any

import pytest

from backend.catalogue import Archetype
from backend.errors import PersonaSpaceError
from backend.judges.llm import RUBRIC, JudgeError, OpenAIJudge, RateLimiter, parse_score
from tests.helpers.chat_server import Reply, Server, ok

ARCHETYPES = (
    Archetype("pirate", "fantastical", "A swaggering sea robber who talks of plunder and the open sea.", ("You are a pirate.",)),
    Archetype("librarian", "profession", "A quiet keeper of books who loves order and catalogues.", ("You are a librarian.",)),
)


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests to the local server must never be sent through a proxy from the environment."""
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def make_judge(server: Server, **kwargs: Any) -> tuple[OpenAIJudge, list[float]]:
    """A judge on the local server; the list records the rate limiter's sleeps (retry waits are the openai
    client's own, measured by the clock in the tests that need them)."""
    sleeps: list[float] = []
    options: dict[str, Any] = {"base_url": server.base_url, "model": "judge-test", "timeout_s": 5.0, "sleep": sleeps.append}
    options.update(kwargs)
    return OpenAIJudge(ARCHETYPES, "sk-test", **options), sleeps


def answer_of(body: dict[str, Any]) -> str:
    return str(body["messages"][1]["content"])


def test_scores_in_input_order_with_concurrency(server: Server) -> None:
    # The server scores by a marker hidden in each answer, and answers out of order (later requests are faster).
    def respond(body: dict[str, Any], n: int) -> Reply:
        marker = re.search(r"answer (\d+) SCORE=(\d)", answer_of(body))
        assert marker
        time.sleep(0.004 * (12 - int(marker.group(1))))
        return ok(f"Score: {marker.group(2)}")

    server.respond = respond
    scores = [3, 0, 2, 1, 3, 2, 0, 1, 1, 3, 2, 0]
    roles = [ARCHETYPES[i % 2].name for i in range(len(scores))]
    texts = [f"answer {i} SCORE={s}" for i, s in enumerate(scores)]
    judge, sleeps = make_judge(server, concurrency=4)
    judged = judge.score(roles, texts)
    assert [j.score for j in judged] == scores
    assert judged[0].reason == "openai judge-test: fully plays the role"
    assert len(server.seen) == len(scores) and sleeps == []
    assert judge.score([], []) == []


def test_request_carries_key_model_and_rubric(server: Server) -> None:
    judge, _ = make_judge(server, concurrency=1)
    judge.score(["pirate"], ["Arr, the sea be my home."])
    (seen,) = server.seen
    assert seen.path == "/v1/chat/completions"
    assert seen.headers["authorization"] == "Bearer sk-test"
    assert seen.headers["content-type"] == "application/json"
    assert seen.body["model"] == "judge-test"
    assert seen.body["temperature"] == 0
    assert 1 <= seen.body["max_tokens"] <= 16
    system, user = seen.body["messages"]
    assert system == {"role": "system", "content": RUBRIC}
    for digit in "0123":
        assert f"{digit} - " in system["content"]
    assert user["role"] == "user"
    assert "pirate" in user["content"]
    assert ARCHETYPES[0].description in user["content"]
    assert "Arr, the sea be my home." in user["content"]


def test_429_with_retry_after_is_retried(server: Server) -> None:
    # The client's own back-off before a first retry is at most 0.5 s: waiting 1.5 s means Retry-After was honoured.
    server.respond = lambda body, n: (429, {"Retry-After": "1.5"}, {"error": {"message": "slow down"}}) if n == 0 else ok("2")
    judge, _ = make_judge(server)
    started = time.monotonic()
    assert [j.score for j in judge.score(["librarian"], ["As an AI I love order."])] == [2]
    assert 1.5 <= time.monotonic() - started < 5.0
    assert len(server.seen) == 2


def test_500_is_retried_with_backoff(server: Server) -> None:
    server.respond = lambda body, n: (500, {}, "internal trouble") if n < 2 else ok("1")
    judge, _ = make_judge(server)
    started = time.monotonic()
    assert [j.score for j in judge.score(["pirate"], ["I am an AI assistant."])] == [1]
    waited = time.monotonic() - started
    assert len(server.seen) == 3
    assert 0.375 + 0.75 <= waited < 5.0  # 0.5 s then 1 s (doubling), each times a jitter in [0.75, 1]


def test_retries_run_out_with_the_last_status(server: Server) -> None:
    server.respond = lambda body, n: (503, {"Retry-After": "0"}, {"error": {"message": "overloaded"}})
    judge, _ = make_judge(server, max_retries=2)
    with pytest.raises(JudgeError, match=r"role 'pirate' after 3 tries.*HTTP 503 .*overloaded.*PERSONA_SPACE_JUDGE_MAX_RETRIES"):
        judge.score(["pirate"], ["Arr."])
    assert len(server.seen) == 3


def test_connection_errors_are_retried_then_reported(server: Server) -> None:
    with socket.socket() as probe:  # a local port that nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    judge, _ = make_judge(server, base_url=f"http://127.0.0.1:{port}/v1", max_retries=2, timeout_s=1.0)
    started = time.monotonic()
    with pytest.raises(JudgeError, match=r"failed for an answer in role 'pirate' after 3 tries") as info:
        judge.score(["pirate"], ["Arr."])
    assert time.monotonic() - started >= 0.375 + 0.75  # two back-offs: it was retried
    assert "PERSONA_SPACE_JUDGE_MAX_RETRIES" in str(info.value) and f"127.0.0.1:{port}" in str(info.value)


def test_401_fails_at_once_with_the_server_message(server: Server) -> None:
    server.respond = lambda body, n: (401, {}, {"error": {"message": "Incorrect API key provided: sk-te**"}})
    judge, sleeps = make_judge(server, concurrency=4)
    with pytest.raises(JudgeError) as info:
        judge.score(["pirate"] * 3, ["a", "b", "c"])
    message = str(info.value)
    assert "HTTP 401" in message and "Incorrect API key provided" in message
    assert "PERSONA_SPACE_JUDGE_API_KEY" in message
    assert isinstance(info.value, PersonaSpaceError)
    assert sleeps == []
    assert len(server.seen) <= 3  # no retries


def test_404_names_the_endpoint(server: Server) -> None:
    judge, _ = make_judge(server, base_url=server.base_url + "/wrong")
    with pytest.raises(JudgeError, match=r"HTTP 404 .*no route /v1/wrong/chat/completions.*PERSONA_SPACE_JUDGE_BASE_URL"):
        judge.score(["pirate"], ["Arr."])
    assert len(server.seen) == 1


def test_unparseable_reply_is_retried_then_raises(server: Server) -> None:
    server.respond = lambda body, n: ok("I would rather not say.")
    judge, sleeps = make_judge(server, max_retries=2)
    with pytest.raises(JudgeError, match=r"role 'librarian' after 3 tries; its last reply was 'I would rather not say.'"):
        judge.score(["librarian"], ["Shh."])
    assert len(server.seen) == 3
    assert sleeps == []  # a bad reply is no server trouble: asked again at once
    # The retries show the model its reply and ask again for one digit.
    retry = server.seen[1].body["messages"]
    assert retry[2] == {"role": "assistant", "content": "I would rather not say."}
    assert "single digit" in retry[3]["content"]


def test_unparseable_then_digit_succeeds(server: Server) -> None:
    server.respond = lambda body, n: ok("hmm") if n == 0 else ok("3")
    judge, _ = make_judge(server)
    assert [j.score for j in judge.score(["pirate"], ["Arr."])] == [3]
    assert len(server.seen) == 2


def test_non_chat_response_is_a_clear_error(server: Server) -> None:
    server.respond = lambda body, n: (200, {}, "<html>hello</html>")
    judge, _ = make_judge(server)
    with pytest.raises(JudgeError, match=r"something other than a chat-completions response: '<html>hello</html>'"):
        judge.score(["pirate"], ["Arr."])


def test_unknown_role_is_refused_before_any_request(server: Server) -> None:
    judge, _ = make_judge(server)
    with pytest.raises(JudgeError, match=r"no description for role\(s\) \['wizard'\]"):
        judge.score(["pirate", "wizard"], ["Arr.", "Abracadabra."])
    assert server.seen == []


def test_missing_key_names_the_variables() -> None:
    with pytest.raises(JudgeError, match=r"PERSONA_SPACE_JUDGE_API_KEY \(or OPENAI_API_KEY\)"):
        OpenAIJudge.from_env(ARCHETYPES, {})
    with pytest.raises(JudgeError, match="no API key"):
        OpenAIJudge(ARCHETYPES, None)


def test_from_env_reads_settings() -> None:
    judge = OpenAIJudge.from_env(
        ARCHETYPES,
        {
            "OPENAI_API_KEY": "sk-fallback",
            "PERSONA_SPACE_JUDGE_BASE_URL": "http://127.0.0.1:1/v1/",
            "PERSONA_SPACE_JUDGE_MODEL": "local-judge",
            "PERSONA_SPACE_JUDGE_CONCURRENCY": "3",
            "PERSONA_SPACE_JUDGE_MAX_RETRIES": "2",
            "PERSONA_SPACE_JUDGE_RPM": "120",
        },
    )
    assert judge.name == "openai"
    assert judge.api_key == "sk-fallback"
    assert judge.url == "http://127.0.0.1:1/v1/chat/completions"
    assert (judge.model, judge.concurrency, judge.max_retries) == ("local-judge", 3, 2)
    assert judge.limiter is not None and judge.limiter.interval == pytest.approx(0.5)
    assert judge.pool.endpoints[0].client.max_retries == 2  # retries are the openai client's own
    assert "sk-fallback" not in repr(judge)

    defaults = OpenAIJudge.from_env(ARCHETYPES, {"PERSONA_SPACE_JUDGE_API_KEY": "sk-own", "OPENAI_API_KEY": "sk-other"})
    assert defaults.api_key == "sk-own"
    assert defaults.url == "https://api.openai.com/v1/chat/completions"
    assert (defaults.model, defaults.concurrency, defaults.max_retries, defaults.limiter) == ("gpt-4.1-mini", 8, 5, None)

    with pytest.raises(JudgeError, match=r"PERSONA_SPACE_JUDGE_CONCURRENCY='many' is not a whole number"):
        OpenAIJudge.from_env(ARCHETYPES, {"OPENAI_API_KEY": "k", "PERSONA_SPACE_JUDGE_CONCURRENCY": "many"})
    with pytest.raises(JudgeError, match="not an http"):
        OpenAIJudge.from_env(ARCHETYPES, {"OPENAI_API_KEY": "k", "PERSONA_SPACE_JUDGE_BASE_URL": "file:///etc"})


class FakeClock:
    """A clock that only moves when someone sleeps."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []
        self.lock = threading.Lock()

    def time(self) -> float:
        with self.lock:
            return self.now

    def sleep(self, seconds: float) -> None:
        with self.lock:
            self.sleeps.append(seconds)
            self.now += seconds


def test_rate_limiter_spacing() -> None:
    clock = FakeClock()
    limiter = RateLimiter(60, clock=clock.time, sleep=clock.sleep)  # one call a second
    assert [limiter.acquire() for _ in range(4)] == [0.0, 1.0, 1.0, 1.0]
    assert clock.now == 103.0
    clock.now += 5.0  # idle for a while: the next call goes at once, then spacing resumes
    assert [limiter.acquire() for _ in range(2)] == [0.0, 1.0]
    with pytest.raises(PersonaSpaceError, match="positive"):
        RateLimiter(0)
    with pytest.raises(JudgeError, match=r"requests-per-minute limit must be a positive number, got 0.*PERSONA_SPACE_JUDGE_"):
        OpenAIJudge(ARCHETYPES, "k", base_url="http://127.0.0.1:1/v1", rpm=0)


def test_rate_limiter_is_thread_safe() -> None:
    clock = FakeClock()  # frozen time: each caller must reserve its own slot
    limiter = RateLimiter(600, clock=lambda: 0.0, sleep=clock.sleep)
    threads = [threading.Thread(target=limiter.acquire) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(round(s, 6) for s in [0.0, *clock.sleeps]) == [round(0.1 * i, 6) for i in range(20)]


def test_judge_requests_respect_rpm(server: Server) -> None:
    clock = FakeClock()
    judge = OpenAIJudge(
        ARCHETYPES, "sk-test", base_url=server.base_url, rpm=30, concurrency=1, sleep=clock.sleep, clock=clock.time
    )
    assert [j.score for j in judge.score(["pirate"] * 3, ["a", "b", "c"])] == [3, 3, 3]
    assert clock.sleeps == [2.0, 2.0]
    assert len(server.seen) == 3


def test_rpm_counts_retries(server: Server) -> None:
    clock = FakeClock()
    server.respond = lambda body, n: (503, {"Retry-After": "0.01"}, "busy") if n == 0 else ok("2")
    judge = OpenAIJudge(
        ARCHETYPES, "sk-test", base_url=server.base_url, rpm=60, concurrency=1, sleep=clock.sleep, clock=clock.time
    )
    assert [j.score for j in judge.score(["pirate"], ["a"])] == [2]
    assert len(server.seen) == 2 and clock.sleeps == [1.0]  # the retry waited for its own slot


def test_parsers() -> None:
    assert parse_score("3") == 3
    assert parse_score("Score: 2.") == 2
    assert parse_score("10") is None and parse_score("5") is None and parse_score("") is None
