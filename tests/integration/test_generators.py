"""``build --generator openai`` against a real completions server process of the tests' own, on a tiny random model.

Oracles: every answer is the stand-in server's pure function of (prompt, seed), so the test knows each text;
the captured means equal each answer read alone by the model (``hidden_states``, no padding, no batching); the
requests carry the template-rendered prompt and the build's sampling settings and per-row seeds; failures are
one-line errors naming the URL, and the chunks already in the work folder stay byte for byte.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from backend.build.pipeline import build
from backend.build.plan import chunk_seed, chunks_of, plan_units
from backend.build.served import GeneratorError, request_seed
from backend.build.settings import BuildSettings
from backend.build.workfolder import WorkFolder
from backend.cli import build_parser
from backend.errors import PersonaSpaceError
from backend.models.chat import encode_prompt, render_prompt
from backend.store.space import load_space
from tests.helpers.completions_server import MODEL_ID, completion_text

ROLES = ("pirate", "librarian", "ghost", "accountant", "poet")
SETTINGS = BuildSettings(
    prompts_per_role=1, questions_per_role=2, default_questions=2, max_new_tokens=12, batch_size=4,
    judge="none", min_in_role=1, roles=ROLES, umap_neighbors=3, generator="openai", generator_urls=("http://replaced.invalid/v1",),
)  # fmt: skip
SERVER_SCRIPT = Path(__file__).resolve().parents[1] / "helpers" / "completions_server.py"


class StandIn:
    def __init__(self, port: int) -> None:
        self.root = f"http://127.0.0.1:{port}"
        self.url = self.root + "/v1"
        self.alias = f"http://localhost:{port}/v1"  # the same server under a second URL

    def control(self, mode: str, count: int = 0, **extra: Any) -> None:
        body = json.dumps({"mode": mode, "count": count, **extra}).encode()
        request = urllib.request.Request(self.root + "/_control", data=body, method="POST")
        with urllib.request.urlopen(request, timeout=10) as reply:
            assert reply.status == 200

    def log(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(self.root + "/_log", timeout=10) as reply:
            entries: list[dict[str, Any]] = json.loads(reply.read())["log"]
            return entries


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy for local servers; short retries so failing cases end quickly."""
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("PERSONA_SPACE_GENERATOR_MAX_RETRIES", "2")
    monkeypatch.setenv("PERSONA_SPACE_GENERATOR_CONCURRENCY", "2")
    monkeypatch.setenv("PERSONA_SPACE_GENERATOR_TIMEOUT_S", "20")


