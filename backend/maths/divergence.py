"""Next-token KL between two models' logits: the cost of an intervention on ordinary text."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def kl_per_position(reference_logits: torch.Tensor, other_logits: torch.Tensor) -> torch.Tensor:
    """``KL(p_reference || p_other)`` per position, in nats: logits ``(..., vocab)`` -> ``(...)``, float64."""
    import torch

    if reference_logits.shape != other_logits.shape:
        raise ValueError(f"logits differ in shape: {tuple(reference_logits.shape)} vs {tuple(other_logits.shape)}")
    ref = torch.log_softmax(reference_logits.double(), dim=-1)
    oth = torch.log_softmax(other_logits.double(), dim=-1)
    return (ref.exp() * (ref - oth)).sum(dim=-1).clamp_min(0.0)
