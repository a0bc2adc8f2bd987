"""Import the paper's released vectors (Lu et al. 2026) as a persona space.

The release (one folder per model) holds, all readable with ``torch.load(weights_only=True)``:

* ``assistant_axis.pt``: the axis ``(L, d)``, a plain tensor or a dict ``{"axis": tensor, ...}`` (some tools keep
  metadata beside it);
* ``default_vector.pt``: the default-Assistant vector ``(L, d)``;
* ``role_vectors/<role>.pt``: one ``(L, d)`` tensor per role (the role name is the file stem);
* ``trait_vectors/<trait>.pt`` (optional): one ``(L, d)`` tensor per trait;
* ``capping_config.pt`` (optional): ``{"vectors": {key: {"vector": (d,), "layer": L}}, "experiments": [{"id":
  "layers_<a>:<b>-p<q>", "interventions": [{"vector": key, "cap": float}]}]}``, windows half-open ``[a, b)``.

Tensors may be bf16; everything is converted to float32. Files are only ever read with ``weights_only=True``: a
file that holds anything but tensors, dicts, lists and numbers is refused, never unpickled.

Conventions (those of :mod:`backend.axis`):

* The space stores **our recomputed axis** ``default - mean(roles)`` (what :func:`backend.builder.assemble_space`
  computes), pointing toward the Assistant. The released axis is only compared with it: the per-layer cosine is
  reported (``axis_cosine``).
* The release has no per-answer activations, so the threshold pool is the role vectors, the trait vectors and the
  default vector projected on the unit axis (``pool: "role and trait vectors"``); its percentiles give the space's
  ``thresholds``. They are coarser than the paper's per-answer pool: prefer the released cap presets when present.
* ``activation_norm`` (the steering scale) is the mean norm of the role vectors per layer.

Capping-config sign convention. The paper's code caps from above on the **normalised stored vector**:
``v̂ = v / |v|``, ``h <- h - v̂ · max(h·v̂ - cap, 0)``, so ``cap`` bounds the scalar projection on ``v̂`` whatever
``|v|`` is. The released vectors are ``role - default`` (= ``-axis``, so ``v̂ ≈ -â``) with negative caps. With
``h·v̂ = -h·â`` the upper bound ``h·v̂ <= cap`` is the floor ``h·â >= -cap``: the same cap as this package's
:func:`backend.axis.cap_floor` with ``τ_L = -cap``. On import each intervention's ``sign_cosine = cos(v, -axis[L])``
(our axis) is checked: ``≈ +1`` is the released convention and gives ``τ_L = -cap``. A config whose vectors point
along ``+axis`` (``sign_cosine ≈ -1``, "flipped", as tools that store the axis itself write) is converted at the
same level on the Assistant axis, ``τ_L = +cap`` (in general ``τ_L = -sign(sign_cosine) · cap``), and reported as
flipped; capping in this package is always the paper's floor. An intervention whose ``|sign_cosine|`` is below
:data:`ALIGNED_MIN` is not along our axis, so its experiment is skipped and reported, not converted.
"""

from __future__ import annotations

import math
import pickle
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from backend.axis import compute_axis, project
from backend.errors import PersonaSpaceError, SpaceError
from backend.model_table import ModelSettings, settings_for
from backend.store import sha256_file, write_space

AXIS_FILE = "assistant_axis.pt"
DEFAULT_FILE = "default_vector.pt"
ROLE_DIR = "role_vectors"
TRAIT_DIR = "trait_vectors"
CAPPING_FILE = "capping_config.pt"
POOL = "role and trait vectors"
# |cos(v, -axis)| below this means a capping vector is not along our axis at all: its experiment is skipped.
ALIGNED_MIN = 0.9
# The released axis should agree with default - mean(roles); below this minimum cosine the report warns.
AXIS_AGREEMENT_MIN = 0.99

# Released shapes (n_layers, hidden) -> (model_table family, the model's name).
KNOWN_SHAPES: dict[tuple[int, int], tuple[str, str]] = {
    (46, 4608): ("gemma2", "Gemma 2 27B"),
    (64, 5120): ("qwen3", "Qwen 3 32B"),
    (80, 8192): ("llama", "Llama 3.3 70B"),
}

_EXPERIMENT_ID = re.compile(r"^layers_(\d+):(\d+)-p(\d+(?:\.\d*)?|\.\d+)$")


def _rel(path: Path, folder: Path) -> str:
    try:
        return str(path.relative_to(folder))
    except ValueError:
        return str(path)


