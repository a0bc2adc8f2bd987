"""Placing a new activation (a conversation turn) into a built persona space.

PCA coordinates come straight from the stored components; UMAP coordinates through ``transform`` of a UMAP
refitted, with the stored settings and seed, on the stored role vectors (no pickles are ever read). The refit is
checked against the stored layout. Nearest archetypes are by cosine similarity at the target layer.

The refit and numba's compilation take most of a worker's start-up, so ``warm_up`` runs them in a background thread:
the worker is ready to stream tokens at once, and a turn's placement waits for the map only if it is still being built.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np
import torch

from backend.errors import SpaceError
from backend.maths.axis import project
from backend.store.space import Space

log = logging.getLogger("persona_space.worker")


class Placement:
    def __init__(self, space: Space) -> None:
        self.space = space
        t = space.tensors
        self.layer = space.target_layer
        self.roles = space.roles
        self.role_vectors = t["role_vectors"][:, self.layer].double()
        self.role_units = self.role_vectors / self.role_vectors.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        self.axis = t["axis"]
        self._reducers: dict[int, Any] = {}
        self._lock = threading.Lock()
        self.umap_max_error: dict[int, float] = {}
        self._warming: threading.Thread | None = None

    def warm_up(self, dims: tuple[int, ...] = (2, 3)) -> threading.Thread:
        """Refit the UMAPs in the background (an optimisation: ``reducer`` builds one on first use otherwise)."""

        def run() -> None:
            for dim in dims:
                try:
                    self.reducer(dim)
                except Exception:  # placement retries on use and reports the error with the turn
                    log.exception("UMAP %dD warm-up failed", dim)

        self._warming = threading.Thread(target=run, name="umap-warm-up", daemon=True)
        self._warming.start()
        return self._warming

    def wait(self, timeout: float | None = None) -> None:
        """Until the background refit (if any) has finished."""
        if self._warming is not None:
            self._warming.join(timeout)

    @property
    def phase(self) -> str:
        """``building the map`` while the UMAP warm-up runs, ``ready`` after."""
        return "building the map" if self._warming is not None and self._warming.is_alive() else "ready"

    def pca(self, vector: torch.Tensor, layer: int | None = None, k: int = 3) -> list[float]:
        layer = self.layer if layer is None else layer
        mean = self.space.tensors["pca_mean"][layer].double()
        comps = self.space.tensors["pca_components"][layer, :k].double()
        return ((vector.double() - mean) @ comps.T).tolist()

    def nearest(self, vector: torch.Tensor, k: int = 5) -> list[dict[str, Any]]:
        v = vector.double()
        cos = self.role_units @ (v / v.norm().clamp_min(1e-12))
        order = torch.argsort(cos, descending=True)[:k].tolist()
        return [{"name": self.roles[i], "cosine": round(float(cos[i]), 4)} for i in order]

    def reducer(self, dim: int) -> Any:
        """The UMAP of ``dim`` components, refitted once per process (takes seconds the first time)."""
        with self._lock:
            if dim not in self._reducers:
                from backend.maths.umap_layout import fit_umap

                settings = self.space.manifest.get("umap", {})
                x = self.role_vectors.numpy()
                reducer = fit_umap(x, dim, int(settings.get("n_neighbors", 15)), int(settings.get("random_state", 0)))
                stored = self.space.tensors.get(f"umap_{dim}d")
                if stored is None:
                    raise SpaceError(f"the space has no umap_{dim}d layout")
                self.umap_max_error[dim] = float(np.abs(np.asarray(reducer.embedding_) - stored.numpy()).max())
                reducer.transform(x[:1])  # compile the transform path now, not during a turn
                self._reducers[dim] = reducer
            return self._reducers[dim]

    def umap(self, vector: torch.Tensor, dim: int) -> list[float]:
        out = self.reducer(dim).transform(vector.double().numpy()[None])
        return [float(x) for x in np.asarray(out)[0]]

    def place(self, vector: torch.Tensor) -> dict[str, Any]:
        """Everything the UI draws for one activation ``(d,)`` at the target layer."""
        return {
            "layer": self.layer,
            "projection": float(project(vector.float(), self.axis[self.layer])),
            "pca": self.pca(vector),
            "umap_2d": self.umap(vector, 2),
            "umap_3d": self.umap(vector, 3),
            "nearest": self.nearest(vector),
        }
