"""How degenerate a reply is, from its token ids: a small model under pressure often loops ("I am a mortal, and I am a
mortal, ..."), and a cap can make replies more fluent or make them repeat; both must show in the figures.

* ``repetition``: the share of the reply's 4-grams that already occurred earlier in it (0 = none repeats; a reply
  that loops one phrase tends to 1). Replies shorter than 5 tokens have no repeated 4-gram: 0.
* ``distinct2``: distinct bigrams over all bigrams (1 = no bigram repeats; low = repetitive). ``None`` below 2 tokens.
"""

from __future__ import annotations

from collections.abc import Sequence


def repetition(tokens: Sequence[int], n: int = 4) -> float:
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    if not grams:
        return 0.0
    seen: set[tuple[int, ...]] = set()
    repeats = 0
    for g in grams:
        repeats += g in seen
        seen.add(g)
    return repeats / len(grams)


def distinct2(tokens: Sequence[int]) -> float | None:
    grams = [tuple(tokens[i : i + 2]) for i in range(len(tokens) - 1)]
    return len(set(grams)) / len(grams) if grams else None