def _why_refused(exc: BaseException) -> str:
    """The line of torch's error that says what was found (never its advice to load with weights_only=False)."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line = lines[0].split(" Please use", 1)[0] if lines else type(exc).__name__
    return line if len(line) <= 200 else line[:200] + "…"


def load_plain(path: Path, folder: Path) -> Any:
    """``torch.load(path, weights_only=True)`` with the failures turned into :class:`SpaceError`.

    A file holding Python objects other than tensors, dicts, lists and numbers is refused by torch before anything
    in it runs; it is reported as "not a plain tensor file".
    """
    name = _rel(path, folder)
    if not path.is_file():
        raise SpaceError(f"{name} is missing from {folder}: the paper's release layout needs it")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        why = _why_refused(exc)
        what = "it holds Python objects other than tensors, dicts, lists and numbers" if "global" in why else "or it is corrupt"
        raise SpaceError(
            f"{name} is not a plain tensor file ({what}): torch.load(weights_only=True) refused it ({why}). "
            "Nothing in it was run; re-save it with torch.save(tensor, path) from a trusted source"
        ) from exc
    except Exception as exc:  # any other failure of torch.load means the file cannot be read
        raise SpaceError(f"{name} cannot be read as a torch file ({type(exc).__name__}: {_why_refused(exc)})") from exc


def _matrix(obj: Any, name: str, shape: tuple[int, int] | None, reference: str) -> torch.Tensor:
    """A finite float32 ``(L, d)`` tensor, or a :class:`SpaceError` naming the file and the shapes seen."""
    if not isinstance(obj, torch.Tensor):
        raise SpaceError(f"{name} holds a {type(obj).__name__}, not a tensor [n_layers, hidden]")
    if obj.dim() != 2:
        raise SpaceError(f"{name} has shape {tuple(obj.shape)}; expected a 2-D tensor [n_layers, hidden]")
    if not obj.is_floating_point():
        raise SpaceError(f"{name} has dtype {obj.dtype}; expected floating-point values")
    if shape is not None and tuple(obj.shape) != shape:
        raise SpaceError(
            f"{name} has shape {tuple(obj.shape)}, but {reference} has {shape}: every file must be "
            "[n_layers, hidden] of the same model"
        )
    out = obj.detach().to(torch.float32).contiguous()
    if not bool(torch.isfinite(out).all()):
        bad = int((~torch.isfinite(out)).sum())
        raise SpaceError(f"{name} has {bad} non-finite value(s) (NaN or inf)")
    return out


def _tensor_files(folder: Path, sub: str) -> list[Path]:
    directory = folder / sub
    return sorted(p for p in directory.glob("*.pt") if p.is_file()) if directory.is_dir() else []


def _cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
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
            cosines[layer] = float(_cosines(vector, -axis[layer]))
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


def release_settings(n_layers: int, hidden: int) -> ModelSettings:
    """Target layer and cap window for a release of shape ``(n_layers, hidden)``: the paper's for its three
    models (Gemma 2 27B -> 22, Qwen 3 32B -> 32, Llama 3.3 70B -> 40), otherwise ``n_layers // 2``."""
    guess = KNOWN_SHAPES.get((n_layers, hidden))
    return settings_for(guess[0] if guess else "unknown", n_layers)


def _load_axis(folder: Path) -> tuple[torch.Tensor, str, list[str]]:
    obj = load_plain(folder / AXIS_FILE, folder)
    if isinstance(obj, dict):
        if "axis" not in obj:
            keys = sorted(str(k) for k in obj)[:10]
            raise SpaceError(f"{AXIS_FILE} holds a dict without an 'axis' entry (keys: {keys})")
        return obj["axis"], "dict", sorted(str(k) for k in obj if k != "axis")
    return obj, "tensor", []


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
        out: where to write the space (replaced atomically if it exists).
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
        ``"cap_presets"`` and the traits' projections at the target layer under ``"traits"``.
    """
    from backend.builder import assemble_space

    folder = Path(folder)
    if not folder.is_dir():
        raise SpaceError(f"{folder} is not a folder of released vectors")
    default = _matrix(load_plain(folder / DEFAULT_FILE, folder), DEFAULT_FILE, None, DEFAULT_FILE)
    shape: tuple[int, int] = (int(default.shape[0]), int(default.shape[1]))
    n_layers, hidden = shape
    released_raw, axis_format, axis_extra = _load_axis(folder)
    released = _matrix(released_raw, AXIS_FILE, shape, DEFAULT_FILE)

    role_files = _tensor_files(folder, ROLE_DIR)
    if not role_files:
        raise SpaceError(f"{folder / ROLE_DIR} has no <role>.pt files: the release needs its role vectors")
    if len(role_files) < 3:
        raise SpaceError(f"{folder / ROLE_DIR} has {len(role_files)} role file(s); a space needs at least 3 roles")
    roles = torch.stack([_matrix(load_plain(p, folder), _rel(p, folder), shape, DEFAULT_FILE) for p in role_files])  # (R, L, d)
    names = [p.stem for p in role_files]

    axis = compute_axis(default, roles)  # (L, d), toward the Assistant
    if bool((axis.norm(dim=-1) == 0).any()):
        raise SpaceError("default - mean(roles) is zero at some layer: the default and role vectors do not differ there")
    axis_cos = _cosines(released, axis)  # (L,)
    norm_ratio = released.double().norm(dim=-1) / axis.double().norm(dim=-1)
    warnings: list[str] = []
    if float(axis_cos.min()) < AXIS_AGREEMENT_MIN:
        worst = int(axis_cos.argmin())
        warnings.append(
            f"{AXIS_FILE} differs from default - mean(roles): cosine {float(axis_cos.min()):.4f} at layer {worst}; "
            "the space uses the recomputed axis"
        )

    pool_parts = [project(roles, axis), project(default, axis)[None]]  # (R, L), (1, L)
    trait_files = _tensor_files(folder, TRAIT_DIR)
    trait_names = [p.stem for p in trait_files]
    for path in trait_files:  # one at a time: only their projections are kept
        trait = _matrix(load_plain(path, folder), _rel(path, folder), shape, DEFAULT_FILE)
        pool_parts.append(project(trait, axis)[None])
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
    path = write_space(Path(out), manifest, tensors)
    report = {"space": str(path), "model": model, **info}
    return path, report
