"""Symmetric int8 storage of vectors: each vector (the last axis) keeps its own float32 scale, its largest absolute
value over 127. A vector ``v`` is stored as ``q = round(v / scale)`` in int8 and read back as ``q * scale``: every
component is within ``scale / 2`` of its value, so the cosine of a stored vector with its original is at least
``1 - d / (8 * 127**2)`` relative to a vector whose components are all at the largest magnitude, and in practice
above 0.9999 for activation directions. An all-zero vector is stored with scale 0 and read back as zeros."""

from __future__ import annotations

import torch

LEVELS = 127


def quantize_int8(vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q, scale)``: ``q`` int8 of ``vectors``' shape, ``scale`` float32 of its shape without the last axis."""
    v = vectors.detach().float()
    scale = v.abs().amax(dim=-1) / LEVELS
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(v / safe.unsqueeze(-1)).clamp(-LEVELS, LEVELS).to(torch.int8)
    return q, scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The float32 vectors ``q * scale`` (see :func:`quantize_int8`)."""
    return q.float() * scale.float().unsqueeze(-1)
