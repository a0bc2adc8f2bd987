"""Capture by a teacher-forced pass: the loaded model reads prompt + answer once; the answer tokens' mean per layer.

This is the capture of answers generated elsewhere (a serving engine), and the reference that capture during
in-process generation is tested against: both average the same positions of the same token sequence.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from backend.hooks.interventions import intervene
from backend.hooks.readers import Capture
from backend.models.chat import encode_prompt
from backend.models.loading import LoadedModel


class Prompted(Protocol):
    """What a teacher-forced pass needs of an answer's plan: its system prompt and question."""

    @property
    def system(self) -> str | None: ...

    @property
    def text(self) -> str: ...


@torch.inference_mode()
def teacher_forced_means(loaded: LoadedModel, units: Sequence[Prompted], answers: Sequence[Sequence[int]]) -> torch.Tensor:
    """One teacher-forced pass over prompt + answer, mean over the answer tokens -> ``(B, L, d)`` float32.

    Rows are left-padded to one width with explicit position ids, so each row reads as it would alone. An empty
    answer gives a zero mean (as in capture during generation).
    """
    model, tokenizer = loaded.model, loaded.tokenizer
    device = next(model.parameters()).device
    seqs, spans = [], []
    for unit, answer in zip(units, answers, strict=True):
        prompt = encode_prompt(tokenizer, unit.system, [{"role": "user", "content": unit.text}])
        seqs.append(prompt + list(answer))
        spans.append((len(prompt), len(prompt) + len(answer)))
    width = max(len(s) for s in seqs)
    pad = int(tokenizer.pad_token_id)
    ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs], device=device)
    attention = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=device)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    for row, (seq, (a, b)) in enumerate(zip(seqs, spans, strict=True)):
        offset = width - len(seq)
        mask[row, offset + a : offset + b] = True
    positions = (attention.cumsum(1) - 1).clamp_min(0)
    capture = Capture(mask=mask)
    with intervene(model, capture, layers_path=loaded.info.layers_path):
        model(input_ids=ids, attention_mask=attention, position_ids=positions)
    return capture.mean()