@pytest.fixture(scope="module")
def server() -> Iterator[StandIn]:
    process = subprocess.Popen([sys.executable, str(SERVER_SCRIPT)], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        stand_in = StandIn(int(process.stdout.readline()))
        yield stand_in
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def catalogue():  # type: ignore[no-untyped-def]
    from backend.catalogue import load_catalogue

    return load_catalogue()


@pytest.fixture(scope="module")
def served_build(tiny_chat, catalogue, server, tmp_path_factory):  # type: ignore[no-untyped-def]
    """A whole build on the stand-in, reached under two URLs."""
    server.control("ok")
    root = tmp_path_factory.mktemp("served")
    settings = replace(SETTINGS, generator_urls=(server.url, server.alias))
    path = build(tiny_chat, catalogue, settings, root / "space", root / "work", log=lambda m: None)
    return root, load_space(path), server.log(), settings


def alone_means(loaded, unit, answer: list[int]) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """Oracle: the answer read alone (no batch, no padding): each block's output averaged over the answer tokens
    (``hidden_states[layer + 1]``; the last entry has the final norm applied, so the last block's own output)."""
    prompt = encode_prompt(loaded.tokenizer, unit.system, [{"role": "user", "content": unit.text}])
    last: list[torch.Tensor] = []
    hook = loaded.model.model.layers[-1].register_forward_hook(
        lambda module, args, output: last.append(output[0] if isinstance(output, tuple) else output)
    )
    try:
        with torch.no_grad():
            states = loaded.model(torch.tensor([prompt + answer]), output_hidden_states=True).hidden_states
    finally:
        hook.remove()
    blocks = [*states[1:-1], last[0]]
    return torch.stack([h[0, len(prompt) :].mean(0) for h in blocks])


def test_served_answers_are_captured_by_teacher_forcing(served_build, tiny_chat, catalogue) -> None:  # type: ignore[no-untyped-def]
    root, space, _, settings = served_build
    tok = tiny_chat.tokenizer
    units = plan_units(catalogue, SETTINGS, "tiny-llama")
    chunks = chunks_of(units, SETTINGS.batch_size)
    work = WorkFolder(root / "work")
    compared = 0
    for index, chunk in enumerate(chunks):
        got_units, means, records = work.load(index)
        assert got_units == chunk
        seed = chunk_seed(SETTINGS.seed, index)
        for row, (unit, record) in enumerate(zip(chunk, records, strict=True)):
            prompt = render_prompt(tok, unit.system, [{"role": "user", "content": unit.text}])
            text = completion_text(prompt, request_seed(seed, row), SETTINGS.max_new_tokens)
            assert record["text"] == text
            assert record["tokens"] == tok.encode(text, add_special_tokens=False)
            assert record["n_tokens"] == len(record["tokens"]) > 0 and record["truncated"] is False
            torch.testing.assert_close(means[row], alone_means(tiny_chat, unit, record["tokens"]), rtol=1e-4, atol=1e-5)
            compared += 1
    assert compared == len(units) == 20
    m = space.manifest["settings"]
    assert m["generator"] == "openai" and m["generator_urls"] == list(settings.generator_urls)
    assert m["generator_models"] == [f"{u} {MODEL_ID}" for u in settings.generator_urls]


def test_requests_carry_the_template_prompt_sampling_and_seeds(served_build, tiny_chat, catalogue) -> None:  # type: ignore[no-untyped-def]
    _, _, log, _ = served_build
    tok = tiny_chat.tokenizer
    units = plan_units(catalogue, SETTINGS, "tiny-llama")
    expected = {}
    for index, chunk in enumerate(chunks_of(units, SETTINGS.batch_size)):
        for row, unit in enumerate(chunk):
            prompt = render_prompt(tok, unit.system, [{"role": "user", "content": unit.text}])
            expected[(prompt, request_seed(chunk_seed(SETTINGS.seed, index), row))] = unit
    assert len(log) == len(expected) == 20
    for entry in log:
        body = entry["body"]
        assert (body["prompt"], body["seed"]) in expected
        assert (body["model"], body["max_tokens"], body["temperature"], body["top_p"]) == (MODEL_ID, 12, 0.7, 0.9)
        assert (body["top_k"], body["min_p"], body["repeat_penalty"], body["n"], body["stream"]) == (0, 0.0, 1.0, 1, False)
        assert body["prompt"].startswith("<|im_start|>") and body["prompt"].endswith("<|im_start|>assistant\n")
    assert {entry["host"].split(":")[0] for entry in log} == {"127.0.0.1", "localhost"}  # both URLs were used


def test_server_token_ids_are_used_and_checked(tiny_chat, catalogue, server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A server that returns token ids (vLLM): ours when they decode to its text (EOS dropped), refused otherwise."""
    tok = tiny_chat.tokenizer
    settings = replace(SETTINGS, generator_urls=(server.url,), default_questions=1, roles=ROLES[:3], max_new_tokens=64)
    units = plan_units(catalogue, settings, "tiny-llama")
    ids = {}
    for index, chunk in enumerate(chunks_of(units, settings.batch_size)):
        for row, unit in enumerate(chunk):
            prompt = render_prompt(tok, unit.system, [{"role": "user", "content": unit.text}])
            text = completion_text(prompt, request_seed(chunk_seed(settings.seed, index), row), settings.max_new_tokens)
            # one token per character: the same text, not how our tokenizer would split it (a model may sample that)
            spelled = [t for c in text for t in tok.encode(c, add_special_tokens=False)]
            ids[text] = [*spelled, tok.eos_token_id]
    server.control("ok_ids", ids=ids)
    from backend.build.served import run_served_generation

    work = WorkFolder(tmp_path / "w")
    work.open(settings.generation_key(), "tiny-0")
    assert run_served_generation(tiny_chat, units, settings, work) == len(chunks_of(units, settings.batch_size))
    _, means, records = work.load(0)
    for row, record in enumerate(records):
        assert record["tokens"] == ids[record["text"]][:-1] != tok.encode(record["text"], add_special_tokens=False)
        torch.testing.assert_close(means[row], alone_means(tiny_chat, units[row], record["tokens"]), rtol=1e-4, atol=1e-5)
    # an end of turn inside the ids (the text alone would hide it: special tokens are skipped when decoding)
    server.control("ok_ids", ids={text: [*ids[:3], tok.eos_token_id, *ids[3:]] for text, ids in ids.items()})
    again = WorkFolder(tmp_path / "again")
    again.open(settings.generation_key(), "tiny-0")
    with pytest.raises(GeneratorError, match=r"token ids decode to .*<\|im_end\|>"):
        run_served_generation(tiny_chat, units, settings, again)
    assert list((tmp_path / "again" / "chunks").iterdir()) == []


@pytest.fixture(scope="module")
def half_done(tiny_chat, catalogue, server, tmp_path_factory):  # type: ignore[no-untyped-def]
    """A work folder holding shard 0/2 (chunks 0, 2, 4) of a served build."""
    server.control("ok")
    root = tmp_path_factory.mktemp("half")
    settings = replace(SETTINGS, generator_urls=(server.url,))
    assert build(tiny_chat, catalogue, settings, root / "s", root / "work", shard=(0, 2), log=lambda m: None) is None
    return root / "work"


def chunk_files(work: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((work / "chunks").iterdir())}


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        (
            "malformed",
            r"generation server http://127\.0\.0\.1:\d+/v1 failed on an answer of role .* something other than a JSON object",
        ),
        ("foreign", r"serves another model than the loaded one .* does not round-trip through our tokenizer"),
        ("wrong_ids", r"serves another model than the loaded one .* token ids decode to"),
        ("die_after", r"failed on an answer of role .*HTTP 500 .*after 3 tries.*finished chunks are kept"),
    ],
)
def test_bad_servers_are_clear_errors_and_lose_nothing(
    mode, message, tiny_chat, catalogue, server, half_done, tmp_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PERSONA_SPACE_GENERATOR_CONCURRENCY", "1")  # one request at a time: die_after's cut is exact
    work = tmp_path / "work"
    shutil.copytree(half_done, work)
    before = chunk_files(work)
    server.control(mode, count=4)  # die_after: one more chunk's answers, then HTTP 500 for good
    settings = replace(SETTINGS, generator_urls=(server.url,))
    with pytest.raises(GeneratorError, match=message) as info:
        build(tiny_chat, catalogue, settings, tmp_path / "space", work, log=lambda m: None)
    assert "\n" not in str(info.value) and server.url in str(info.value)
    after = chunk_files(work)
    assert {k: after[k] for k in before} == before  # finished chunks stay, byte for byte
    assert len(after) == len(before) + (2 if mode == "die_after" else 0)  # die_after: chunk 1 was finished first
    assert not (tmp_path / "space").exists()


def test_retries_then_resume_give_the_same_space(tiny_chat, catalogue, server, half_done, served_build, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """5xx answers are retried; a build continued from a half-done folder equals the uninterrupted one."""
    work = tmp_path / "work"
    shutil.copytree(half_done, work)
    server.control("flaky", count=2)
    settings = replace(SETTINGS, generator_urls=(server.url, server.alias))
    path = build(tiny_chat, catalogue, settings, tmp_path / "space", work, log=lambda m: None)
    assert len(server.log()) == 2 * 4 + 2  # chunks 1 and 3, and the two refused tries
    space, reference = load_space(path), served_build[1]
    for name in space.tensors:
        assert torch.equal(space.tensors[name], reference.tensors[name]), name


def test_unreachable_server_is_a_clear_error(tiny_chat, catalogue, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as probe:  # a local port that nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = replace(SETTINGS, generator_urls=(f"http://127.0.0.1:{port}/v1",))
    with pytest.raises(GeneratorError) as info:
        build(tiny_chat, catalogue, settings, tmp_path / "space", tmp_path / "work", log=lambda m: None)
    message = str(info.value)
    assert f"generation server http://127.0.0.1:{port}/v1 failed when asked for its model" in message
    assert "could not connect" in message and "3 tries" in message and "\n" not in message
    assert list((tmp_path / "work" / "chunks").iterdir()) == []


def test_generator_settings_and_keys() -> None:
    # the in-process generator keeps the keys of existing work folders (computed on main before generators existed)
    assert BuildSettings().generation_key() == "4db729df9a7ae566"
    assert BuildSettings(roles=("pirate", "poet"), seed=3).generation_key() == "a103d981ffecea67"
    served = BuildSettings(generator="openai", generator_urls=("http://a/v1",))
    assert served.generation_key() != BuildSettings().generation_key()
    # which servers answered does not change the answers: another URL resumes the same folder
    assert replace(served, generator_urls=("http://b/v1", "http://c/v1")).generation_key() == served.generation_key()
    with pytest.raises(PersonaSpaceError, match="needs --generator-url"):
        BuildSettings(generator="openai")
    with pytest.raises(PersonaSpaceError, match="unknown generator 'vllm'"):
        BuildSettings(generator="vllm", generator_urls=("http://a/v1",))
    with pytest.raises(PersonaSpaceError, match="only used with --generator openai"):
        BuildSettings(generator_urls=("http://a/v1",))
    args = build_parser().parse_args(
        ["build", "--out", "x", "--generator", "openai", "--generator-url", "http://a:8000/v1/,http://b:8000/v1"]
    )
    assert (args.generator, args.generator_url) == ("openai", "http://a:8000/v1/,http://b:8000/v1")
    assert build_parser().parse_args(["build", "--out", "x"]).generator == "hf"


def test_rebuild_of_a_served_build_keeps_its_record(served_build, catalogue, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from backend.build.pipeline import rebuild

    root, space, _, settings = served_build
    path = rebuild(root / "work", catalogue, tmp_path / "again", log=lambda m: None)
    again = load_space(path)
    assert again.manifest["settings"]["generator_models"] == space.manifest["settings"]["generator_models"]
    assert again.manifest["settings"]["generator_urls"] == list(settings.generator_urls)
    for name in space.tensors:
        assert torch.equal(again.tensors[name], space.tensors[name]), name


def test_the_readme_vllm_command_parses_and_ray_is_refused(capsys) -> None:  # type: ignore[no-untyped-def]
    import re
    import shlex

    from backend import cli

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = text[text.index("## Building for a large model") : text.index("## The shipped space")]
    recipe = re.search(r'RECIPE="([^"]+)"', section)
    assert recipe is not None
    lines = section.replace("\\\n", " ")
    (served,) = [c for c in re.findall(r"python -m backend (build [^\n]*)", lines) if "--generator" in c]
    args = build_parser().parse_args(shlex.split(served.replace("$RECIPE", recipe.group(1))))
    assert (args.generator, args.generator_url, args.questions_per_role) == ("openai", "http://localhost:8000/v1", 240)
    argv = ["build", "--out", "x", "--ray", "auto", "--generator", "openai", "--generator-url", "http://a/v1"]
    assert cli.main(argv) == 2
    assert "--ray and --generator openai" in capsys.readouterr().err
