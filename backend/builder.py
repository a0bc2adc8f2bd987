"""The persona-space builder: generate -> capture -> judge -> role vectors -> space.

Work is cut into fixed *chunks* of ``batch_size`` answers (default-Assistant answers first, then the archetypes in
catalogue order, prompts then questions). A chunk is generated in one batch (left padding) with its own seed,
and the residual stream is captured during generation: the per-answer mean over the answer's own content tokens
(no template, system or user tokens, no EOS), at every layer. Each finished chunk is written to the work folder
at once, so a killed build continues where it stopped and gives the same result; ``--shard i/n`` builds every
n-th chunk, and shards written to one work folder (or copied into one) merge into exactly the space one run gives.
The plan (which answers, in which chunks, with which seeds) is :mod:`backend.plan`; chunks run in this process or
on a :class:`ChunkExecutor` (Ray actors, :mod:`backend.distributed`), and this process writes every one of them.

Generation runs on the decode engine (:mod:`backend.decode`: a static KV cache, finished rows fed padding) and
samples with temperature + top-p from a generator seeded by the chunk's seed (:func:`backend.sampling.sample_rows`),
so a chunk's answers do not depend on any global random state. Each kept token is fed back through the model, so
its activation exists; one token past ``max_new_tokens`` is drawn (never fed) to tell a cut answer from one that
ends exactly there.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from backend.assemble import assemble_space, build_space, fit_umap
from backend.catalogue import DEFAULT_ROLE, Catalogue
from backend.chat import encode_prompt
from backend.decode import Decoder, generate_rows
from backend.errors import PersonaSpaceError
from backend.generate import eos_ids
from backend.generators import check_generator, recorded_servers, run_served_generation
from backend.interventions import Capture, intervene
from backend.models import LoadedModel, ModelInfo
from backend.plan import Unit, chunk_seed, chunks_of, parse_shard, plan_units, select_questions
from backend.recipes import DEFAULT_RECIPE, check_recipe
from backend.sampling import sample_rows
from backend.store import sha256_file, write_space
from backend.teacher_forcing import teacher_forced_means

__all__ = [  # re-exported: callers import them from here
    "Unit", "assemble_space", "build_space", "chunk_seed", "chunks_of", "fit_umap", "parse_shard", "plan_units",
    "select_questions", "teacher_forced_means",
]  # fmt: skip

# 2: answers sampled on the decode engine (backend/decode.py, a seeded generator per chunk); 1: HF ``generate``
BUILD_VERSION = 2


@dataclass(frozen=True)
class BuildSettings:
    prompts_per_role: int = 5
    questions_per_role: int = 8
    default_questions: int = 40
    max_new_tokens: int = 32
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int = 0
    batch_size: int = 48
    judge: str = "embedding"
    min_in_role: int = 10
    percentiles: tuple[float, ...] = (1.0, 25.0, 50.0, 75.0)
    pca_components: int = 20
    umap_neighbors: int = 15
    roles: tuple[str, ...] | None = None
    recipe: str = DEFAULT_RECIPE
    target_layer: int | None = None  # None: the model's own target layer
    generator: str = "hf"  # "hf": in-process; "openai": a completions server (backend/generators.py)
    generator_urls: tuple[str, ...] = ()
    generator_models: tuple[str, ...] = ()  # what the servers reported (recorded, not a setting)

    def __post_init__(self) -> None:
        check_recipe(self.recipe)
        check_generator(self)
        if self.target_layer is not None and (isinstance(self.target_layer, bool) or self.target_layer < 0):
            raise PersonaSpaceError(f"target_layer must be a layer index >= 0, got {self.target_layer!r}")
        checks = {
            "prompts_per_role": (self.prompts_per_role, 1, 100),
            "questions_per_role": (self.questions_per_role, 1, 10_000),
            "default_questions": (self.default_questions, 1, 10_000),
            "max_new_tokens": (self.max_new_tokens, 1, 4096),
            "batch_size": (self.batch_size, 1, 4096),
            "min_in_role": (self.min_in_role, 1, 100_000),
            "pca_components": (self.pca_components, 1, 10_000),
            "umap_neighbors": (self.umap_neighbors, 2, 1000),
        }
        for name, (value, lo, hi) in checks.items():
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise PersonaSpaceError(f"{name} must be an integer in {lo}..{hi}, got {value!r}")
        if not (0 < self.temperature <= 5 and 0 < self.top_p <= 1):
            raise PersonaSpaceError(f"need 0 < temperature <= 5 and 0 < top_p <= 1, got {self.temperature}, {self.top_p}")
        for p in self.percentiles:
            if not (math.isfinite(p) and 0 <= p <= 100):
                raise PersonaSpaceError(f"percentiles must be in [0, 100], got {p}")

    def generation_key(self) -> str:
        """Hash of everything that changes the generated answers (not the judge or the space's math)."""
        fields = {k: v for k, v in asdict(self).items() if k in GENERATION_FIELDS}
        if self.generator != "hf":  # another generator gives other answers; "hf" keeps the keys of older folders
            fields["generator"] = self.generator
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


GENERATION_FIELDS = (
    "prompts_per_role", "questions_per_role", "default_questions", "max_new_tokens", "temperature", "top_p",
    "seed", "batch_size", "roles",
)  # fmt: skip


def _stop_ids(loaded: LoadedModel) -> list[int]:
    """EOS ids and the pad id: an answer stops at either, and neither is part of its content."""
    ids = eos_ids(loaded)
    if loaded.tokenizer.pad_token_id is not None:
        ids.add(int(loaded.tokenizer.pad_token_id))
    return sorted(ids)


@torch.inference_mode()
def generate_chunk(
    loaded: LoadedModel, units: Sequence[Unit], settings: BuildSettings, seed: int
) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Generate a chunk's answers and capture their per-layer mean activations.

    Returns ``(means (B, L, d) float32, records)``; each record has the answer text, its token ids and count, and
    whether it was cut at ``max_new_tokens``.
    """
    model, tokenizer = loaded.model, loaded.tokenizer
    device = next(model.parameters()).device
    prompts = [encode_prompt(tokenizer, u.system, [{"role": "user", "content": u.text}]) for u in units]
    width = max(len(p) for p in prompts)
    pad = int(tokenizer.pad_token_id)
    stop_set = set(_stop_ids(loaded))
    stop = torch.tensor(sorted(stop_set), device=device)
    limit = settings.max_new_tokens
    fed: dict[str, torch.Tensor] = {}

    def remember_ids(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        fed["content"] = ~torch.isin(args[0], stop)  # once per forward pass, not once per captured layer

    def mask(start: int, n: int) -> torch.Tensor:
        positions = torch.arange(start, start + n, device=device)
        inside = (positions >= width) & (positions < width + limit)
        return inside[None, :] & fed["content"]

    capture = Capture(mask=mask)
    decoder = Decoder(model, pad_id=pad)  # a static KV cache; finished rows are fed padding
    generator = torch.Generator().manual_seed(seed)

    def choose(index: int, logits: torch.Tensor) -> list[int]:
        return sample_rows(logits, temperature=settings.temperature, top_p=settings.top_p, generator=generator)

    hook = model.get_input_embeddings().register_forward_pre_hook(remember_ids)
    try:
        with intervene(model, capture, layers_path=loaded.info.layers_path):
            # one token past the limit tells a cut answer from one that ends there; that token is never fed
            rows = generate_rows(decoder, prompts, limit + 1, stop_ids=stop_set, choose=choose, feed_last=False)
    finally:
        hook.remove()
    records = []
    for row in rows:  # each row stops before its first stop id
        answer = row[:limit]
        records.append(
            {
                "tokens": answer,
                "n_tokens": len(answer),
                "truncated": len(row) > limit,
                "text": tokenizer.decode(answer, skip_special_tokens=True),
            }
        )
    counts = capture.count
    for record, count in zip(records, counts.tolist(), strict=True):
        if int(count) != record["n_tokens"]:
            raise PersonaSpaceError(f"captured {int(count)} positions for an answer of {record['n_tokens']} tokens")
    return capture.mean(), records


@dataclass
class WorkFolder:
    """Per-chunk results on disk: ``chunks/NNNNN.safetensors`` (means) + ``NNNNN.json`` (answers)."""

    root: Path
    info: dict[str, Any] = field(default_factory=dict)

    def open(self, key: str, model_fingerprint: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "chunks").mkdir(exist_ok=True)
        marker = self.root / "work.json"
        expected = {"generation_key": key, "model_fingerprint": model_fingerprint, "build_version": BUILD_VERSION}
        if marker.exists():
            try:
                found = json.loads(marker.read_text())
            except json.JSONDecodeError as exc:
                raise PersonaSpaceError(f"{marker} is corrupt; delete the work folder {self.root} to start over") from exc
            if found != expected:
                raise PersonaSpaceError(
                    f"work folder {self.root} holds answers made with other settings or another model ({found}); "
                    "use another --work folder or delete this one"
                )
        else:
            marker.write_text(json.dumps(expected))

    def paths(self, index: int) -> tuple[Path, Path]:
        return self.root / "chunks" / f"{index:05d}.safetensors", self.root / "chunks" / f"{index:05d}.json"

    def done(self, index: int) -> bool:
        return self.paths(index)[1].exists()

    def save(self, index: int, units: Sequence[Unit], means: torch.Tensor, records: list[dict[str, Any]]) -> None:
        from safetensors.torch import save_file

        tensor_path, json_path = self.paths(index)
        tmp = tensor_path.with_suffix(".tmp")
        save_file({"means": means.contiguous()}, str(tmp))
        os.replace(tmp, tensor_path)
        payload = {"units": [asdict(u) for u in units], "answers": records, "sha256": sha256_file(tensor_path)}
        tmp_json = json_path.with_suffix(".jtmp")
        tmp_json.write_text(json.dumps(payload, ensure_ascii=False))
        os.replace(tmp_json, json_path)  # the chunk counts as done only once this exists

    def load(self, index: int) -> tuple[list[Unit], torch.Tensor, list[dict[str, Any]]]:
        from safetensors.torch import load_file

        tensor_path, json_path = self.paths(index)
        payload = json.loads(json_path.read_text())
        if sha256_file(tensor_path) != payload["sha256"]:
            raise PersonaSpaceError(f"chunk file {tensor_path} is corrupt; delete {json_path} and rerun to regenerate it")
        return [Unit(**u) for u in payload["units"]], load_file(str(tensor_path))["means"], payload["answers"]


def _progress(total: int, desc: str, initial: int = 0) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="chunk", dynamic_ncols=True, mininterval=2.0)


def run_chunk(
    loaded: LoadedModel, units: Sequence[Unit], settings: BuildSettings, index: int
) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Chunk ``index`` of the plan: its answers and means, with the chunk's own seed. Every executor calls this."""
    return generate_chunk(loaded, units, settings, chunk_seed(settings.seed, index))


ChunkResult = tuple[int, torch.Tensor, list[dict[str, Any]]]


class ChunkExecutor(Protocol):
    """Runs chunks somewhere else (:mod:`backend.distributed`); yields ``(index, means, records)`` as chunks finish."""

    info: ModelInfo

    def run(self, chunks: dict[int, list[Unit]], settings: BuildSettings) -> Iterator[ChunkResult]: ...


def run_generation(
    loaded: LoadedModel | None,
    units: list[Unit],
    settings: BuildSettings,
    work: WorkFolder,
    shard: tuple[int, int] = (0, 1),
    executor: ChunkExecutor | None = None,
) -> int:
    """Generate and capture every chunk of this shard not yet in the work folder, in this process or on
    ``executor``; this process writes each finished chunk. Returns the number of chunks generated."""
    chunks = chunks_of(units, settings.batch_size)
    mine = [i for i in range(len(chunks)) if i % shard[1] == shard[0]]
    todo = {i: chunks[i] for i in mine if not work.done(i)}
    bar = _progress(len(mine), "generate+capture", initial=len(mine) - len(todo))
    if executor is not None:
        results = executor.run(todo, settings)
    else:
        assert loaded is not None, "run_generation needs a loaded model or an executor"
        results = ((i, *run_chunk(loaded, part, settings, i)) for i, part in todo.items())
    for index, means, records in results:
        work.save(index, chunks[index], means, records)
        bar.update(1)
    bar.close()
    return len(todo)


def collect(
    work: WorkFolder, units: list[Unit], settings: BuildSettings
) -> tuple[list[Unit], torch.Tensor, list[dict[str, Any]]]:
    """All chunks, in order; a missing chunk (an unfinished shard) is an error that says which."""
    chunks = chunks_of(units, settings.batch_size)
    missing = [i for i in range(len(chunks)) if not work.done(i)]
    if missing:
        raise PersonaSpaceError(
            f"{len(missing)} of {len(chunks)} chunks are not built yet (first: {missing[:5]}); run the missing shards"
        )
    all_units: list[Unit] = []
    means: list[torch.Tensor] = []
    records: list[dict[str, Any]] = []
    for i in range(len(chunks)):
        u, m, r = work.load(i)
        if u != chunks[i]:  # same roles, prompts and questions, word for word
            raise PersonaSpaceError(f"chunk {i} in {work.root} does not hold the answers this plan expects")
        all_units += u
        means.append(m)
        records += r
    return all_units, torch.cat(means), records


def make_judge(name: str, catalogue: Catalogue) -> Any:
    from backend.judge import EmbeddingJudge, NoJudge

    if name == "embedding":
        return EmbeddingJudge(catalogue.archetypes)
    if name == "none":
        return NoJudge()
    if name == "openai":
        from backend.llm_judge import OpenAIJudge

        return OpenAIJudge.from_env(catalogue.archetypes)
    raise PersonaSpaceError(f"unknown judge {name!r}; choose embedding, none or openai")


def run_judge(judge: Any, units: list[Unit], records: list[dict[str, Any]], work: WorkFolder) -> dict[str, tuple[int, str]]:
    """Scores of every role answer (defaults are not judged), cached in the work folder per judge."""
    identity = getattr(judge, "identity", judge.name)
    tag = hashlib.sha256(str(identity).encode()).hexdigest()[:10]
    path = work.root / f"judge-{judge.name}-{tag}.json"  # another judge model or setting gets its own cache
    cached: dict[str, list[Any]] = json.loads(path.read_text()) if path.exists() else {}
    todo = [
        (u, r)
        for u, r in zip(units, records, strict=True)
        if u.role != DEFAULT_ROLE and u.key not in cached and r["n_tokens"] > 0
    ]
    step = 256
    bar = _progress(len(todo), f"judge ({judge.name})")
    for start in range(0, len(todo), step):
        part = todo[start : start + step]
        scores = judge.score([u.role for u, _ in part], [r["text"] for _, r in part])
        for (u, _), s in zip(part, scores, strict=True):
            cached[u.key] = [s.score, s.reason]
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cached))
        os.replace(tmp, path)
        bar.update(len(part))
    bar.close()
    return {k: (int(v[0]), str(v[1])) for k, v in cached.items()}


