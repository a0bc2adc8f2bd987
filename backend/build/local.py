"""In-process generation of a build's chunks on the decode engine, capturing as it generates.

A chunk is generated in one batch (left padding) with its own seed, and the residual stream is captured during
generation: the per-answer mean over the answer's own content tokens (no template, system or user tokens, no EOS),
at every layer. Chunks run in this process or on a :class:`ChunkExecutor` (Ray actors, :mod:`backend.cluster`), and
this process writes every one of them.

Generation runs on the decode engine (:mod:`backend.decode.engine`: a static KV cache, finished rows fed padding) and
samples with temperature + top-p from a generator seeded by the chunk's seed
(:func:`backend.maths.sampling.sample_rows`), so a chunk's answers do not depend on any global random state. Each
kept token is fed back through the model, so its activation exists; one token past ``max_new_tokens`` is drawn
(never fed) to tell a cut answer from one that ends exactly there.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import torch

from backend.build.plan import Unit, chunk_seed, chunks_of
from backend.build.settings import BuildSettings
from backend.build.workfolder import WorkFolder, progress
from backend.decode.engine import Decoder, generate_rows
from backend.decode.generate import eos_ids
from backend.errors import PersonaSpaceError
from backend.hooks.interventions import intervene
from backend.hooks.readers import Capture
from backend.maths.sampling import sample_rows
from backend.models.chat import encode_prompt
from backend.models.loading import LoadedModel, ModelInfo


def stop_ids(loaded: LoadedModel) -> list[int]:
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
    stop_set = set(stop_ids(loaded))
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


def run_chunk(
    loaded: LoadedModel, units: Sequence[Unit], settings: BuildSettings, index: int
) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Chunk ``index`` of the plan: its answers and means, with the chunk's own seed. Every executor calls this."""
    return generate_chunk(loaded, units, settings, chunk_seed(settings.seed, index))


ChunkResult = tuple[int, torch.Tensor, list[dict[str, Any]]]


class ChunkExecutor(Protocol):
    """Runs chunks somewhere else (:mod:`backend.cluster`); yields ``(index, means, records)`` as chunks finish."""

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
    bar = progress(len(mine), "generate+capture", initial=len(mine) - len(todo))
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
