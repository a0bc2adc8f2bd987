"""The served generator (``build --generator openai``): answers from OpenAI-compatible completions servers.

vLLM, SGLang and llama.cpp's server all speak ``POST /v1/completions``. For each planned answer the builder sends
the *prompt text rendered by the loaded model's own chat template* (so a server cannot apply a template of its
own), the build's temperature and top-p, ``max_tokens = max_new_tokens``, no top-k, min-p or repetition penalty, and
a per-request seed derived from the chunk's seed and the row (servers that know ``seed`` sample reproducibly).
Requests run ``PERSONA_SPACE_GENERATOR_CONCURRENCY`` at a time per URL, several chunks ahead, through the
project's one client (:mod:`backend.openai_client`: retries with back-off, ``Retry-After``, optional rpm limit).

Activations come from a teacher-forced pass of the loaded model over prompt + answer tokens
(:func:`backend.reading.teacher_forcing.teacher_forced_means`). The answer's tokens are the server's own ``token_ids``
when it returns them (vLLM with ``return_token_ids``) and they decode to its text with our tokenizer; otherwise
the text re-tokenised with the model's tokenizer. A server whose model does not match is refused, naming its URL:

* an answer whose text does not round-trip through our tokenizer (``decode(encode(text)) != text``, e.g. another
  model's end-of-turn marker or our special tokens inside the text);
* ``token_ids`` that decode to another text, or ``prompt_token_ids`` that differ from our prompt's tokens.

A chunk is written to the work folder once all its answers are in and captured, so a failed or killed build
resumes where it stopped. The servers' model ids (``GET /v1/models``) go into ``generator.json`` in the work folder
and into the manifest's settings (``generator_models``)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import Any

from backend.build.local import ChunkExecutor, stop_ids
from backend.build.plan import Unit, chunk_seed, chunks_of
from backend.build.settings import BuildSettings
from backend.build.workfolder import WorkFolder, progress
from backend.errors import PersonaSpaceError
from backend.models.chat import render_prompt
from backend.models.loading import LoadedModel
from backend.openai_client import Endpoint, EndpointError, EndpointPool, EndpointSettings, clip
from backend.reading.teacher_forcing import teacher_forced_means

ENV = "PERSONA_SPACE_GENERATOR"


DEFAULT_CONCURRENCY = 16


DEFAULT_MAX_RETRIES = 5


DEFAULT_TIMEOUT_S = 600.0


SERVERS_FILE = "generator.json"


# Sampling knobs whose server defaults differ from in-process generation (llama.cpp: top_k 40, min_p 0.05,
# repeat_penalty 1.1); PERSONA_SPACE_GENERATOR_EXTRA_BODY (a JSON object) adds or overrides fields, null removes one.
NEUTRAL = {"top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0, "add_special_tokens": False, "return_token_ids": True}


class GeneratorError(PersonaSpaceError):
    """The generation server is unreachable, failing, answering nonsense, or serving another model."""


def request_seed(chunk_seed: int, row: int) -> int:
    """The seed of one request: a 31-bit hash of the chunk's seed and the row (fits every server's seed type)."""
    return int.from_bytes(hashlib.sha256(f"{chunk_seed}:{row}".encode()).digest()[:4], "little") & 0x7FFFFFFF


def endpoint_settings(urls: Sequence[str], environ: Mapping[str, str] | None = None) -> EndpointSettings:
    """Client settings from ``--generator-url`` and the ``PERSONA_SPACE_GENERATOR_*`` variables."""
    try:
        return EndpointSettings.from_env(
            ENV,
            environ,
            base_urls=urls,
            default_api_key="EMPTY",  # local servers need none; vLLM's --api-key wants PERSONA_SPACE_GENERATOR_API_KEY
            defaults={"concurrency": DEFAULT_CONCURRENCY, "max_retries": DEFAULT_MAX_RETRIES, "timeout_s": DEFAULT_TIMEOUT_S},
        )
    except PersonaSpaceError as exc:
        raise GeneratorError(str(exc)) from None


def _extra_body(environ: Mapping[str, str]) -> dict[str, Any]:
    raw = environ.get(f"{ENV}_EXTRA_BODY", "").strip()
    if not raw:
        return {}
    try:
        extra = json.loads(raw)
    except ValueError:
        extra = None
    if not isinstance(extra, dict):
        raise GeneratorError(f"{ENV}_EXTRA_BODY must be a JSON object, got {clip(raw, 80)!r}")
    return extra


def _failed(exc: EndpointError, what: str) -> GeneratorError:
    advice = {
        401: f"set {ENV}_API_KEY to the server's key",
        403: f"set {ENV}_API_KEY to the server's key",
        404: "check --generator-url: it should end where /completions can be appended, e.g. http://host:8000/v1",
        400: f"the server refused the request; {ENV}_EXTRA_BODY can drop a field it does not know (e.g. '{{\"top_k\": null}}')",
        422: f"the server refused the request; {ENV}_EXTRA_BODY can drop a field it does not know (e.g. '{{\"top_k\": null}}')",
    }.get(exc.status or 0)
    if advice is None:
        advice = (
            f"check that the server is up, or allow more retries ({ENV}_MAX_RETRIES) or fewer requests in flight "
            f"({ENV}_CONCURRENCY); finished chunks are kept, rerun the same build to continue"
        )
    return GeneratorError(f"generation server {exc.url} failed {what}: {exc}. {advice}")


def probe(pool: EndpointPool, environ: Mapping[str, str]) -> list[str]:
    """Each server's model id (``GET /models``; ``PERSONA_SPACE_GENERATOR_MODEL`` overrides what is requested)."""
    wanted = environ.get(f"{ENV}_MODEL", "").strip()
    ids = []
    for endpoint in pool.endpoints:
        try:
            data = pool.get_json(endpoint, "models")
        except EndpointError as exc:
            raise _failed(exc, "when asked for its model (GET /models)") from None
        listed = data.get("data")
        models = [m for m in listed if isinstance(m, dict)] if isinstance(listed, list) else []
        names = [str(m["id"]) for m in models if isinstance(m.get("id"), str) and m["id"]]
        if not names:
            raise GeneratorError(f"generation server {endpoint.url} lists no model at /models: {clip(json.dumps(data))!r}")
        if wanted and wanted not in names:
            raise GeneratorError(f"generation server {endpoint.url} serves {names}, not {ENV}_MODEL={wanted!r}")
        ids.append(wanted or names[0])
    return ids


