"""Transcripts: parse a conversation file and project each assistant turn onto the Assistant Axis.

Accepted inputs (JSON):

* an OpenAI-style message list ``[{"role": "system"|"user"|"assistant", "content": ...}, ...]``;
* a dict with ``messages`` holding such a list;
* the paper's transcript JSON: a dict with ``conversation`` (that list), optional ``model``, a ``turns`` count that
  may be wrong (ignored: the messages are counted), and any extra keys (``steering_config``, ``domain``, ...).

Content may be a string or a list of ``{"type": "text", "text": ...}`` parts. After an optional system message,
roles must alternate user/assistant, starting with the user.

Projection is one teacher-forced pass over the whole conversation: for each assistant turn, the mean activation
over that turn's own content tokens at the chosen layer, dotted with the unit axis. A conversation longer than
the model's context is refused with a clear error, never silently truncated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from backend.chat import encode_conversation
from backend.errors import PersonaSpaceError
from backend.interventions import Capture, intervene
from backend.models import LoadedModel
from backend.placement import Placement
from backend.store import Space

MAX_FILE_BYTES = 20 * 2**20
MAX_MESSAGES = 10_000


class TranscriptError(PersonaSpaceError, ValueError):
    """A transcript that cannot be read or projected."""


@dataclass(frozen=True)
class Transcript:
    system: str | None
    messages: list[dict[str, str]]
    model: str | None
    meta: dict[str, Any]

    @property
    def n_assistant(self) -> int:
        return sum(1 for m in self.messages if m["role"] == "assistant")


def _content(i: int, value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = []
        for part in value:
            if isinstance(part, dict) and part.get("type") in (None, "text") and isinstance(part.get("text"), str):
                parts.append(part["text"])
            else:
                raise TranscriptError(f"message {i}: content parts must be text parts, got {str(part)[:80]!r}")
        return "".join(parts)
    raise TranscriptError(f"message {i}: content must be text, got {type(value).__name__}")


def parse_transcript(data: Any) -> Transcript:
    """Validate a decoded JSON transcript (see the module docstring)."""
    meta: dict[str, Any] = {}
    model = None
    if isinstance(data, dict):
        meta = {k: v for k, v in data.items() if k not in ("conversation", "messages")}
        model = data.get("model") if isinstance(data.get("model"), str) else None
        if "conversation" in data:
            data = data["conversation"]
        elif "messages" in data:
            data = data["messages"]
        else:
            raise TranscriptError(
                f"expected a message list, or a dict with 'conversation' or 'messages'; got keys {sorted(data)[:10]}"
            )
    if not isinstance(data, list):
        raise TranscriptError(f"the conversation must be a list of messages, got {type(data).__name__}")
    if not data:
        raise TranscriptError("the conversation is empty")
    if len(data) > MAX_MESSAGES:
        raise TranscriptError(f"the conversation has {len(data)} messages; at most {MAX_MESSAGES} are read")
    messages: list[dict[str, str]] = []
    system = None
    for i, raw in enumerate(data):
        if not isinstance(raw, dict) or "role" not in raw or "content" not in raw:
            raise TranscriptError(f"message {i} must be an object with 'role' and 'content', got {str(raw)[:80]!r}")
        role = raw["role"]
        if role == "system":
            if i != 0:
                raise TranscriptError(f"message {i}: a system message is only allowed first")
            system = _content(i, raw["content"])
            continue
        if role not in ("user", "assistant"):
            raise TranscriptError(f"message {i} has role {role!r}; expected user, assistant (or a first system message)")
        expected = "user" if not messages or messages[-1]["role"] == "assistant" else "assistant"
        if role != expected:
            raise TranscriptError(
                f"message {i} is a {role} message after a {messages[-1]['role'] if messages else 'start'}: roles must alternate, user first"
            )
        messages.append({"role": role, "content": _content(i, raw["content"])})
    if not any(m["role"] == "assistant" for m in messages):
        raise TranscriptError("the conversation has no assistant turn to project")
    declared = meta.get("turns")
    if isinstance(declared, int) and declared != sum(1 for m in messages if m["role"] == "user"):
        meta["turns_declared"] = declared  # the paper's count is unreliable; we count the messages
    return Transcript(system=system, messages=messages, model=model, meta=meta)


def read_transcript(path: str | Path, max_bytes: int = MAX_FILE_BYTES) -> Transcript:
    file = Path(path)
    if not file.is_file():
        raise TranscriptError(f"{file} does not exist")
    size = file.stat().st_size
    if size > max_bytes:
        raise TranscriptError(f"{file} is {size / 2**20:.0f} MiB; transcripts are limited to {max_bytes / 2**20:.0f} MiB")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise TranscriptError(f"{file} is not UTF-8 text") from exc
    except json.JSONDecodeError as exc:
        raise TranscriptError(f"{file} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from exc
    except RecursionError as exc:
        raise TranscriptError(f"{file} is nested too deeply to be a transcript") from exc
    return parse_transcript(data)


def max_context(model: Any) -> int:
    """The model's context length from its config (4096 when it declares none)."""
    config = model.config
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 4096


@torch.inference_mode()
def project_transcript(loaded: LoadedModel, space: Space, transcript: Transcript, layer: int | None = None) -> dict[str, Any]:
    """Per assistant turn: projection on the unit axis at ``layer`` (default the target layer), PCA coordinates
    and nearest archetypes (both at the target layer)."""
    layer = space.target_layer if layer is None else layer
    if not 0 <= layer < loaded.info.n_layers:
        raise TranscriptError(f"layer {layer} is out of range: the model has layers 0..{loaded.info.n_layers - 1}")
    encoded = encode_conversation(loaded.tokenizer, transcript.system, transcript.messages)
    limit = max_context(loaded.model)
    if len(encoded.input_ids) > limit:
        raise TranscriptError(
            f"the conversation is {len(encoded.input_ids)} tokens; the model's context is {limit}. Split the transcript "
            "(e.g. keep the last turns) and project the parts: nothing was truncated silently"
        )
    ids = torch.tensor([encoded.input_ids], device=next(loaded.model.parameters()).device)
    captures = []
    layers = sorted({layer, space.target_layer})
    for start, end in encoded.assistant_spans:
        mask = torch.zeros(ids.shape, dtype=torch.bool)
        mask[0, start:end] = True
        captures.append(Capture(layers=layers, mask=mask))
    with intervene(loaded.model, *captures, layers_path=loaded.info.layers_path):
        loaded.model(input_ids=ids)
    placement = Placement(space)
    axis = space.tensors["axis"][layer]
    unit_axis = axis / axis.norm()
    turns = []
    assistant_index = [i for i, m in enumerate(transcript.messages) if m["role"] == "assistant"]
    for n, (capture, (start, end), message_index) in enumerate(
        zip(captures, encoded.assistant_spans, assistant_index, strict=True)
    ):
        means = capture.mean()[0]
        at_layer = means[layers.index(layer)]
        at_target = means[layers.index(space.target_layer)]
        entry: dict[str, Any] = {"index": n, "message_index": message_index, "n_tokens": end - start}
        if end > start:
            entry["projection"] = float(at_layer.double() @ unit_axis.double())
            entry["pca"] = placement.pca(at_target)
            entry["nearest"] = placement.nearest(at_target)
        else:
            entry["projection"] = None
        turns.append(entry)
    return {
        "model": loaded.info.name,
        "space": str(space.path),
        "layer": layer,
        "tokens": len(encoded.input_ids),
        "transcript_model": transcript.model,
        "turns": turns,
    }
