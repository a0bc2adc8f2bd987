"""The one place that finds a model's decoder layers.

A decoder layer's output is the residual stream after that block (attention + MLP): the activation the method
reads, caps and steers. Layer indices are 0-based: layer ``i`` is ``layers[i]`` and its output equals
``hidden_states[i + 1]`` of a forward pass with ``output_hidden_states=True``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from backend.errors import ArchitectureError, InterventionError

# Where the decoder layers live, per model family, as attribute paths from the top-level model.
KNOWN_LAYER_PATHS: tuple[str, ...] = (
    "model.layers",  # Llama, Mistral, Qwen2, Qwen3, Gemma, Gemma2, Gemma3 (text), Phi3, OLMo, ...
    "model.language_model.layers",  # multimodal wrappers (Gemma3ForConditionalGeneration, ...)
    "language_model.model.layers",
    "transformer.h",  # GPT-2, GPT-J, Bloom, Falcon
    "gpt_neox.layers",  # GPT-NeoX, Pythia
    "model.decoder.layers",  # OPT
    "layers",  # a bare decoder model (LlamaModel, ...)
    "h",  # a bare GPT2Model
)


def _resolve(model: nn.Module, path: str) -> object | None:
    obj: object = model
    for part in path.split("."):
        if not hasattr(obj, part):
            return None
        obj = getattr(obj, part)
    return obj


def num_hidden_layers(model: nn.Module) -> int | None:
    """The layer count the model's config declares (text config for multimodal models), if any."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(text_config, name, None)
        if isinstance(value, int):
            return value
    return None


def find_decoder_layers(model: nn.Module, path: str | None = None) -> nn.ModuleList:
    """Return the ``nn.ModuleList`` of decoder blocks of ``model``.

    ``path`` overrides the search with a dotted attribute path (e.g. ``"model.layers"``). Without it, the known
    paths are tried in order, then any ``ModuleList`` whose length is the config's layer count.
    """
    if path is not None:
        found = _resolve(model, path)
        if not isinstance(found, nn.ModuleList):
            raise ArchitectureError(
                f"layer path {path!r} does not name an nn.ModuleList in {type(model).__name__} "
                f"(found {type(found).__name__ if found is not None else 'nothing'})"
            )
        return found
    expected = num_hidden_layers(model)
    for candidate in KNOWN_LAYER_PATHS:
        found = _resolve(model, candidate)
        if isinstance(found, nn.ModuleList) and len(found) > 0 and (expected is None or len(found) == expected):
            return found
    if expected is not None:
        lists = [
            (name, module)
            for name, module in model.named_modules()
            if isinstance(module, nn.ModuleList) and len(module) == expected
        ]
        if len(lists) == 1:
            return lists[0][1]
    raise ArchitectureError(
        f"could not find the decoder layers of {type(model).__name__}: tried {', '.join(KNOWN_LAYER_PATHS)}"
        f" (config declares {expected} layers). Pass the attribute path of the layer list explicitly, "
        "e.g. --layers-path model.layers"
    )


def validate_layers(layers: Sequence[int], n_layers: int, what: str = "layer") -> tuple[int, ...]:
    """Check 0-based layer indices against ``n_layers`` and return them as a sorted tuple without repeats."""
    seen: list[int] = []
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise InterventionError(f"{what} indices must be integers, got {layer!r}")
        if not 0 <= layer < n_layers:
            raise InterventionError(f"{what} {layer} is out of range: the model has layers 0..{n_layers - 1}")
        seen.append(layer)
    return tuple(sorted(set(seen)))


def block_output(output: object) -> torch.Tensor:
    """The hidden-state tensor of a decoder block's output: a tensor, or the first item of a tuple/list."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise ArchitectureError(f"unexpected decoder-layer output of type {type(output).__name__}")


def replace_block_output(output: object, hidden: torch.Tensor) -> object:
    """``output`` with its hidden-state tensor replaced by ``hidden``, keeping the container type."""
    if isinstance(output, torch.Tensor):
        return hidden
    if isinstance(output, tuple):
        return (hidden, *output[1:])
    if isinstance(output, list):
        return [hidden, *output[1:]]
    raise ArchitectureError(f"unexpected decoder-layer output of type {type(output).__name__}")
