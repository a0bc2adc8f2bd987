"""A UMAP layout of role vectors (cosine metric, fixed seed); ``umap`` is imported where it is used."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from backend.errors import PersonaSpaceError

if TYPE_CHECKING:
    pass


def fit_umap(vectors: np.ndarray, n_components: int, neighbors: int, seed: int) -> Any:
    try:
        import umap
    except ImportError as exc:  # pragma: no cover
        raise PersonaSpaceError("UMAP layouts need: pip install umap-learn") from exc
    reducer = umap.UMAP(
        n_components=n_components, n_neighbors=max(2, min(neighbors, len(vectors) - 1)), metric="cosine", random_state=seed, n_jobs=1,
        init="random" if len(vectors) <= n_components + 1 else "spectral",
    )  # fmt: skip
    reducer.fit(vectors)
    return reducer