class Answerer:
    """Turns one server reply into an answer record, checking that the server's model is the loaded one."""

    def __init__(self, loaded: LoadedModel, limit: int) -> None:

        self.tokenizer = loaded.tokenizer
        self.limit = limit
        self.stop = set(stop_ids(loaded))

    def record(self, url: str, data: Mapping[str, Any], prompt_ids: Sequence[int]) -> dict[str, Any]:
        tok = self.tokenizer
        try:
            choice = data["choices"][0]
            text = choice["text"]
        except (KeyError, IndexError, TypeError):
            raise GeneratorError(
                f"generation server {url} answered with something other than a completions response: "
                f"{clip(json.dumps(data))!r}; check --generator-url (it should end in /v1)"
            ) from None
        if not isinstance(text, str):
            raise GeneratorError(f"generation server {url} returned a completion that is not text: {clip(repr(text))}")
        mismatch = f"generation server {url} serves another model than the loaded one (or another tokenizer)"
        served_prompt = choice.get("prompt_token_ids")
        if isinstance(served_prompt, list) and list(served_prompt) != list(prompt_ids):
            raise GeneratorError(
                f"{mismatch}: it read the prompt as {len(served_prompt)} tokens, not our {len(prompt_ids)} "
                f"(first difference at token {_first_difference(served_prompt, prompt_ids)}); serve the same model "
                "and tokenizer, without adding a BOS token"
            )
        served = choice.get("token_ids")
        if isinstance(served, list) and all(isinstance(t, int) for t in served):
            tokens = list(served[:-1] if served and served[-1] in self.stop else served)  # drop the final EOS only
            if tok.decode(tokens, skip_special_tokens=True) != text or any(t in self.stop for t in tokens):
                raise GeneratorError(
                    f"{mismatch}: its token ids decode to {clip(tok.decode(tokens), 80)!r} with our tokenizer, but its "
                    f"text is {clip(text, 80)!r}"
                )
        else:
            tokens = tok.encode(text, add_special_tokens=False)
            back = tok.decode(tokens, skip_special_tokens=True)
            if back != text:
                raise GeneratorError(
                    f"{mismatch}: an answer does not round-trip through our tokenizer ({clip(text, 80)!r} reads back "
                    f"as {clip(back, 80)!r}); serve the model given to --model"
                )
        cut = len(tokens) > self.limit
        tokens = tokens[: self.limit]
        finish = choice.get("finish_reason")
        return {
            "tokens": tokens,
            "n_tokens": len(tokens),
            "truncated": cut or finish == "length",
            "text": tok.decode(tokens, skip_special_tokens=True) if cut else text,
        }


