"""The paper's released trait vectors as a space's traits: the ``trait_set`` manifest field that goes with the
``trait_vectors`` tensor (the structure ``build-traits`` writes, see :mod:`backend.store.traits`).

The release gives a name (the file stem) and an ``(L, d)`` vector per trait, nothing else. Each entry takes its
``description`` and ``opposite`` from our trait catalogue when the name is there (``in_catalogue: true``), else empty
strings; every trait is kept and none is weak (there are no judged answers to call it weak by). The field's
``settings`` say ``source: paper``; ``judge`` is None and the answer counts are absent (nothing was generated).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from backend.catalogue.traits import load_traits

SOURCE = "paper"


def paper_trait_set(names: Sequence[str], folder: str, files: str) -> dict[str, Any]:
    """The ``trait_set`` for released traits ``names`` (in the order of the tensor's rows), read from ``files``
    (e.g. ``trait_vectors/<trait>.pt``) of the release ``folder``."""
    catalogue = {t.name: t for t in load_traits()}
    entries: list[dict[str, Any]] = []
    for name in names:
        known = catalogue.get(name)
        entries.append(
            {
                "name": name,
                "description": known.description if known else "",
                "opposite": known.opposite if known else "",
                "in_catalogue": known is not None,
                "kept": True,
                "weak": False,
            }
        )
    return {
        "traits": entries,
        "kept_order": list(names),
        "judge": None,
        "counts": {
            "traits_kept": len(entries),
            "traits_weak": 0,
            "traits_dropped": 0,
            "in_catalogue": sum(1 for e in entries if e["in_catalogue"]),
        },
        "settings": {"source": SOURCE, "folder": folder, "files": files},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
