"""Chat generation on a loaded model, with token-id streaming and a stop event.

Generation runs on the one decode engine (:mod:`backend.decode.engine`: a static KV cache, one row); hooks attached
with :mod:`backend.hooks.interventions` apply to every forward step. The ``on_token`` callback receives token ids
(not words), so callers can pair each token with the per-token readings of monitors and caps. Hugging Face's
``generate`` is the oracle the tests hold this to.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from backend.decode.engine import Decoder, generate_rows
from backend.errors import PersonaSpaceError
from backend.maths.sampling import sample_rows
from backend.models.chat import Message, encode_prompt
from backend.models.loading import LoadedModel


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
    """Generate the next assistant turn on the decode engine. Returns ``(prompt_ids, new_ids)``; ``new_ids`` ends
    before EOS (excluded).

    One row on a static KV cache (:class:`backend.decode.engine.Decoder`); hooks attached to ``loaded.model`` (e.g.
    with :func:`backend.hooks.interventions.intervene`) apply to every forward pass: the prompt, then each new token
    that is fed back (the last one is not fed when the reply stops at ``max_new_tokens``). ``on_token`` receives
    each kept token id as it is chosen, before it is fed back. Sampled replies draw from a generator seeded with
    ``sampling.seed`` (the same seed gives the same reply, whatever else uses torch's global random state).
    """
    sampling = sampling or Sampling()
    prompt = encode_prompt(loaded.tokenizer, system, turns)
    eos = eos_ids(loaded)
    pad = loaded.tokenizer.pad_token_id
    decoder = Decoder(loaded.model, layers_path=loaded.info.layers_path, pad_id=int(pad) if pad is not None else 0)
    generator = torch.Generator()
    if sampling.seed is not None:
        generator.manual_seed(sampling.seed)
    else:
        generator.seed()

    def choose(index: int, logits: torch.Tensor) -> list[int]:
        if sampling.greedy:
            picked = [int(t) for t in logits.argmax(-1).tolist()]
        else:
            picked = sample_rows(logits, temperature=sampling.temperature, top_p=sampling.top_p, generator=generator)
        if on_token is not None and picked[0] not in eos:
            on_token(picked[0])
        return picked

    (new,) = generate_rows(
        decoder,
        [prompt],
        sampling.max_new_tokens,
        stop_ids=eos,
        choose=choose,
        feed_last=False,
        stop=stop.is_set if stop is not None else None,
    )
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
