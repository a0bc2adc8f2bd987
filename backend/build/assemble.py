"""From per-answer activations (or ready role vectors) to a persona space: axis, PCA, UMAP, thresholds, manifest.

:func:`build_space` applies a role-vector recipe (:mod:`backend.build.recipes`) to a build's answers; :func:`assemble_space`
turns role vectors into everything a space holds. Weak archetypes (too few in-role answers) are stored and drawn
but fitted nowhere: the axis is ``default - mean(non-weak roles)`` and the PCA is fitted on the non-weak roles,
the weak ones projected in."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from backend.build.plan import Unit
from backend.build.recipes import EMPTY, Answer, role_vectors
from backend.build.settings import BUILD_VERSION, BuildSettings
from backend.catalogue import DEFAULT_ROLE, Catalogue
from backend.errors import PersonaSpaceError
from backend.maths.axis import compute_axis, percentile_thresholds, project
from backend.maths.pca import fit_pca
from backend.maths.umap_layout import fit_umap

SPACE_VERSION = 2  # 2: recipes, weak archetypes drawn


def build_space(
    model: dict[str, Any],
    catalogue: Catalogue,
    settings: BuildSettings,
    units: list[Unit],
    means: torch.Tensor,
    records: list[dict[str, Any]],
    scores: dict[str, tuple[int, str]],
    started: float,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Role vectors by ``settings.recipe``, then the space. ``model`` holds spec, name, fingerprint, architecture,
    n_layers, hidden, target_layer and cap_window (a model's ``info.to_dict()`` or the work folder's record)."""
    answers = [
        Answer(u.role, u.question, EMPTY if r["n_tokens"] == 0 else (3 if u.role == DEFAULT_ROLE else scores.get(u.key, (0, ""))[0]))
        for u, r in zip(units, records, strict=True)
    ]  # fmt: skip
    role_names = settings.roles if settings.roles is not None else tuple(a.name for a in catalogue.archetypes)
    rv = role_vectors(answers, means, role_names, settings.recipe, settings.min_in_role, DEFAULT_ROLE)
    weak_of = dict(zip(rv.names, rv.weak, strict=True))
    role_entries: list[dict[str, Any]] = []
    for name in role_names:
        idx = [i for i, u in enumerate(units) if u.role == name]
        judged = [answers[i].score for i in idx]
        archetype = catalogue.archetype(name)
        entry: dict[str, Any] = {
            "name": name, "category": archetype.category, "description": archetype.description,
            "answers": len(idx), "empty_answers": judged.count(EMPTY), "scores": {str(s): judged.count(s) for s in (0, 1, 2, 3)},
            "in_role": rv.in_role[name],
        }  # fmt: skip
        if name in weak_of:
            entry["kept"] = True
            if weak_of[name]:
                entry["weak"] = True
                entry["weak_reason"] = (
                    f"{rv.in_role[name]} in-role (score 3) answers of {len(idx)}, fewer than {settings.min_in_role}: "
                    "drawn from every answer it gave, not used to fit the axis or the PCA"
                )
            candidates = [i for i in idx if answers[i].score == 3] or [i for i in idx if answers[i].score != EMPTY]
            example = min(candidates, key=lambda i: abs(records[i]["n_tokens"] - settings.max_new_tokens * 0.75))
            entry["example"] = {"question": units[example].text, "answer": records[example]["text"]}
        else:
            entry["kept"] = False
            entry["dropped"] = rv.dropped[name]
        role_entries.append(entry)
    n_layers, target = int(model["n_layers"]), int(model["target_layer"])
    if settings.target_layer is not None:
        if not 0 <= settings.target_layer < n_layers:
            raise PersonaSpaceError(f"target layer {settings.target_layer} is out of range 0..{n_layers - 1}")
        target = settings.target_layer
    usable = torch.tensor([a.score != EMPTY for a in answers])
    fit = ~torch.tensor(rv.weak)
    if int(fit.sum()) < 3:
        raise PersonaSpaceError(
            f"only {int(fit.sum())} archetypes have at least {settings.min_in_role} in-role answers (need 3 to fit "
            "the space); lower --min-in-role or add answers"
        )
    axis = compute_axis(rv.default, rv.vectors[fit])
    pool = torch.stack([project(means[usable][:, layer], axis[layer]) for layer in range(n_layers)], dim=1)
    manifest, tensors = assemble_space(
        model={k: model[k] for k in ("spec", "name", "fingerprint", "architecture")},
        n_layers=n_layers,
        hidden=int(model["hidden"]),
        target_layer=target,
        cap_window=(int(model["cap_window"][0]), int(model["cap_window"][1])),
        role_entries=role_entries,
        role_vectors=rv.vectors,
        default_vector=rv.default,
        pool_projections=pool,
        activation_norm=means[usable].norm(dim=-1).mean(0),
        percentiles=settings.percentiles,
        pca_components=settings.pca_components,
        umap_neighbors=settings.umap_neighbors,
        seed=settings.seed,
    )
    manifest["settings"] = asdict(settings)
    manifest["recipe"] = settings.recipe
    manifest["weak"] = {n: rv.in_role[n] for n, w in zip(rv.names, rv.weak, strict=True) if w}
    manifest["counts"] = {
        "answers": len(units),
        "default_answers": sum(1 for u in units if u.role == DEFAULT_ROLE),
        "default_questions_used": rv.default_questions,
        "empty_answers": int((~usable).sum()),
        "truncated_answers": sum(1 for r in records if r["truncated"]),
        "response_tokens": sum(r["n_tokens"] for r in records),
        "roles_kept": len(rv.names),
        "roles_weak": sum(rv.weak),
        "roles_dropped": len(rv.dropped),
    }
    manifest["build_seconds"] = round(time.time() - started, 1)
    return manifest, tensors