def _first_difference(a: Sequence[Any], b: Sequence[Any]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def make_ask(
    pool: EndpointPool, models: Sequence[str], loaded: LoadedModel, settings: BuildSettings, environ: Mapping[str, str]
) -> Callable[[Unit, int], dict[str, Any]]:
    """``ask(unit, seed)``: one completion request on the calling worker thread's server -> an answer record.
    Runs on :meth:`EndpointPool.executor` threads; raises :class:`GeneratorError`."""
    body_extra = {**NEUTRAL, **_extra_body(environ)}
    answerer = Answerer(loaded, settings.max_new_tokens)
    model_of = {e.url: m for e, m in zip(pool.endpoints, models, strict=True)}
    tok = loaded.tokenizer

    def ask(unit: Unit, seed: int) -> dict[str, Any]:
        endpoint: Endpoint = pool.current()
        prompt = render_prompt(tok, unit.system, [{"role": "user", "content": unit.text}])
        body = {
            "model": model_of[endpoint.url],
            "prompt": prompt,
            "max_tokens": settings.max_new_tokens,
            "temperature": settings.temperature,
            "top_p": settings.top_p,
            "seed": seed,
            "n": 1,
            "stream": False,
            **body_extra,
        }
        body = {k: v for k, v in body.items() if v is not None}
        try:
            data = pool.post_json(endpoint, "completions", body)
        except EndpointError as exc:
            raise _failed(exc, f"on an answer of role {unit.role!r}") from None
        return answerer.record(endpoint.url, data, tok(prompt, add_special_tokens=False)["input_ids"])

    return ask


def run_served_generation(
    loaded: LoadedModel | None,
    units: list[Unit],
    settings: BuildSettings,
    work: WorkFolder,
    shard: tuple[int, int] = (0, 1),
    environ: Mapping[str, str] | None = None,
    executor: ChunkExecutor | None = None,
) -> int:
    """Generate every chunk of this shard not yet in the work folder on the servers, capture it by teacher forcing,
    and write it; returns chunks generated. Raises :class:`GeneratorError`; chunks already written stay."""
    if executor is not None or loaded is None:
        raise PersonaSpaceError(
            "--generator openai captures in this process, with the model loaded here; --ray is not supported with it "
            "yet: drop --ray (the servers already spread the generation), or use --shard i/n on several machines"
        )

    env = os.environ if environ is None else environ
    chunks = chunks_of(units, settings.batch_size)
    mine = [i for i in range(len(chunks)) if i % shard[1] == shard[0]]
    todo = [i for i in mine if not work.done(i)]
    pool = EndpointPool(endpoint_settings(settings.generator_urls, env))
    try:
        models = probe(pool, env)
        _write_servers(work.root, pool, models)
        if not todo:
            return 0
        ask = make_ask(pool, models, loaded, settings, env)
        per_chunk = settings.batch_size
        ahead = max(2, -(-pool.settings.concurrency * len(pool.endpoints) // per_chunk) + 1)
        threads = pool.executor()
        submitted: dict[int, list[Future[dict[str, Any]]]] = {}
        bar = progress(len(mine), f"generate ({len(pool.endpoints)} server(s)) + capture", initial=len(mine) - len(todo))
        try:
            for position, index in enumerate(todo):
                for later in todo[position : position + ahead]:
                    if later not in submitted:
                        seed = chunk_seed(settings.seed, later)
                        submitted[later] = [
                            threads.submit(ask, unit, request_seed(seed, row)) for row, unit in enumerate(chunks[later])
                        ]
                records = [f.result() for f in submitted.pop(index)]
                means = teacher_forced_means(loaded, chunks[index], [r["tokens"] for r in records])
                work.save(index, chunks[index], means, records)
                bar.update(1)
        finally:
            bar.close()
            for futures in submitted.values():
                for f in futures:
                    f.cancel()
            threads.shutdown(wait=True, cancel_futures=True)
        return len(todo)
    finally:
        pool.close()


def _write_servers(root: Path, pool: EndpointPool, models: Sequence[str]) -> None:
    payload = {
        "generator": "openai",
        "servers": [{"url": e.url, "model": m} for e, m in zip(pool.endpoints, models, strict=True)],
    }
    tmp = root / (SERVERS_FILE + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, root / SERVERS_FILE)


def recorded_servers(settings: BuildSettings, work: WorkFolder) -> BuildSettings:
    """``settings`` with the model ids the servers reported (``generator.json``), for the manifest."""
    path = work.root / SERVERS_FILE
    if settings.generator == "hf" or not path.exists():
        return settings
    servers = json.loads(path.read_text()).get("servers", [])
    return replace(settings, generator_models=tuple(f"{s['url']} {s['model']}" for s in servers))