PLAN_FILE = "plan.json"
MODEL_FIELDS = ("spec", "name", "fingerprint", "architecture", "n_layers", "hidden", "target_layer", "cap_window")


def record_plan(work: WorkFolder, settings: BuildSettings, info: dict[str, Any]) -> None:
    """What a rebuild needs besides the answers: the generation settings and the model's shape (no weights)."""
    payload = {"settings": asdict(settings), "model": {k: info[k] for k in MODEL_FIELDS}}
    tmp = work.root / (PLAN_FILE + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, work.root / PLAN_FILE)


def build(
    loaded: LoadedModel | None,
    catalogue: Catalogue,
    settings: BuildSettings,
    out: Path,
    work_root: Path,
    shard: tuple[int, int] = (0, 1),
    log: Callable[[str], None] = print,
    executor: ChunkExecutor | None = None,
) -> Path | None:
    """Run the build; returns the space's folder, or ``None`` when only a shard was built. With ``executor`` (Ray
    actors that hold the model) ``loaded`` may be ``None``: the executor describes the model."""
    started = time.time()
    info = executor.info if executor is not None else loaded.info if loaded is not None else None
    if info is None:
        raise PersonaSpaceError("build needs a loaded model or an executor that holds one")
    units = plan_units(catalogue, settings, info.name)
    work = WorkFolder(work_root)
    work.open(settings.generation_key(), info.fingerprint)
    record_plan(work, settings, info.to_dict())
    n_chunks = len(chunks_of(units, settings.batch_size))
    log(f"{len(units)} answers in {n_chunks} chunks of {settings.batch_size}; work folder {work_root}")
    if settings.generator == "hf":
        run_generation(loaded, units, settings, work, shard, executor)
    else:
        run_served_generation(loaded, units, settings, work, shard, executor=executor)
    if shard[1] > 1:
        log(f"shard {shard[0]}/{shard[1]} done; run the other shards into {work_root}, then build without --shard")
        return None
    return finish(work, catalogue, settings, info.to_dict(), units, out, started, log)


