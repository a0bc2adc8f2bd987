"""One typed table of per-model settings, with a fallback inferred from the layer count.

Numbers are the paper's (METHOD.md): the target layer for projection and plots sits about the middle; the cap
window covers about 70-89% of depth. Windows are half-open ``[start, stop)``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSettings:
    target_layer: int
    cap_window: tuple[int, int]
    source: str  # "table" or "inferred"


# (model_type, n_layers) -> (target layer, cap window). Only settings the paper reports.
_TABLE: dict[tuple[str, int], tuple[int, tuple[int, int]]] = {
    ("gemma2", 46): (22, (32, 41)),  # Gemma 2 27B: target 22 of 46 (cap window inferred at ~70-89% depth)
    ("qwen3", 64): (32, (46, 54)),  # Qwen 3 32B: target 32, cap layers 46-53
    ("llama", 80): (40, (56, 72)),  # Llama 3.3 70B: target 40, cap layers 56-71
}


def default_cap_window(n_layers: int) -> tuple[int, int]:
    """About 70-89% of depth, at least one layer: ``[int(0.7 n), int(0.9 n))``."""
    start = min(int(0.7 * n_layers), n_layers - 1)
    stop = max(start + 1, min(int(0.9 * n_layers), n_layers))
    return start, stop


def settings_for(model_type: str, n_layers: int) -> ModelSettings:
    """Settings for a model family and depth; unknown models get ``n_layers // 2`` and the default window."""
    if n_layers < 1:
        raise ValueError(f"a model needs at least one layer, got {n_layers}")
    entry = _TABLE.get((model_type, n_layers))
    if entry is not None:
        return ModelSettings(target_layer=entry[0], cap_window=entry[1], source="table")
    return ModelSettings(target_layer=n_layers // 2, cap_window=default_cap_window(n_layers), source="inferred")
