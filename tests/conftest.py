from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.chat_server import Reply, Seen, Server
from tests.helpers.scratch import snapshot, use_scratch_cache, user_cache

# Tests never reach a model hub: everything comes from packages or is built from a config.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tests.helpers.tiny import ARCHITECTURES, tiny_model

# Tests never touch the user's cache folder (their sessions database, converted models): this process and every worker
# or launcher it starts use a scratch folder instead (tests/helpers/scratch.py). What the user's folder held when the
# suite started is compared with what it holds at the end (tests/unit/test_isolation.py, run last).
USER_CACHE = user_cache()
USER_CACHE_BEFORE = snapshot(USER_CACHE)
SCRATCH_CACHE = use_scratch_cache()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "last: run after every other collected test (checks on what the suite left)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker("last") is not None)  # stable: the others keep their order


@pytest.fixture(scope="session")
def user_cache_before() -> tuple[Path, dict[str, tuple[int, int]]]:
    """The user's cache folder and its files (size, mtime) when the suite started."""
    return USER_CACHE, USER_CACHE_BEFORE


@pytest.fixture(scope="session", params=ARCHITECTURES)
def arch_model(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    return request.param, tiny_model(request.param)


@pytest.fixture(scope="session")
def llama():  # type: ignore[no-untyped-def]
    return tiny_model("llama")


@pytest.fixture(scope="session")
def smollm():  # type: ignore[no-untyped-def]
    """The real embedded default model (converted once into the tests' shared store, tests/helpers/scratch.py)."""
    from backend.models.loading import load_model

    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def smol_tokenizer():  # type: ignore[no-untyped-def]
    """The embedded model's tokenizer (chat template included), without loading its weights."""
    from transformers import AutoTokenizer

    from backend.models.loading import cache_dir, resolve

    folder, _, _ = resolve("smollm2-135m", cache_dir())
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    return tokenizer


@pytest.fixture(scope="session")
def tiny_chat(smol_tokenizer):  # type: ignore[no-untyped-def]
    """A tiny random Llama with the embedded model's tokenizer: a chat model for plumbing tests."""
    from backend.models.loading import LoadedModel, describe
    from tests.helpers.tiny import tiny_model

    model = tiny_model("llama", n_layers=4, vocab=len(smol_tokenizer))
    model.generation_config.eos_token_id = smol_tokenizer.eos_token_id
    info = describe(model, smol_tokenizer, spec="tiny-llama", name="tiny-llama", source="random", fingerprint="tiny-0")
    return LoadedModel(model=model, tokenizer=smol_tokenizer, info=info)


WORLD_ROLES = ("pirate", "librarian", "ghost", "accountant", "poet", "chef")


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory, smol_tokenizer):  # type: ignore[no-untyped-def]
    """A tiny random Llama saved as a model folder, and a persona space built for it."""
    from backend.build.pipeline import build
    from backend.build.settings import BuildSettings
    from backend.catalogue import load_catalogue
    from backend.models.loading import load_model
    from tests.helpers.tiny import tiny_model

    root = tmp_path_factory.mktemp("tiny_world")
    model = tiny_model("llama", n_layers=4, vocab=len(smol_tokenizer))
    model.generation_config.eos_token_id = smol_tokenizer.eos_token_id
    model.save_pretrained(root / "model")
    smol_tokenizer.save_pretrained(root / "model")
    loaded = load_model(str(root / "model"))
    settings = BuildSettings(
        prompts_per_role=1, questions_per_role=2, default_questions=2, max_new_tokens=4, batch_size=16,
        judge="none", min_in_role=1, roles=WORLD_ROLES, umap_neighbors=3,
    )  # fmt: skip
    space = build(loaded, load_catalogue(), settings, root / "space", root / "work", log=lambda m: None)
    return str(root / "model"), space, root


@pytest.fixture(scope="session")
def worker(tiny_world):  # type: ignore[no-untyped-def]
    """A real worker process serving the tiny model and its space."""
    from tests.helpers.worker_harness import Worker

    model, space, root = tiny_world
    w = Worker(model, space, root / "worker.sqlite3")
    w.wait_ready()
    yield w
    w.close()


@pytest.fixture
def tiny_space(tiny_world, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PERSONA_SPACE_SPACE", str(tiny_world[1]))
    return tiny_world[1]


@pytest.fixture
def server() -> Iterator[Server]:
    state: list[Server] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            srv = state[0]
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
            with srv.lock:
                n = len(srv.seen)
                srv.seen.append(Seen(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            reply: Reply = (404, {}, {"error": {"message": f"no route {self.path}"}})
            if self.path == "/v1/chat/completions":
                reply = srv.respond(body, n)
            status, headers, payload = reply
            data = (json.dumps(payload) if not isinstance(payload, str) else payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    state.append(Server(f"http://127.0.0.1:{httpd.server_address[1]}/v1"))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield state[0]
    finally:
        httpd.shutdown()
        httpd.server_close()
