"""Persona Space's backend: persona spaces and the Assistant Axis of a language model.

The public API, importable from here (each name is imported on first use, so ``import backend`` stays light and the
torch-free UI can import :mod:`backend.view` without pulling in torch)::

    from backend import Cap, Monitor, generate_reply, intervene, load_model, load_space

The packages, from the command line down to the pure math (imports run one way; ``make lint`` checks it):
``cli``, ``evaluation``, ``worker`` / ``cluster``, ``build``, ``reading``, ``judges``, ``decode``, ``hooks``, ``models``,
``kernels``, ``store``, ``openai_client``, ``catalogue``, ``view``, ``maths``, ``errors``.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> module that defines it
_PUBLIC = {
    "load_model": "backend.models.loading",
    "LoadedModel": "backend.models.loading",
    "load_space": "backend.store.space",
    "Space": "backend.store.space",
    "Cap": "backend.hooks.interventions",
    "Steer": "backend.hooks.interventions",
    "Monitor": "backend.hooks.readers",
    "Capture": "backend.hooks.readers",
    "intervene": "backend.hooks.interventions",
    "attach": "backend.hooks.interventions",
    "RowControls": "backend.hooks.rows",
    "generate_reply": "backend.decode.generate",
    "Sampling": "backend.decode.generate",
    "compute_axis": "backend.maths.axis",
    "project": "backend.maths.axis",
    "cap_floor": "backend.maths.edits",
    "steer": "backend.maths.edits",
    "steering_vector": "backend.maths.edits",
    "PersonaSpaceError": "backend.errors",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'backend' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
