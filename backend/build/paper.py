"""Import the paper's released vectors (Lu et al. 2026) as a persona space.

The release's files are read by :mod:`backend.build.paper_files` (its layout is described there) and its capping
config is converted by :mod:`backend.build.paper_caps` (with the sign convention); this module assembles the space.

Conventions (those of :mod:`backend.maths.axis`):

* The space stores **our recomputed axis** ``default - mean(roles)`` (what :func:`backend.build.assemble.assemble_space`
  computes), pointing toward the Assistant. The released axis is only compared with it: the per-layer cosine is
  reported (``axis_cosine``).
* The release has no per-answer activations, so the threshold pool is the role vectors, the trait vectors and the
  default vector projected on the unit axis (``pool: "role and trait vectors"``); its percentiles give the space's
  ``thresholds``. They are coarser than the paper's per-answer pool: prefer the released cap presets when present.
* ``activation_norm`` (the steering scale) is the mean norm of the role vectors per layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from backend.build.assemble import assemble_space
from backend.build.paper_caps import cosine_rows, parse_capping_config
from backend.build.paper_files import (
    AXIS_FILE,
    CAPPING_FILE,
    DEFAULT_FILE,
    ROLE_DIR,
    TRAIT_DIR,
    load_axis,
    load_plain,
    matrix,
    rel_name,
    tensor_files,
)
from backend.build.paper_traits import paper_trait_set
from backend.errors import PersonaSpaceError, SpaceError
from backend.maths.axis import compute_axis, project
from backend.models.table import ModelSettings, settings_for
from backend.store.space import check_target, sha256_file, write_space
from backend.store.trait_check import TRAIT_FIELD, TRAIT_TENSOR

POOL = "role and trait vectors"
# The released axis should agree with default - mean(roles); below this minimum cosine the report warns.
AXIS_AGREEMENT_MIN = 0.99

# Released shapes (n_layers, hidden) -> (model_table family, the model's name).
KNOWN_SHAPES: dict[tuple[int, int], tuple[str, str]] = {
    (46, 4608): ("gemma2", "Gemma 2 27B"),
    (64, 5120): ("qwen3", "Qwen 3 32B"),
    (80, 8192): ("llama", "Llama 3.3 70B"),
}


def release_settings(n_layers: int, hidden: int) -> ModelSettings:
    """Target layer and cap window for a release of shape ``(n_layers, hidden)``: the paper's for its three
    models (Gemma 2 27B -> 22, Qwen 3 32B -> 32, Llama 3.3 70B -> 40), otherwise ``n_layers // 2``."""
    guess = KNOWN_SHAPES.get((n_layers, hidden))
    return settings_for(guess[0] if guess else "unknown", n_layers)


