"""The release's capping config as cap presets on this package's scale (floors on the Assistant axis).

Capping-config sign convention. The paper's code caps from above on the **normalised stored vector**:
``v̂ = v / |v|``, ``h <- h - v̂ · max(h·v̂ - cap, 0)``, so ``cap`` bounds the scalar projection on ``v̂`` whatever
``|v|`` is. The released vectors are ``role - default`` (= ``-axis``, so ``v̂ ≈ -â``) with negative caps. With
``h·v̂ = -h·â`` the upper bound ``h·v̂ <= cap`` is the floor ``h·â >= -cap``: the same cap as this package's
:func:`backend.maths.edits.cap_floor` with ``τ_L = -cap``. On import each intervention's ``sign_cosine = cos(v, -axis[L])``
(our axis) is checked: ``≈ +1`` is the released convention and gives ``τ_L = -cap``. A config whose vectors point
along ``+axis`` (``sign_cosine ≈ -1``, "flipped", as tools that store the axis itself write) is converted at the
same level on the Assistant axis, ``τ_L = +cap`` (in general ``τ_L = -sign(sign_cosine) · cap``), and reported as
flipped; capping in this package is always the paper's floor. An intervention whose ``|sign_cosine|`` is below
:data:`ALIGNED_MIN` is not along our axis, so its experiment is skipped and reported, not converted.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch

from backend.build.paper_files import CAPPING_FILE
from backend.errors import SpaceError

# |cos(v, -axis)| below this means a capping vector is not along our axis at all: its experiment is skipped.
ALIGNED_MIN = 0.9

_EXPERIMENT_ID = re.compile(r"^layers_(\d+):(\d+)-p(\d+(?:\.\d*)?|\.\d+)$")


def cosine_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row cosine of ``(..., d)`` tensors in float64 (0 where either is zero)."""
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1, eps=1e-30)


def released_percentile(q: float) -> float:
    """The Assistant-axis percentile of a released ``p<q>``: ``q`` is stated along the *negated* axis, as a
    fraction when ``q <= 1`` (``p0.25`` -> 75) and as a percent otherwise (``p25`` -> 75)."""
    return round(100.0 * (1.0 - q) if q <= 1 else 100.0 - q, 6)