def assemble_space(
    *,
    model: dict[str, Any],
    n_layers: int,
    hidden: int,
    target_layer: int,
    cap_window: tuple[int, int],
    role_entries: list[dict[str, Any]],
    role_vectors: torch.Tensor,
    default_vector: torch.Tensor,
    pool_projections: torch.Tensor,
    activation_norm: torch.Tensor,
    percentiles: Sequence[float] = (1.0, 25.0, 50.0, 75.0),
    pca_components: int = 20,
    umap_neighbors: int = 15,
    seed: int = 0,
    thresholds: torch.Tensor | None = None,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Everything a space holds, from role vectors ``(R, L, d)`` (kept roles, in ``role_entries`` order; entries
    with ``weak`` are drawn but not fitted), the default vector ``(L, d)`` and a pool of per-answer projections
    ``(N, L)`` (or explicit ``thresholds`` ``(len(percentiles), L)`` when no pool exists, e.g. imported vectors)."""

    L = n_layers
    target = target_layer
    kept = [e for e in role_entries if e.get("kept")]
    kept_names = [e["name"] for e in kept]
    if len(kept_names) != role_vectors.shape[0]:
        raise PersonaSpaceError(f"{len(kept_names)} kept roles but {role_vectors.shape[0]} role vectors")
    fit = torch.tensor([not e.get("weak") for e in kept], dtype=torch.bool)
    if int(fit.sum()) < 3:
        raise PersonaSpaceError(f"only {int(fit.sum())} roles to fit (need at least 3); lower --min-in-role or add answers")
    role_vectors = role_vectors.float()
    default_vector = default_vector.float()
    axis = compute_axis(default_vector, role_vectors[fit])
    k = min(pca_components, int(fit.sum()) - 1, hidden)
    pca_mean, pca_comp, pca_evr, pca_coords, pca_default, pc1_cos = [], [], [], [], [], []
    for layer in range(L):
        pca = fit_pca(role_vectors[fit, layer], axis=axis[layer], n_components=k)
        pca_mean.append(torch.from_numpy(pca.mean).float())
        pca_comp.append(torch.from_numpy(pca.components).float())
        pca_evr.append(torch.from_numpy(pca.explained_variance_ratio).float())
        pca_coords.append(torch.from_numpy(pca.transform(role_vectors[:, layer].double().numpy())).float())
        pca_default.append(torch.from_numpy(pca.transform(default_vector[layer][None].double().numpy())[0]).float())
        pc1_cos.append(pca.axis_cosine(axis[layer].double().numpy()))
    if thresholds is None:
        by_p = percentile_thresholds(pool_projections.float(), percentiles)
        thresholds = torch.stack([by_p[float(p)] for p in percentiles])
    tensors: dict[str, torch.Tensor] = {
        "role_vectors": role_vectors,
        "default_vector": default_vector,
        "axis": axis.float(),
        "pca_mean": torch.stack(pca_mean),
        "pca_components": torch.stack(pca_comp),
        "pca_explained_variance": torch.stack(pca_evr),
        "pca_role_coords": torch.stack(pca_coords),
        "pca_default_coords": torch.stack(pca_default),
        "axis_pc1_cosine": torch.tensor(pc1_cos, dtype=torch.float32),
        "role_projections": torch.stack([project(role_vectors[:, layer], axis[layer]) for layer in range(L)], dim=1).float(),
        "default_projection": project(default_vector, axis).float(),
        "pool_projections": pool_projections.float(),
        "thresholds": thresholds.float(),
        "activation_norm": activation_norm.float(),
    }
    x = role_vectors[:, target].double().numpy()
    for dim in (2, 3):
        reducer = fit_umap(x, dim, umap_neighbors, seed)
        tensors[f"umap_{dim}d"] = torch.from_numpy(np.asarray(reducer.embedding_)).float()
        placed = reducer.transform(default_vector[target].double().numpy()[None])
        tensors[f"umap_default_{dim}d"] = torch.from_numpy(np.asarray(placed)[0]).float()
    order = torch.argsort(tensors["role_projections"][:, target], descending=True).tolist()
    import sklearn
    import transformers

    manifest: dict[str, Any] = {
        "model": model,
        "n_layers": L,
        "hidden": hidden,
        "target_layer": target,
        "cap_window": list(cap_window),
        "percentiles": [float(p) for p in percentiles],
        "roles": role_entries,
        "kept_order": kept_names,
        "ranking": [kept_names[i] for i in order],
        "umap": {"metric": "cosine", "n_neighbors": max(2, min(umap_neighbors, len(kept_names) - 1)), "random_state": seed},
        "versions": {
            "persona_space_build": BUILD_VERSION,
            "persona_space_space": SPACE_VERSION,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "scikit_learn": sklearn.__version__,
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return manifest, tensors
