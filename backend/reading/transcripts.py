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
the model's context is read in windows (:mod:`backend.reading.windows`) or refused with a clear error, never
silently truncated. :class:`Reading` does the same work in steps of a bounded number of tokens, so that a caller
(the worker) can run other work on the model between them.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from backend.errors import PersonaSpaceError
from backend.hooks.interventions import intervene
from backend.hooks.readers import Capture, Monitor
from backend.models.chat import ChatTemplateError, EncodedConversation, encode_conversation, message_layout
from backend.models.layers import find_decoder_layers
from backend.models.loading import LoadedModel
from backend.reading.placement import Placement
from backend.reading.windows import Layout, WindowError, plan_windows
from backend.store.space import Space

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
        content = _content(i, raw["content"])
        if not content.strip():
            raise TranscriptError(f"message {i} ({role}) is empty: every user and assistant turn needs text")
        messages.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in messages):
        raise TranscriptError("the conversation has no assistant turn to project")
    declared = meta.get("turns")
    if isinstance(declared, int) and declared != sum(1 for m in messages if m["role"] == "user"):
        meta["turns_declared"] = declared  # the paper's count is unreliable; we count the messages
    return Transcript(system=system, messages=messages, model=model, meta=meta)


def _read_text(file: Path, max_bytes: int) -> str:
    if not file.is_file():
        raise TranscriptError(f"{file} does not exist")
    size = file.stat().st_size
    if size > max_bytes:
        raise TranscriptError(f"{file} is {size / 2**20:.0f} MiB; transcripts are limited to {max_bytes / 2**20:.0f} MiB")
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise TranscriptError(f"{file} is not UTF-8 text") from exc