def import_paper_vectors(
    folder: str | Path,
    out: str | Path,
    *,
    model_name: str | None = None,
    target_layer: int | None = None,
    percentiles: Sequence[float] = (1, 25, 50, 75),
    seed: int = 0,
) -> tuple[Path, dict[str, Any]]:
    """Turn a folder of the paper's released vectors into a persona space at ``out``.

    Args:
        folder: the release folder for one model (see the module docstring for its layout).
        out: where to write the space: a new or empty folder, or a space (replaced atomically); anything else is
            refused (:func:`backend.store.space.check_target`).
        model_name: the model's spec and name in the manifest; the folder's name if not given. The release has no
            weights, so the fingerprint is ``paper-release:<sha256 of assistant_axis.pt>``.
        target_layer: override the target layer (else the paper's for a known shape, otherwise ``L // 2``).
        percentiles: Assistant-axis percentiles of the role/trait/default pool stored as ``thresholds``.
        seed: UMAP's random state.

    Returns:
        ``(path, report)``. ``report`` holds ``space``, ``model``, ``model_guess``, ``n_layers``, ``hidden``,
        ``target_layer``, ``target_layer_source``, ``roles``, ``traits``, ``axis`` (how the stored axis was made),
        ``released_axis_format`` (``"tensor"`` or ``"dict"``), ``axis_cosine`` ``{min, mean, per_layer}`` (released
        axis vs ``default - mean(roles)``), ``axis_norm_ratio`` ``{min, max}`` (released / ours), ``pool``,
        ``pool_size``, ``cap_presets`` (see :func:`parse_capping_config`), ``skipped_presets`` and ``warnings``.
        The same facts (less ``space`` and ``model``) are in the manifest under ``"import"``; the presets also under
        ``"cap_presets"`` and the traits' projections at the target layer under ``"traits"``. Released trait vectors
        are also stored as the space's traits (the tensor ``trait_vectors`` and the field ``trait_set``, see
        :mod:`backend.build.paper_traits`).
    """

    folder = Path(folder)
    check_target(out)  # before reading the release: refused with one line, nothing touched
    if not folder.is_dir():
        raise SpaceError(f"{folder} is not a folder of released vectors")
    default = matrix(load_plain(folder / DEFAULT_FILE, folder), DEFAULT_FILE, None, DEFAULT_FILE)
    shape: tuple[int, int] = (int(default.shape[0]), int(default.shape[1]))
    n_layers, hidden = shape
    released_raw, axis_format, axis_extra = load_axis(folder)
    released = matrix(released_raw, AXIS_FILE, shape, DEFAULT_FILE)

    role_files = tensor_files(folder, ROLE_DIR)
    if not role_files:
        raise SpaceError(f"{folder / ROLE_DIR} has no <role>.pt files: the release needs its role vectors")
    if len(role_files) < 3:
        raise SpaceError(f"{folder / ROLE_DIR} has {len(role_files)} role file(s); a space needs at least 3 roles")
    roles = torch.stack(
        [matrix(load_plain(p, folder), rel_name(p, folder), shape, DEFAULT_FILE) for p in role_files]
    )  # (R, L, d)
    names = [p.stem for p in role_files]

    axis = compute_axis(default, roles)  # (L, d), toward the Assistant
    if bool((axis.norm(dim=-1) == 0).any()):
        raise SpaceError("default - mean(roles) is zero at some layer: the default and role vectors do not differ there")
    axis_cos = cosine_rows(released, axis)  # (L,)
    norm_ratio = released.double().norm(dim=-1) / axis.double().norm(dim=-1)
    warnings: list[str] = []
    if float(axis_cos.min()) < AXIS_AGREEMENT_MIN:
        worst = int(axis_cos.argmin())
        warnings.append(
            f"{AXIS_FILE} differs from default - mean(roles): cosine {float(axis_cos.min()):.4f} at layer {worst}; "
            "the space uses the recomputed axis"
        )

    pool_parts = [project(roles, axis), project(default, axis)[None]]  # (R, L), (1, L)
    trait_files = tensor_files(folder, TRAIT_DIR)
    trait_names = [p.stem for p in trait_files]
    trait_vectors = [matrix(load_plain(p, folder), rel_name(p, folder), shape, DEFAULT_FILE) for p in trait_files]
    pool_parts.extend(project(trait, axis)[None] for trait in trait_vectors)
    pool = torch.cat(pool_parts)  # (R + 1 + T, L)
    trait_projections = pool[len(names) + 1 :]  # (T, L)

    guess = KNOWN_SHAPES.get(shape)
    settings = release_settings(n_layers, hidden)
    if target_layer is None:
        target, target_source = settings.target_layer, settings.source
    else:
        if not 0 <= int(target_layer) < n_layers:
            raise SpaceError(f"target layer {target_layer} is outside the model's {n_layers} layers (0..{n_layers - 1})")
        target, target_source = int(target_layer), "override"

    presets: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    if (folder / CAPPING_FILE).exists():
        presets, skipped, cap_warnings = parse_capping_config(load_plain(folder / CAPPING_FILE, folder), axis)
        warnings.extend(cap_warnings)

    label = model_name or folder.resolve().name
    model = {
        "spec": label,
        "name": label,
        "fingerprint": f"paper-release:{sha256_file(folder / AXIS_FILE)}",
        "architecture": "unknown",
    }
    role_entries = [{"name": n, "category": "imported", "description": "", "kept": True} for n in names]
    try:
        manifest, tensors = assemble_space(
            model=model,
            n_layers=n_layers,
            hidden=hidden,
            target_layer=target,
            cap_window=settings.cap_window,
            role_entries=role_entries,
            role_vectors=roles,
            default_vector=default,
            pool_projections=pool,
            activation_norm=roles.norm(dim=-1).mean(0),
            percentiles=tuple(float(p) for p in percentiles),
            seed=seed,
        )
    except PersonaSpaceError as exc:
        if isinstance(exc, SpaceError):
            raise
        raise SpaceError(f"cannot assemble a space from {folder}: {exc}") from exc

    info: dict[str, Any] = {
        "source": "paper-release",
        "folder": str(folder),
        "model_guess": guess[1] if guess else None,
        "n_layers": n_layers,
        "hidden": hidden,
        "target_layer": target,
        "target_layer_source": target_source,
        "roles": len(names),
        "traits": len(trait_names),
        "axis": "recomputed: default - mean(roles)",
        "released_axis_format": axis_format,
        "released_axis_extra_keys": axis_extra,
        "axis_cosine": {
            "min": float(axis_cos.min()),
            "mean": float(axis_cos.mean()),
            "per_layer": [float(c) for c in axis_cos],
        },
        "axis_norm_ratio": {"min": float(norm_ratio.min()), "max": float(norm_ratio.max())},
        "pool": POOL,
        "pool_size": int(pool.shape[0]),
        "cap_conversion": "tau_L = -sign(cos(v, -axis[L])) * cap: the released cap bounds h . unit(v) from above, "
        "and unit(v) = -unit(axis) for the paper's 'role - default' vectors",
        "cap_presets": [{k: p[k] for k in ("id", "layers", "percentile", "sign_cosine", "flipped")} for p in presets],
        "skipped_presets": skipped,
        "warnings": warnings,
    }
    manifest["import"] = info
    manifest["cap_presets"] = presets
    manifest["traits"] = {n: float(trait_projections[i, target]) for i, n in enumerate(trait_names)}
    manifest["settings"] = {"source": "paper-release", "percentiles": [float(p) for p in percentiles], "seed": seed}
    manifest["counts"] = {"roles_kept": len(names), "roles_dropped": 0, "traits": len(trait_names)}
    if trait_vectors:  # the same structure as build-traits: info and the Traits page read them like built ones
        manifest[TRAIT_FIELD] = paper_trait_set(trait_names, str(folder), f"{TRAIT_DIR}/<trait>.pt")
        tensors[TRAIT_TENSOR] = torch.stack(trait_vectors)  # (T, L, d)
    path = write_space(Path(out), manifest, tensors)
    report = {"space": str(path), "model": model, **info}
    return path, report