def finish(
    work: WorkFolder,
    catalogue: Catalogue,
    settings: BuildSettings,
    model: dict[str, Any],
    units: list[Unit],
    out: Path,
    started: float,
    log: Callable[[str], None],
) -> Path:
    units, means, records = collect(work, units, settings)
    settings = recorded_servers(settings, work)  # the served generator's model ids go into the manifest
    judge = make_judge(settings.judge, catalogue)
    scores = run_judge(judge, units, records, work)
    log(f"computing role vectors (recipe {settings.recipe}), axis, PCA, UMAP and thresholds")
    manifest, tensors = build_space(model, catalogue, settings, units, means, records, scores, started)
    path = write_space(out, manifest, tensors)
    c = manifest["counts"]
    log(f"wrote {path} ({c['roles_kept']} archetypes drawn, {c['roles_weak']} of them weak, {c['roles_dropped']} dropped)")
    return path


def rebuild(
    work_root: Path,
    catalogue: Catalogue,
    out: Path,
    log: Callable[[str], None] = print,
    **changes: Any,
) -> Path:
    """Recompute a space from a finished work folder with other space settings (``recipe``, ``min_in_role``,
    ``target_layer``, ``judge``, ...): no generation, no model. Gives the same space a fresh build with those
    settings gives."""
    started = time.time()
    work = WorkFolder(Path(work_root))
    plan = work.root / PLAN_FILE
    if not plan.exists():
        raise PersonaSpaceError(
            f"{work.root} has no {PLAN_FILE} (it was made by an older build); run the same `build` command once "
            "more on it: every chunk is done, so it only records the plan and computes the space"
        )
    payload = json.loads(plan.read_text())
    stored = dict(payload["settings"])
    stored["roles"] = tuple(stored["roles"]) if stored.get("roles") is not None else None
    stored["percentiles"] = tuple(stored["percentiles"])
    unknown = sorted(set(changes) - {f for f in stored if f not in GENERATION_FIELDS})
    if unknown:
        raise PersonaSpaceError(f"a rebuild cannot change {unknown}: they change the answers; run build instead")
    settings = BuildSettings(**{**stored, **changes})
    work.open(settings.generation_key(), payload["model"]["fingerprint"])
    units = plan_units(catalogue, settings, payload["model"]["name"])
    return finish(work, catalogue, settings, payload["model"], units, out, started, log)
