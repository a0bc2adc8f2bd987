"""The persona-space store: ``cached_activations/<space>/`` = ``space.safetensors`` + ``manifest.json``.

Written atomically (a temp folder beside the target, then rename), and only over a folder that is a space or is
empty (:func:`check_target`: writing replaces the folder). The manifest names the model (spec, name and
weights fingerprint), every build setting, per-role counts and judge scores, versions, the creation time and the
SHA-256 of every data file; loading checks all of it (text UTF-8 can encode, finite tensors of the shapes the
manifest implies) and refuses a space built for another model.

Tensors in ``space.safetensors`` (``R`` kept roles, ``L`` layers, ``d`` hidden, ``k`` PCA components, ``N`` pool
answers):

========================  ====================  ===========================================================
name                      shape                 meaning
========================  ====================  ===========================================================
role_vectors              (R, L, d)             mean activation of each kept role's score-3 answers
default_vector            (L, d)                mean activation of all default-Assistant answers
axis                      (L, d)                default - mean(roles): points toward the Assistant
pca_mean                  (L, d)                role mean per layer (PCA centre)
pca_components            (L, k, d)             PCs per layer; PC1's sign agrees with the axis
pca_explained_variance    (L, k)                explained-variance ratio of each PC
pca_role_coords           (L, R, k)             role coordinates per layer
pca_default_coords        (L, k)                the default vector projected in
axis_pc1_cosine           (L,)                  cos(PC1, axis)
role_projections          (R, L)                role vectors on the unit axis
default_projection        (L,)                  default vector on the unit axis
pool_projections          (N, L)                every answer (any score, defaults too) on the unit axis
thresholds                (P, L)                percentiles (manifest ``percentiles``) of pool_projections
activation_norm           (L,)                  mean norm of pool answers: the steering scale
umap_2d / umap_3d         (R, 2) / (R, 3)       UMAP of role vectors at the target layer (cosine)
umap_default_2d / _3d     (2,) / (3,)           the default vector placed through UMAP's transform
========================  ====================  ===========================================================

Optional: ``trait_vectors`` ``(T, L, d)`` with the manifest's ``trait_set`` (``build-traits``; see
:mod:`backend.store.traits`); checked on load when present, and a space without them is a whole space.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from backend.errors import SpaceError, SpaceMismatchError
from backend.store.trait_check import check_trait_shapes, expand_compact
from backend.view.manifest import check_manifest, check_shapes, check_text

FORMAT_VERSION = 1
TENSOR_FILE = "space.safetensors"
MANIFEST = "manifest.json"
REQUIRED_TENSORS = (
    "role_vectors", "default_vector", "axis", "pca_mean", "pca_components", "pca_explained_variance",
    "pca_role_coords", "pca_default_coords", "axis_pc1_cosine", "role_projections", "default_projection",
    "pool_projections", "thresholds", "activation_norm",
)  # fmt: skip
REQUIRED_MANIFEST = ("format_version", "model", "n_layers", "hidden", "target_layer", "roles", "percentiles", "files")


@dataclass
class Space:
    """A loaded persona space: ``manifest`` (dict) and ``tensors`` (name -> CPU tensor)."""

    path: Path
    manifest: dict[str, Any]
    tensors: dict[str, torch.Tensor]

    @property
    def roles(self) -> list[str]:
        return [r["name"] for r in self.manifest["roles"] if r.get("kept")]

    @property
    def target_layer(self) -> int:
        return int(self.manifest["target_layer"])

    @property
    def percentiles(self) -> list[float]:
        return [float(p) for p in self.manifest["percentiles"]]

    def threshold(self, percentile: float) -> torch.Tensor:
        """``(L,)`` cap thresholds at a stored percentile, or interpolated from the pool for any other in [0, 100]."""
        if not 0 <= percentile <= 100:
            raise SpaceError(f"percentile must be in [0, 100], got {percentile}")
        if float(percentile) in self.percentiles:
            return self.tensors["thresholds"][self.percentiles.index(float(percentile))]
        pool = self.tensors["pool_projections"].double()
        return torch.quantile(pool, percentile / 100.0, dim=0).float()

    def check_model(self, fingerprint: str, name: str | None = None) -> None:
        """Refuse this space unless it was built for the model with ``fingerprint``."""
        model = self.manifest["model"]
        if model.get("fingerprint") != fingerprint:
            raise SpaceMismatchError(
                f"the space at {self.path} was built for {model.get('name')!r} (weights {str(model.get('fingerprint'))[:12]}), "
                f"but the loaded model is {name or 'another model'!r} (weights {fingerprint[:12]}); build a space for "
                "this model with `python -m backend build`, or load the model the space was built for"
            )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def check_target(target: str | Path) -> Path:
    """The absolute folder a space may be written to at ``target``, or a :class:`SpaceError` of one line.

    Writing a space replaces its folder, so only a folder that does not exist yet, an empty one, or a space (its
    manifest and tensor file, nothing else) is accepted; never a file, a symbolic link, the current folder or one
    that holds it. Every writer calls this before its work (a build before generating) and :func:`write_space` again.
    """
    given = str(target)
    folder = Path(os.path.abspath(target))  # "", "." and ".." name the current folder or one above it
    here = Path.cwd()
    if folder == here or folder in here.parents:
        where = "is the current folder" if folder == here else "holds the current folder"
        raise SpaceError(
            f"refusing to write a space to {given!r}: it {where}, and writing a space replaces its folder; "
            "name a folder of its own, e.g. cached_activations/NAME"
        )
    if folder.is_symlink():
        raise SpaceError(f"refusing to write a space to {given!r}: it is a symbolic link; name the folder it points to")
    if folder.exists() and not folder.is_dir():
        raise SpaceError(f"refusing to write a space to {given!r}: it is a file, not a folder")
    if not folder.exists():
        return folder
    entries = sorted(p.name for p in folder.iterdir())
    if entries and MANIFEST not in entries:
        raise SpaceError(
            f"refusing to write a space to {given!r}: it is not a persona space (no {MANIFEST}) and not empty (it holds "
            f"{_some(entries)}), and writing a space replaces its folder; name a new or empty folder, e.g. {str(Path(given) / 'NAME')!r}"
        )
    others = [e for e in entries if e not in (MANIFEST, TENSOR_FILE) and not e.startswith(".manifest-")]
    if others:
        raise SpaceError(
            f"refusing to write a space to {given!r}: besides a space it holds {_some(others)}, which replacing the "
            "space would delete; move them out or name another folder"
        )
    return folder


def _some(names: list[str], n: int = 3) -> str:
    shown = ", ".join(ascii(name) for name in names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")


def check_finite(tensors: dict[str, torch.Tensor]) -> str | None:
    """None when every value of every tensor is a finite number, else one line naming the first tensor that is not."""
    for name, tensor in tensors.items():
        bad = int((~torch.isfinite(tensor)).sum())
        if bad:
            return f"tensor {name} has {bad} non-finite value{'s' if bad > 1 else ''} (NaN or infinite) of {tensor.numel()}"
    return None


def write_space(target: Path, manifest: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
    """Write a space atomically; an existing space at ``target`` is replaced only once the new one is complete.

    Refused (:class:`SpaceError`, nothing written) when ``target`` is not a place for a space (:func:`check_target`)
    or when the space would not load: text UTF-8 cannot encode, values that are not finite numbers.
    """
    from safetensors.torch import save_file

    given, target = Path(target), check_target(target)
    problem = check_text(manifest) or check_finite(tensors)
    if problem is not None:
        raise SpaceError(f"refusing to write a space to {str(given)!r} that would not load: {problem}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / TENSOR_FILE))
        manifest = dict(manifest, format_version=FORMAT_VERSION, files={TENSOR_FILE: sha256_file(tmp / TENSOR_FILE)})
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a space is meant to be shared
        for file in (TENSOR_FILE, MANIFEST):
            os.chmod(tmp / file, 0o644)
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}-old-{os.getpid()}")
            os.rename(target, old)
        os.rename(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return given


def read_manifest(path: Path) -> dict[str, Any]:
    file = Path(path) / MANIFEST
    if not file.exists():
        raise SpaceError(f"{path} is not a persona space: it has no {MANIFEST}")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise SpaceError(f"{file} is corrupt or truncated ({exc}); rebuild the space or restore it from git") from exc
    if not isinstance(manifest, dict):
        raise SpaceError(f"{file} is not a JSON object")
    missing = [k for k in REQUIRED_MANIFEST if k not in manifest]
    if missing:
        raise SpaceError(f"{file} lacks {missing}; it was not written by this version of Persona Space")
    if manifest["format_version"] != FORMAT_VERSION:
        raise SpaceError(f"{file} has format version {manifest['format_version']!r}, this program reads {FORMAT_VERSION}")
    problem = check_manifest(manifest)
    if problem is not None:
        raise SpaceError(f"{file} is not a valid space manifest: {problem}; rebuild the space or undo the edit")
    return manifest


def load_space(path: str | Path, *, fingerprint: str | None = None, model_name: str | None = None) -> Space:
    """Load and verify a space. With ``fingerprint``, refuse a space built for another model."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    root = Path(path)
    manifest = read_manifest(root)
    tensor_file = root / TENSOR_FILE
    if not tensor_file.exists():
        raise SpaceError(f"{root} lacks {TENSOR_FILE}")
    expected = manifest["files"].get(TENSOR_FILE)
    actual = sha256_file(tensor_file)
    if expected != actual:
        raise SpaceError(
            f"{tensor_file} is corrupt or was changed: its SHA-256 is {actual[:12]}…, the manifest says {str(expected)[:12]}…"
        )
    try:
        tensors = load_file(str(tensor_file))
    except (SafetensorError, OSError, ValueError) as exc:
        raise SpaceError(f"{tensor_file} cannot be read: {exc}") from exc
    missing = [k for k in REQUIRED_TENSORS if k not in tensors]
    if missing:
        raise SpaceError(f"{tensor_file} lacks tensors {missing}")
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    problem = check_shapes(manifest, shapes) or check_trait_shapes(manifest, shapes)
    if problem is not None:
        raise SpaceError(f"{tensor_file} does not fit its manifest: {problem}")
    problem = expand_compact(tensors) or check_finite(tensors)
    if problem is not None:
        raise SpaceError(f"{tensor_file} holds values that are not numbers: {problem}; rebuild the space or undo the edit")
    space = Space(path=root, manifest=manifest, tensors=tensors)
    if fingerprint is not None:
        space.check_model(fingerprint, model_name)
    return space
