"""Chat generation on a loaded model, with token-id streaming and a stop event.

Generation runs through ``model.generate``; hooks attached with :mod:`backend.interventions` apply to every
forward step. The ``on_token`` callback receives token ids (not words), so callers can pair each token with
the per-token readings of monitors and caps.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from backend.chat import Message, encode_prompt
from backend.errors import PersonaSpaceError
from backend.models import LoadedModel


@dataclass(frozen=True)
class Sampling:
    """Decoding settings. ``greedy`` ignores temperature and top-p; ``seed`` makes sampling repeatable."""

    max_new_tokens: int = 128
    greedy: bool = True
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or not 1 <= self.max_new_tokens <= 8192:
            raise PersonaSpaceError(f"max_new_tokens must be an integer in 1..8192, got {self.max_new_tokens!r}")
        if not self.greedy:
            if not (isinstance(self.temperature, (int, float)) and 0 < self.temperature <= 5):
                raise PersonaSpaceError(f"temperature must be in (0, 5], got {self.temperature!r}")
            if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
                raise PersonaSpaceError(f"top_p must be in (0, 1], got {self.top_p!r}")


class _TokenStreamer:
    """A ``BaseStreamer`` that passes generated token ids (not whole words) to a callback."""

    def __init__(self, on_token: Callable[[int], None]) -> None:
        self.on_token = on_token
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate() first sends the prompt
            self.prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            self.on_token(int(token))

    def end(self) -> None:
        pass


def _stop_criterion(stop: threading.Event) -> Any:
    from transformers import StoppingCriteria

    class _Stop(StoppingCriteria):
        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
            done = torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool, device=input_ids.device)
            return done  # type: ignore[return-value]

    return _Stop()


def generation_kwargs(loaded: LoadedModel, sampling: Sampling) -> dict[str, Any]:
    tokenizer = loaded.tokenizer
    kwargs: dict[str, Any] = {
        "max_new_tokens": sampling.max_new_tokens,
        "pad_token_id": tokenizer.pad_token_id,
        "do_sample": not sampling.greedy,
    }
    if sampling.greedy:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    else:
        kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
    return kwargs


@torch.inference_mode()
def generate_reply(
    loaded: LoadedModel,
    turns: Sequence[Message],
    *,
    system: str | None = None,
    sampling: Sampling | None = None,
    on_token: Callable[[int], None] | None = None,
    stop: threading.Event | None = None,
) -> tuple[list[int], list[int]]:
    """Generate the next assistant turn. Returns ``(prompt_ids, new_ids)``; ``new_ids`` ends at EOS (excluded)."""
    sampling = sampling or Sampling()
    prompt = encode_prompt(loaded.tokenizer, system, turns)
    device = next(loaded.model.parameters()).device
    input_ids = torch.tensor([prompt], device=device)
    kwargs = generation_kwargs(loaded, sampling)
    if on_token is not None:
        kwargs["streamer"] = _TokenStreamer(on_token)
    if stop is not None:
        kwargs["stopping_criteria"] = [_stop_criterion(stop)]
    if sampling.seed is not None:
        torch.manual_seed(sampling.seed)
    out = loaded.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)
    new = out[0, len(prompt) :].tolist()
    eos = eos_ids(loaded)
    for i, token in enumerate(new):
        if token in eos:
            new = new[:i]
            break
    return prompt, new


def eos_ids(loaded: LoadedModel) -> set[int]:
    """The token ids that end a reply: the generation config's and the tokenizer's EOS ids."""
    ids: set[int] = set()
    for source in (loaded.model.generation_config, loaded.tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids
