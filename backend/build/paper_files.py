"""Reading the paper's release files (Lu et al. 2026) safely.

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
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from backend.errors import SpaceError

AXIS_FILE = "assistant_axis.pt"
DEFAULT_FILE = "default_vector.pt"
ROLE_DIR = "role_vectors"
TRAIT_DIR = "trait_vectors"
CAPPING_FILE = "capping_config.pt"


def rel_name(path: Path, folder: Path) -> str:
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
    name = rel_name(path, folder)
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


def matrix(obj: Any, name: str, shape: tuple[int, int] | None, reference: str) -> torch.Tensor:
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


def tensor_files(folder: Path, sub: str) -> list[Path]:
    directory = folder / sub
    return sorted(p for p in directory.glob("*.pt") if p.is_file()) if directory.is_dir() else []


def load_axis(folder: Path) -> tuple[torch.Tensor, str, list[str]]:
    obj = load_plain(folder / AXIS_FILE, folder)
    if isinstance(obj, dict):
        if "axis" not in obj:
            keys = sorted(str(k) for k in obj)[:10]
            raise SpaceError(f"{AXIS_FILE} holds a dict without an 'axis' entry (keys: {keys})")
        return obj["axis"], "dict", sorted(str(k) for k in obj if k != "axis")
    return obj, "tensor", []
