"""The schema of a space's ``manifest.json``, checked on load (torch-free: the UI uses it too).

Every field the code reads is checked for type and range, every text for being one UTF-8 can encode, and the
tensors' shapes against the manifest, so an edited or hand-made space is refused with one line naming the field
instead of failing later with a traceback (or, served, with a 500 on every answer that writes it out).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

MAX_LAYERS = 10_000
MAX_HIDDEN = 1_000_000


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)


class _Model(_Open):
    name: StrictStr
    fingerprint: StrictStr
    spec: StrictStr | None = None


class _Role(_Open):
    name: StrictStr = Field(min_length=1, max_length=200)
    kept: StrictBool = False
    category: StrictStr = ""
    description: StrictStr = ""


class _Umap(_Open):
    n_neighbors: Annotated[StrictInt, Field(ge=2, le=10_000)] = 15
    random_state: Annotated[StrictInt, Field(ge=0, le=2**32 - 1)] = 0


class _CapPreset(_Open):
    percentile: Annotated[float, Field(ge=0, le=100)]
    window: Annotated[list[StrictInt], Field(min_length=2, max_length=2)]
    setting: StrictStr = ""
    rule: StrictStr = ""


class _Manifest(_Open):
    format_version: StrictInt
    model: _Model
    n_layers: Annotated[StrictInt, Field(ge=1, le=MAX_LAYERS)]
    hidden: Annotated[StrictInt, Field(ge=1, le=MAX_HIDDEN)]
    target_layer: Annotated[StrictInt, Field(ge=0)]
    cap_window: Annotated[list[StrictInt], Field(min_length=2, max_length=2)] | None = None
    roles: list[_Role] = Field(min_length=1)
    percentiles: list[Annotated[float, Field(ge=0, le=100)]] = Field(min_length=1)
    files: dict[StrictStr, StrictStr]
    umap: _Umap | None = None
    ranking: list[StrictStr] | None = None
    counts: dict[str, Any] | None = None
    settings: dict[str, Any] | None = None
    cap_preset: _CapPreset | None = None


def _describe(exc: ValidationError) -> str:
    err = exc.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(x) for x in err.get("loc", ())) or "the manifest"
    more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
    return f"field {where}: {err.get('msg', 'invalid')}{more}"


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_text(value: Any) -> str | None:
    """None when every text in ``value`` (values and keys, at any depth) is one UTF-8 can encode, else one line naming
    the first field that is not. JSON parses a lone surrogate such as ``"\\ud800"``; every answer that writes it out
    then fails. The worker checks the JSON it receives the same way (``backend.worker.json_check``). Iterative."""
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, str):
            if not _encodable(node):
                return f"field {path or 'the manifest'}: text with an unpaired surrogate (not valid UTF-8)"
        elif isinstance(node, dict):
            if not all(_encodable(key) for key in node if isinstance(key, str)):
                return f"field {path or 'the manifest'}: a key with an unpaired surrogate (not valid UTF-8)"
            stack.extend(reversed([(item, _join(path, key)) for key, item in node.items()]))  # in the document's order
        elif isinstance(node, (list, tuple)):
            stack.extend(reversed([(item, _join(path, i)) for i, item in enumerate(node)]))
    return None


def _join(path: str, key: object) -> str:
    if len(path) >= 200:  # a path that long is named by its start
        return path
    return f"{path}.{key}" if path else str(key)


def check_manifest(manifest: Any) -> str | None:
    """None when ``manifest`` is well-formed, else one line naming the first bad field."""
    if not isinstance(manifest, dict):
        return f"it is not a JSON object (it is a {type(manifest).__name__})"
    problem = check_text(manifest)
    if problem is not None:
        return problem
    try:
        m = _Manifest.model_validate(manifest)
    except ValidationError as exc:
        return _describe(exc)
    if m.target_layer >= m.n_layers:
        return f"field target_layer: {m.target_layer} is not a layer of the model's {m.n_layers} (0..{m.n_layers - 1})"
    if m.cap_window is not None and not 0 <= m.cap_window[0] < m.cap_window[1] <= m.n_layers:
        return f"field cap_window: {list(m.cap_window)} must be [start, stop) with 0 <= start < stop <= n_layers ({m.n_layers})"
    if m.cap_preset is not None and not 0 <= m.cap_preset.window[0] < m.cap_preset.window[1] <= m.n_layers:
        return (
            f"field cap_preset.window: {list(m.cap_preset.window)} must be [start, stop) within the model's {m.n_layers} layers"
        )
    names = [r.name for r in m.roles]
    if len(set(names)) != len(names):
        return "field roles: a role name appears twice"
    if not any(r.kept for r in m.roles):
        return "field roles: no role is kept"
    return None


def check_shapes(manifest: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> str | None:
    """None when the tensors' ``shapes`` fit the (already checked) manifest, else one line naming the tensor."""
    n_layers, hidden = manifest["n_layers"], manifest["hidden"]
    kept = sum(1 for r in manifest["roles"] if r.get("kept"))
    n_pct = len(manifest["percentiles"])
    k = shapes.get("pca_components", (0, 0, 0))[1] if len(shapes.get("pca_components", ())) == 3 else -1
    pool = shapes.get("pool_projections", (0,))[0] if shapes.get("pool_projections") else -1
    expected: dict[str, tuple[int, ...]] = {
        "role_vectors": (kept, n_layers, hidden), "default_vector": (n_layers, hidden), "axis": (n_layers, hidden),
        "pca_mean": (n_layers, hidden), "pca_components": (n_layers, k, hidden), "pca_explained_variance": (n_layers, k),
        "pca_role_coords": (n_layers, kept, k), "pca_default_coords": (n_layers, k), "axis_pc1_cosine": (n_layers,),
        "role_projections": (kept, n_layers), "default_projection": (n_layers,), "pool_projections": (pool, n_layers),
        "thresholds": (n_pct, n_layers), "activation_norm": (n_layers,), "umap_2d": (kept, 2), "umap_3d": (kept, 3),
        "umap_default_2d": (2,), "umap_default_3d": (3,),
    }  # fmt: skip
    for name, shape in expected.items():
        if name in shapes and tuple(shapes[name]) != shape:
            return (
                f"tensor {name} has shape {tuple(shapes[name])}, but the manifest (n_layers {n_layers}, hidden {hidden}, "
                f"{kept} kept roles, {n_pct} percentiles) implies {shape}"
            )
    if k < 1:
        return "tensor pca_components is missing or has no components"
    if pool < 1:
        return "tensor pool_projections is missing or empty"
    return None
