"""Choosing the next token from one row's logits: repetition penalty, then greedy or temperature + top-p.

The repetition penalty follows Hugging Face's ``RepetitionPenaltyLogitsProcessor``: the logit of every token id
already present is divided by ``penalty`` when positive and multiplied by it when negative (``penalty = 1`` is
off). Here "present" means **the tokens of the reply being generated**, not the whole context: the prompt holds the
chat template and the user's own words, which a reply should be free to repeat; what the penalty is for is a
small model looping over its own output.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from backend.errors import PersonaSpaceError

TOP_K_FAST = 256


def repetition_penalty(logits: torch.Tensor, previous: Sequence[int], penalty: float) -> torch.Tensor:
    """``logits`` ``(vocab,)`` with the ids in ``previous`` penalised (a new tensor; unchanged when ``penalty == 1``)."""
    if not 1.0 <= penalty <= 2.0:
        raise PersonaSpaceError(f"repetition_penalty must be in [1, 2], got {penalty!r}")
    if penalty == 1.0 or not previous:
        return logits
    ids = torch.tensor(sorted(set(previous)), dtype=torch.long, device=logits.device)
    scores = logits.gather(-1, ids)
    scores = torch.where(scores < 0, scores * penalty, scores / penalty)
    return logits.scatter(-1, ids, scores)


def choose_token(
    logits: torch.Tensor,
    *,
    greedy: bool,
    temperature: float,
    top_p: float,
    penalty: float = 1.0,
    previous: Sequence[int] = (),
    generator: torch.Generator | None = None,
) -> int:
    """One token id from ``logits`` ``(vocab,)``. Sampling runs on the CPU (where the seeded generator lives),
    so one seed draws the same token on any device."""
    scores = repetition_penalty(logits.float(), previous, penalty)
    if greedy:
        return int(torch.argmax(scores))
    probs = torch.softmax(scores.cpu() / temperature, dim=-1)
    return int(nucleus(probs.unsqueeze(0), top_p, generator)[0])


def sample_rows(logits: torch.Tensor, *, temperature: float, top_p: float, generator: torch.Generator) -> list[int]:
    """One token id per row of ``logits`` ``(rows, vocab)`` by temperature + top-p, drawn on the CPU from
    ``generator`` (a batch's draws depend only on its logits and the generator's state). Softmax and the top 256
    are taken where the logits are (a GPU's), so usually only ``(rows, 256)`` crosses to the CPU."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    top, order = torch.topk(probs, min(TOP_K_FAST, probs.shape[-1]), dim=-1)
    if top.shape[-1] < probs.shape[-1] and bool((top.sum(-1) < top_p).any()):  # a wider nucleus: the whole rows
        return nucleus(probs.cpu(), top_p, generator).tolist()
    return _draw(top.cpu(), order.cpu(), top_p, generator).tolist()


def nucleus(probs: torch.Tensor, top_p: float, generator: torch.Generator | None) -> torch.Tensor:
    """Top-p sampling from probabilities ``(rows, vocab)``: the smallest prefix of each row's sorted order holding
    ``top_p`` of the mass (the top token always), renormalised. Returns ``(rows,)`` token ids."""
    # The nucleus is a prefix of the sorted order: when the top 256 already hold top_p of the mass it lies among
    # them, and sorting the whole vocabulary (the slowest part of a step on a CPU) is not needed.
    sorted_probs, order = torch.topk(probs, min(TOP_K_FAST, probs.shape[-1]), dim=-1)
    if sorted_probs.shape[-1] < probs.shape[-1] and bool((sorted_probs.sum(-1) < top_p).any()):
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
    return _draw(sorted_probs, order, top_p, generator)


def _draw(sorted_probs: torch.Tensor, order: torch.Tensor, top_p: float, generator: torch.Generator | None) -> torch.Tensor:
    """One draw per row from a prefix of its probabilities sorted in descending order (``order``: their ids)."""
    keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < top_p
    sorted_probs = torch.where(keep, sorted_probs, torch.zeros_like(sorted_probs))
    choice = torch.multinomial(sorted_probs / sorted_probs.sum(-1, keepdim=True), 1, generator=generator)
    return order.gather(-1, choice).squeeze(-1)