def parse_capping_config(
    config: Any, axis: torch.Tensor, name: str = CAPPING_FILE
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """Cap presets on this package's scale from a released capping config.

    Args:
        config: the loaded ``capping_config.pt`` (see the module docstring).
        axis: our axis ``(L, d)`` (toward the Assistant); thresholds are floors on the projection on its unit.
        name: the file's name, for messages.

    Returns:
        ``(presets, skipped, warnings)``. Each preset is ``{"id", "layers": [a, b), "percentile"`` (Assistant-axis
        percentile, ``None`` if the id does not say), ``"released_quantile"``, ``"thresholds": {str(layer): τ}``,
        ``"caps": {str(layer): cap}``, ``"sign_cosine"`` (mean of ``cos(v, -axis[L])``), ``"sign_cosines":
        {str(layer): cos}``, ``"flipped"`` (any ``cos < 0``)``}`` with ``τ_L = -sign(cos) · cap``. ``skipped``
        lists ``{"id", "reason"}``.
    """
    n_layers, hidden = axis.shape
    if (
        not isinstance(config, dict)
        or not isinstance(config.get("vectors"), dict)
        or not isinstance(config.get("experiments"), list)
    ):
        raise SpaceError(f"{name} is not a capping config: expected a dict with 'vectors' (dict) and 'experiments' (list)")
    vectors: dict[Any, Any] = config["vectors"]
    presets: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    warnings: list[str] = []
    for index, experiment in enumerate(config["experiments"]):
        if not isinstance(experiment, dict) or not isinstance(experiment.get("interventions"), list):
            raise SpaceError(f"{name}: experiment {index} is not a dict with an 'interventions' list")
        exp_id = str(experiment.get("id", f"experiment_{index}"))
        if not experiment["interventions"]:
            skipped.append({"id": exp_id, "reason": "no interventions"})
            continue
        caps: dict[int, float] = {}
        cosines: dict[int, float] = {}
        for item in experiment["interventions"]:
            if not isinstance(item, dict) or "vector" not in item or "cap" not in item:
                raise SpaceError(f"{name}: an intervention of {exp_id!r} is not a dict with 'vector' and 'cap'")
            key = item["vector"]
            entry = vectors.get(key) if isinstance(key, (str, int)) else None
            if not isinstance(entry, dict) or not isinstance(entry.get("vector"), torch.Tensor) or "layer" not in entry:
                raise SpaceError(f"{name}: {exp_id!r} uses vector {key!r}, which is missing or not {{vector, layer}}")
            try:
                layer = int(entry["layer"])
                cap = float(item["cap"])
            except (TypeError, ValueError, RuntimeError) as exc:
                raise SpaceError(f"{name}: {exp_id!r} / {key!r} has a non-numeric layer or cap") from exc
            vector = entry["vector"].detach().to(torch.float32).flatten()
            if not 0 <= layer < n_layers:
                raise SpaceError(f"{name}: vector {key!r} is at layer {layer}, outside the model's {n_layers} layers")
            if vector.numel() != hidden:
                raise SpaceError(f"{name}: vector {key!r} has {vector.numel()} values, the model's hidden size is {hidden}")
            if not math.isfinite(cap) or not bool(torch.isfinite(vector).all()) or float(vector.norm()) == 0.0:
                raise SpaceError(f"{name}: {exp_id!r} / {key!r} has a non-finite cap, a non-finite or a zero vector")
            if layer in caps and caps[layer] != cap:
                raise SpaceError(f"{name}: {exp_id!r} caps layer {layer} twice, at {caps[layer]} and {cap}")
            label = re.match(r"^layer_(\d+)(?:/|$)", str(key))
            if label and int(label.group(1)) != layer:
                warnings.append(f"{name}: vector {key!r} is named for layer {label.group(1)} but says layer {layer}")
            caps[layer] = cap
            cosines[layer] = float(cosine_rows(vector, -axis[layer]))
        match = _EXPERIMENT_ID.match(exp_id)
        if match:
            window = [int(match.group(1)), int(match.group(2))]
            quantile: float | None = float(match.group(3))
        else:
            window = [min(caps), max(caps) + 1]
            quantile = None
            warnings.append(f"{name}: experiment id {exp_id!r} is not 'layers_<a>:<b>-p<q>'; window taken from its layers")
        outside = sorted(layer for layer in caps if not window[0] <= layer < window[1])
        if outside:
            warnings.append(f"{name}: {exp_id!r} caps layers {outside}, outside its window [{window[0]}, {window[1]})")
        weak = {layer: c for layer, c in cosines.items() if abs(c) < ALIGNED_MIN}
        if weak:
            worst = min(weak, key=lambda layer: abs(weak[layer]))
            skipped.append(
                {
                    "id": exp_id,
                    "reason": f"its vector at layer {worst} has cosine {weak[worst]:.3f} with -axis: not along the "
                    f"Assistant axis (|cos| < {ALIGNED_MIN}), so its caps cannot be converted",
                }
            )
            continue
        flipped = sorted(layer for layer, c in cosines.items() if c < 0)
        if flipped:
            warnings.append(
                f"{name}: {exp_id!r} has vectors along +axis (cos with -axis ≈ -1) at layers {flipped}, the opposite of "
                "the paper's 'role - default' convention; converted as floors at the same level (τ = +cap there)"
            )
        layers = sorted(caps)
        values = [cosines[layer] for layer in layers]
        presets.append(
            {
                "id": exp_id,
                "layers": window,
                "percentile": released_percentile(quantile) if quantile is not None else None,
                "released_quantile": quantile,
                "thresholds": {str(layer): (-caps[layer] if cosines[layer] > 0 else caps[layer]) for layer in layers},
                "caps": {str(layer): caps[layer] for layer in layers},
                "sign_cosine": sum(values) / len(values),
                "sign_cosines": {str(layer): cosines[layer] for layer in layers},
                "flipped": bool(flipped),
            }
        )
    return presets, skipped, warnings