def _decode(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise TranscriptError(f"{where} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from exc
    except RecursionError as exc:
        raise TranscriptError(f"{where} is nested too deeply to be a transcript") from exc


def read_transcript(path: str | Path, max_bytes: int = MAX_FILE_BYTES) -> Transcript:
    """One conversation from a JSON file."""
    file = Path(path)
    return parse_transcript(_decode(_read_text(file, max_bytes), str(file)))


def read_transcripts(paths: Sequence[str | Path], max_bytes: int = MAX_FILE_BYTES) -> list[tuple[str, Transcript]]:
    """Every conversation in ``paths``: JSON files (one conversation each), JSONL files (one per non-empty line) and
    folders (their ``*.json`` and ``*.jsonl`` files, sorted by name). Returns ``(name, transcript)`` pairs; a JSONL
    line is named ``file.jsonl:N`` (N counts lines from 1). Any bad conversation raises, naming the file and line."""
    files: list[Path] = []
    for path in paths:
        item = Path(path)
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix in (".json", ".jsonl") and p.is_file())
            if not found:
                raise TranscriptError(f"{item} holds no .json or .jsonl file")
            files.extend(found)
        else:
            files.append(item)
    if not files:
        raise TranscriptError("no transcript given")
    out: list[tuple[str, Transcript]] = []
    for file in files:
        text = _read_text(file, max_bytes)
        if file.suffix != ".jsonl":
            out.append((str(file), _parse_named(_decode(text, str(file)), str(file))))
            continue
        lines = [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
        if not lines:
            raise TranscriptError(f"{file} has no conversation (every line is empty)")
        for n, line in lines:
            name = f"{file}:{n}"
            out.append((name, _parse_named(_decode(line, name), name)))
    return out


def _parse_named(data: Any, name: str) -> Transcript:
    try:
        return parse_transcript(data)
    except TranscriptError as exc:
        raise TranscriptError(f"{name}: {exc}") from exc


def max_context(model: Any) -> int:
    """The model's context length from its config (4096 when it declares none)."""
    config = model.config
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 4096


class _Enough(Exception):
    """Raised by a hook after the last layer a reading needs: the rest of the forward pass is skipped."""


@contextmanager
def _stop_after(model: Any, layer: int, layers_path: str | None) -> Iterator[None]:
    """Skip the decoder layers above ``layer`` and the LM head: no reading needs them."""

    def hook(module: Any, args: object, output: object) -> None:
        raise _Enough

    handle = find_decoder_layers(model, layers_path)[layer].register_forward_hook(hook)
    try:
        yield
    except _Enough:
        pass
    finally:
        handle.remove()


@torch.inference_mode()
def project_transcript(
    loaded: LoadedModel,
    space: Space,
    transcript: Transcript,
    layer: int | None = None,
    *,
    window: int | None = None,
    history: float = 0.5,
    tokens: bool = False,
    allow_window: bool = True,
) -> dict[str, Any]:
    """Per assistant turn: projection on the unit axis at ``layer`` (default the target layer), PCA coordinates
    and nearest archetypes (both at the target layer).

    A conversation that fits the model's context (and ``window``, when given) is read in one pass. A longer one is
    read in windows (:mod:`backend.reading.windows`: the opening and system prompt kept, whole messages, ``history`` the
    share of a window kept as earlier conversation when the window moves); each turn then says how many tokens of
    context it saw and how many messages were left out. ``allow_window=False`` refuses a conversation that does not
    fit instead. ``tokens=True`` adds each assistant token's own projection and text.
    """
    reading = Reading(loaded, space, transcript, layer, window=window, history=history, tokens=tokens, allow_window=allow_window)
    while not reading.step():
        pass
    return reading.result()


class Reading:
    """:func:`project_transcript` as steps of model work, so that a caller can use the model between them.

    Making one encodes the conversation and plans its passes (no model work). Each :meth:`step` reads the next
    ``slice_tokens`` positions (a whole pass when ``None``): a pass longer than that is fed in pieces through a KV cache,
    the readers adding up each piece as it comes (the readings equal one pass's up to float rounding), and short passes
    share a step. No hook stays on the model between steps, so other work may run on it meanwhile (the worker's chat
    turns do: :mod:`backend.worker.engine`). Call every step on one thread, under ``torch.inference_mode``.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        space: Space,
        transcript: Transcript,
        layer: int | None = None,
        *,
        window: int | None = None,
        history: float = 0.5,
        tokens: bool = False,
        allow_window: bool = True,
        slice_tokens: int | None = None,
    ) -> None:
        layer = space.target_layer if layer is None else layer
        if not 0 <= layer < loaded.info.n_layers:
            raise TranscriptError(f"layer {layer} is out of range: the model has layers 0..{loaded.info.n_layers - 1}")
        if slice_tokens is not None and slice_tokens < 1:
            raise TranscriptError(f"a slice must read at least one token, got {slice_tokens}")
        encoded = encode_conversation(loaded.tokenizer, transcript.system, transcript.messages)
        limit = max_context(loaded.model)
        if window is not None and (isinstance(window, bool) or not isinstance(window, int) or not 1 <= window):
            raise TranscriptError(f"the window must be a positive number of tokens, got {window!r}")
        size = limit if window is None else min(window, limit)
        total = len(encoded.input_ids)
        what = "the window" if size < limit else "the model's context"
        if total > size and not allow_window:
            raise TranscriptError(
                f"the conversation is {total} tokens; {what} is {size}. Project it in windows (without --no-window) or "
                "split the transcript: nothing was truncated silently"
            )
        if total <= size:
            self.groups = [(list(encoded.input_ids), 0, list(range(len(encoded.assistant_spans))))]
            self.context = [start for start, _ in encoded.assistant_spans]
            self.first_message = [0] * len(encoded.assistant_spans)
            self.unreadable: dict[int, str] = {}
            self.plan_info: dict[str, Any] = {"windowed": False, "tokens_read": total}
        else:
            self.groups, self.context, self.first_message, self.unreadable, self.plan_info = _windowed_groups(
                loaded, encoded, size, history
            )
        self.loaded, self.space, self.transcript, self.encoded = loaded, space, transcript, encoded
        self.layer, self.size, self.tokens, self.slice_tokens = layer, size, tokens, slice_tokens
        self.layers = sorted({layer, space.target_layer})
        self.unit_axis = space.tensors["axis"][layer] / space.tensors["axis"][layer].norm()
        self.device = next(loaded.model.parameters()).device
        self.cache_kw = "cache" if "cache" in inspect.signature(loaded.model.forward).parameters else "past_key_values"
        self.means: dict[int, torch.Tensor] = {}
        self.per_token: dict[int, list[float]] = {}
        self.tokens_total = self.tokens_left = sum(len(ids) for ids, _, _ in self.groups)  # positions fed to the model
        self._group = 0  # the pass being read
        self._fed = 0  # its positions read so far
        self._readers: tuple[list[Capture], list[Monitor]] | None = None
        self._cache: Any = None  # the pass's KV cache while it is read in pieces

    @property
    def done(self) -> bool:
        return self._group >= len(self.groups)

    def step(self) -> bool:
        """Read up to ``slice_tokens`` more positions (the next whole pass when ``None``); True once all are read."""
        budget = self.slice_tokens
        while not self.done and (budget is None or budget > 0):
            ids, shift, turns = self.groups[self._group]
            if self._readers is None:
                self._readers = self._readers_for(ids, shift, turns)
            end = len(ids) if budget is None else min(len(ids), self._fed + budget)
            if self._cache is None and end < len(ids):  # this pass is read in pieces: keep its keys and values
                from transformers import DynamicCache

                self._cache = DynamicCache(config=self.loaded.model.config)
            captures, monitor = self._readers
            kwargs = {self.cache_kw: self._cache, "use_cache": True} if self._cache is not None else {}
            with (
                intervene(self.loaded.model, *captures, *monitor, layers_path=self.loaded.info.layers_path),
                _stop_after(self.loaded.model, self.layers[-1], self.loaded.info.layers_path),
            ):
                self.loaded.model(input_ids=torch.tensor([ids[self._fed : end]], device=self.device), **kwargs)
            if budget is not None:
                budget -= end - self._fed
            self.tokens_left -= end - self._fed
            self._fed = end
            if end == len(ids):
                self._finish_pass(shift, turns)
            if budget is None:
                break
        return self.done

    def _readers_for(self, ids: list[int], shift: int, turns: list[int]) -> tuple[list[Capture], list[Monitor]]:
        captures = []
        for n in turns:
            start, end = self.encoded.assistant_spans[n]
            mask = torch.zeros((1, len(ids)), dtype=torch.bool)
            mask[0, start - shift : end - shift] = True
            captures.append(Capture(layers=self.layers, mask=mask))
        return captures, [Monitor(self.unit_axis, self.layer)] if self.tokens else []

    def _finish_pass(self, shift: int, turns: list[int]) -> None:
        assert self._readers is not None
        captures, monitor = self._readers
        for n, capture in zip(turns, captures, strict=True):
            self.means[n] = capture.mean()[0]
            if self.tokens:
                start, end = self.encoded.assistant_spans[n]
                self.per_token[n] = monitor[0].readings()[0, start - shift : end - shift].tolist()
        self._group += 1
        self._fed, self._readers, self._cache = 0, None, None

    def result(self) -> dict[str, Any]:
        """What :func:`project_transcript` returns; call it once :meth:`step` has returned True."""
        if not self.done:
            raise TranscriptError(f"the reading is not finished: {self.tokens_left} tokens are left to read")
        encoded, layers, layer, space = self.encoded, self.layers, self.layer, self.space
        assistant_index = [i for i, m in enumerate(self.transcript.messages) if m["role"] == "assistant"]
        placement = Placement(space)
        result_turns = []
        for n, ((start, end), message_index) in enumerate(zip(encoded.assistant_spans, assistant_index, strict=True)):
            entry: dict[str, Any] = {"index": n, "message_index": message_index, "n_tokens": end - start}
            if n in self.means and end > start:
                at_layer, at_target = self.means[n][layers.index(layer)], self.means[n][layers.index(space.target_layer)]
                entry["projection"] = float(at_layer.double() @ self.unit_axis.double())
                entry["pca"] = placement.pca(at_target)
                entry["nearest"] = placement.nearest(at_target)
            else:
                entry["projection"] = None
            if n in self.unreadable:
                entry["error"] = self.unreadable[n]
            else:
                entry["context_tokens"] = self.context[n]
                entry["first_message"] = self.first_message[n]
                entry["left_out_messages"] = self.first_message[n]
            if self.tokens and n in self.per_token:
                entry["token_projections"] = [round(v, 5) for v in self.per_token[n]]
                entry["token_texts"] = [encoded.text[a:b] for a, b in encoded.offsets[start:end]]
            result_turns.append(entry)
        return {
            "model": self.loaded.info.name,
            "space": str(space.path),
            "layer": layer,
            "tokens": len(encoded.input_ids),
            "window": self.size,
            **self.plan_info,
            "transcript_model": self.transcript.model,
            "turns": result_turns,
        }


def _windowed_groups(
    loaded: LoadedModel, encoded: EncodedConversation, size: int, history: float
) -> tuple[list[tuple[list[int], int, list[int]]], list[int], list[int], dict[int, str], dict[str, Any]]:
    """Forward passes for a conversation read in windows: ``(ids, shift, turns)`` per pass, where a full-conversation
    position ``p >= shift`` is position ``p - shift`` of ``ids``; plus each turn's context, first message and errors."""
    try:
        layout = message_layout(loaded.tokenizer, encoded)
        plan = plan_windows(Layout(layout.prefix, layout.starts, layout.roles, len(encoded.input_ids)), size, history)
    except (ChatTemplateError, WindowError) as exc:
        raise TranscriptError(f"cannot read this conversation in windows: {exc}") from exc
    turn_of = {m: n for n, m in enumerate(i for i, r in enumerate(layout.roles) if r == "assistant")}
    ids = encoded.input_ids
    groups = []
    for group in plan.groups:
        window_ids = ids[: layout.prefix] + ids[group.start_token : group.end]
        groups.append((window_ids, group.start_token - layout.prefix, [turn_of[m] for m in group.messages]))
    n_turns = len(turn_of)
    context, first = [0] * n_turns, [0] * n_turns
    for w in plan.windows:  # context: tokens read before the turn's first content token (its header included)
        n = turn_of[w.message]
        context[n] = layout.prefix + encoded.assistant_spans[n][0] - w.start_token
        first[n] = w.first_message
    unreadable = {turn_of[m]: why for m, why in plan.unreadable.items()}
    info = {
        "windowed": True,
        "history": history,
        "tokens_read": plan.tokens_read(layout.prefix),
        "passes": len(plan.groups),
        "system_kept": layout.system_kept,
    }
    return groups, context, first, unreadable, info
