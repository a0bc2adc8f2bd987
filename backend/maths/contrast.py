"""Contrast vectors (trait vectors): mean of the answers that express a trait minus mean of those that do not.

Pure math on per-answer mean activations ``(N, L, d)``; no model, no files. Each answer belongs to one trait, was
made under the trait's instruction (*positive*) or its opposite's (*negative*), and has an expression score
(0-100, or :data:`EMPTY` for an answer with no token). A trait's vector is

    mean(positives scoring >= threshold) - mean(negatives scoring < threshold)

(the answers that did what their instruction asked), so it points from the opposite toward the trait. A trait is
*weak* when either side has fewer than ``min_kept`` such answers: its vector then comes from every non-empty answer
of each side (like a weak archetype, it is kept and marked); it is *dropped* when a side has no non-empty answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

EMPTY = -1


@dataclass(frozen=True)
class Contrasted:
    """One answer as the contrast sees it."""

    trait: str
    positive: bool
    score: int  # 0..100, EMPTY when the answer has no token


@dataclass
class ContrastVectors:
    names: list[str]  # traits with a vector, in the order asked for
    vectors: torch.Tensor  # (T, L, d): trait minus opposite
    weak: list[bool]
    kept: dict[str, tuple[int, int]]  # trait -> (expressing positives, non-expressing negatives), every asked trait
    dropped: dict[str, str]  # trait -> why it has no vector


def contrast_vectors(
    answers: Sequence[Contrasted], means: torch.Tensor, traits: Sequence[str], threshold: int, min_kept: int
) -> ContrastVectors:
    if len(answers) != means.shape[0]:
        raise ValueError(f"{len(answers)} answers but {means.shape[0]} activation means")
    x = means.double()
    by_trait: dict[str, list[int]] = {}
    for i, a in enumerate(answers):
        by_trait.setdefault(a.trait, []).append(i)
    names: list[str] = []
    vectors: list[torch.Tensor] = []
    weak: list[bool] = []
    kept: dict[str, tuple[int, int]] = {}
    dropped: dict[str, str] = {}
    for name in traits:
        idx = by_trait.get(name, [])
        pos = [i for i in idx if answers[i].positive and answers[i].score != EMPTY]
        neg = [i for i in idx if not answers[i].positive and answers[i].score != EMPTY]
        good_pos = [i for i in pos if answers[i].score >= threshold]
        good_neg = [i for i in neg if answers[i].score < threshold]
        kept[name] = (len(good_pos), len(good_neg))
        if not pos or not neg:
            side = "trait" if not pos else "opposite"
            dropped[name] = f"no non-empty answer under the {side} instructions"
            continue
        is_weak = min(len(good_pos), len(good_neg)) < min_kept
        plus, minus = (pos, neg) if is_weak else (good_pos, good_neg)
        names.append(name)
        vectors.append(x[plus].mean(0) - x[minus].mean(0))
        weak.append(is_weak)
    shape = (0, *means.shape[1:])
    return ContrastVectors(
        names=names,
        vectors=torch.stack(vectors).float() if vectors else torch.zeros(shape),
        weak=weak,
        kept=kept,
        dropped=dropped,
    )


def cosines(vectors: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """Cosine of each row of ``vectors`` ``(T, d)`` with ``direction`` ``(d,)`` (0 for a zero row)."""
    v, u = vectors.double(), direction.double()
    norms = v.norm(dim=-1) * u.norm()
    return torch.where(norms > 0, (v @ u) / norms.clamp_min(1e-300), torch.zeros_like(norms)).float()
