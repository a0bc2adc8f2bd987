"""One decode engine: batched rows with left padding on a static (preallocated) KV cache, live per-row controls.

:class:`Decoder` runs a model's forward pass one step at a time for a batch of rows whose prompts may differ in
length (left padding; each row's positions count only its own tokens, so row ``i`` of a batch equals its
single-row run). The KV cache is a ``transformers`` ``StaticCache`` sized to ``width + max_new_tokens``: no
allocation per token. Interventions are a :class:`backend.hooks.rows.RowControls` attached to the model while the
decoder runs: its tensors are overwritten in place between steps and its readouts are copied once per step.

The one-token step may be compiled (``torch.compile``, :class:`CompiledStep`, in a background thread; pass its
``forward`` as ``step_forward`` once ``ready``; the prompt's forward pass stays eager, so one graph serves every
prompt length of a given batch size and cache capacity). Row controls must be attached with the same hook functions
each time (:meth:`backend.hooks.rows.RowControls.attach` does) so a compiled step is not retraced; a live control change
only overwrites tensors. The worker's compiled step is :mod:`backend.decode.compiled` (a shadow of the model with its
own row controls, compiled while the worker serves eagerly). On a CPU every ``nn.Linear`` is routed through
:mod:`backend.kernels.small_batch` (few-row products as ``W @ x^T``). An architecture whose forward pass
does not accept a static cache falls back to the model's own dynamic cache, with one log line saying why.

:func:`generate_rows` is the one decode loop (greedy or any chooser): the builder, the cap evaluation, chat replies and
the worker's turns run on it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from backend.errors import PersonaSpaceError
from backend.hooks.rows import Readouts, RowControls
from backend.kernels import small_batch

log = logging.getLogger("persona_space.decode")

Forward = Callable[..., Any]


def _accepts(model: nn.Module, name: str) -> bool:
    import inspect

    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def use_inductor_cache(folder: str) -> None:
    """Point inductor's on-disk cache at ``folder`` unless the user chose one (``TORCHINDUCTOR_CACHE_DIR``).

    Loading a model already makes torch fill in its default (a folder under /tmp, emptied at reboot), so a variable
    equal to that default counts as unset.
    """
    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir

        default: str | None = os.path.abspath(default_cache_dir())
    except ImportError:  # another torch layout: only an unset variable is ours to set
        default = None
    if current is None or os.path.abspath(current) == default:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder


class CompiledStep:
    """A ``torch.compile``\\ d single-token forward pass, compiled in a background thread.

    ``forward`` is the model's eager forward until the compiled one has run once on a private warm-up cache of the
    same shapes; then it is the compiled one. Inductor's on-disk cache (``TORCHINDUCTOR_CACHE_DIR``, under the
    persona-space cache folder unless set) makes later processes compile much faster. A compile failure leaves the
    eager forward in place and logs one line.
    """

    def __init__(
        self,
        model: nn.Module,
        warm_up: Callable[[Forward], None],
        cache_dir: str | None = None,
        mode: str | None = None,
    ) -> None:
        if cache_dir is not None:
            use_inductor_cache(cache_dir)
        self.model = model
        self.mode = mode  # a torch.compile mode, e.g. "reduce-overhead" (CUDA graphs; bench/decode.py --cuda-graphs)
        self.forward: Forward = model.__call__
        self.ready = threading.Event()
        self.error: str | None = None
        self.seconds: float | None = None
        self._warm_up = warm_up
        self.thread = threading.Thread(target=self._compile, name="compile-step", daemon=True)

    def start(self) -> CompiledStep:
        self.thread.start()
        return self

    def _compile(self) -> None:
        t0 = time.perf_counter()
        try:
            on_cpu = next(self.model.parameters()).device.type == "cpu"
            # a C++ wrapper around the kernels: the Python one costs ~2 ms of a ~29 ms two-row step on this CPU
            if self.mode is not None:
                compiled = torch.compile(self.model, mode=self.mode, dynamic=False, fullgraph=False)
            else:
                compiled = torch.compile(self.model, dynamic=False, fullgraph=False, options={"cpp_wrapper": on_cpu})
            with torch.inference_mode():
                self._warm_up(compiled)
            self.forward = compiled
            self.seconds = time.perf_counter() - t0
            log.info("compiled decode step ready after %.1f s", self.seconds)
        except Exception as exc:  # serve eagerly: slower, never wrong
            self.error = f"{type(exc).__name__}: {exc}"
            log.warning("compiling the decode step failed, staying eager: %s", self.error)
        finally:
            self.ready.set()


class Decoder:
    """Batched decoding of ``model`` on a static KV cache with per-row live controls.

    Use :meth:`start` with the rows' prompts (token ids), then :meth:`step` with one token per row; both return
    the last position's logits ``(rows, vocab)`` (float32, on the model's device). After each call,
    :meth:`readouts` copies that forward call's readouts to the CPU.
    """

    def __init__(
        self,
        model: nn.Module,
        controls: RowControls | None = None,
        *,
        layers_path: str | None = None,
        pad_id: int = 0,
        static: bool = True,
        step_forward: Forward | None = None,
        cache_pool: dict[tuple[int, int], Any] | None = None,
        bucket: int = 1,
    ) -> None:
        self.model = model
        self.controls = controls
        self.layers_path = layers_path
        self.pad_id = pad_id
        self.static = static
        self.step_forward = step_forward
        self.cache_pool = cache_pool  # caches kept across decoders, by (rows, capacity): a compiled step reuses them
        self.bucket = max(1, int(bucket))  # capacity rounded up to a multiple of this (fewer shapes to compile)
        self.device = next(model.parameters()).device
        if self.device.type == "cpu":
            small_batch.install(model)  # idempotent; one or a few rows' products at the weights' streaming rate
        self.cache_kw = "cache" if _accepts(model, "cache") else "past_key_values"
        self.logits_kw = {"logits_to_keep": 1} if _accepts(model, "logits_to_keep") else {}
        self.cache: Any = None
        self.mask: torch.Tensor | None = None
        self.length = 0  # positions filled in the cache (padding included)
        self.capacity = 0
        self.rows = 0

    # -------------------------------------------------------------------------------------------------------
    def _new_cache(self, capacity: int) -> Any:
        from transformers import StaticCache

        key = (self.rows, capacity)
        if self.cache_pool is not None and key in self.cache_pool:
            cache = self.cache_pool[key]
            cache.reset()
            return cache
        cache = StaticCache(config=self.model.config, max_cache_len=capacity)  # type: ignore[arg-type]
        if self.cache_pool is not None:
            self.cache_pool[key] = cache
        return cache

    @torch.inference_mode()
    def start(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> torch.Tensor:
        if not prompts or any(len(p) == 0 for p in prompts):
            raise PersonaSpaceError("every row needs a non-empty prompt")
        if self.controls is not None and self.controls.rows != len(prompts):
            raise PersonaSpaceError(f"{len(prompts)} prompts for row controls of {self.controls.rows} rows")
        self.rows = len(prompts)
        width = max(len(p) for p in prompts)
        self.capacity = -(-(width + max_new_tokens) // self.bucket) * self.bucket
        ids = torch.full((self.rows, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros(self.rows, self.capacity, dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(list(p), dtype=torch.long)
            mask[i, width - len(p) : width] = 1
        self.mask = mask.to(self.device)
        self.length = width
        if self.controls is not None:
            self.controls.reset_readouts()
            self.controls.active.zero_()  # the prompt is not captured
        self.cache = None
        if self.static:
            try:
                self.cache = self._new_cache(self.capacity)
                return self._forward(ids.to(self.device), self.model, first=True)
            except Exception as exc:
                log.warning("static KV cache unsupported for %s (%s): using the dynamic cache", type(self.model).__name__, exc)
                self.static = False
                self.cache = None
                if self.controls is not None:
                    self.controls.reset_readouts()
        return self._forward(ids.to(self.device), self.model, first=True)

    def _forward(self, ids: torch.Tensor, forward: Forward, first: bool = False) -> torch.Tensor:
        assert self.mask is not None
        n = ids.shape[1]
        end = self.length if first else self.length + n
        mask = self.mask if self.static else self.mask[:, :end]
        filled = self.mask[:, :end]
        # a fresh contiguous tensor: a slice's strides change every step, and a compiled step guards on them
        positions = (filled.cumsum(-1) - 1).clamp_min(0)[:, end - n : end].clone(memory_format=torch.contiguous_format)
        kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "position_ids": positions, "use_cache": True}
        if self.cache is not None:
            kwargs[self.cache_kw] = self.cache
        out = forward(**kwargs, **self.logits_kw)
        if not self.static:
            self.cache = out["cache"] if "cache" in out else out.past_key_values
        return out.logits[:, -1].float()

    @torch.inference_mode()
    def step(self, tokens: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Feed one token per row (a finished row may be fed any token, e.g. padding) and return the next logits."""
        assert self.mask is not None
        if self.length >= self.capacity:
            raise PersonaSpaceError(f"the decoder's cache is full ({self.capacity} positions)")
        ids = torch.as_tensor(tokens, dtype=torch.long).reshape(self.rows, 1).to(self.device)
        self.mask[:, self.length] = 1
        forward = self.step_forward if (self.static and self.step_forward is not None) else self.model
        logits = self._forward(ids, forward)
        self.length += 1
        return logits

    def readouts(self) -> Readouts:
        if self.controls is None:
            raise PersonaSpaceError("this decoder has no row controls")
        return self.controls.readouts()


def generate_rows(
    decoder: Decoder,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    stop_ids: set[int] | frozenset[int] = frozenset(),
    choose: Callable[[int, torch.Tensor], Sequence[int | None]] | None = None,
    on_step: Callable[[int, list[int | None], Readouts | None], None] | None = None,
    layers_path: str | None = None,
    feed_last: bool = True,
    stop: Callable[[], bool] | None = None,
    attach: bool = True,
) -> list[list[int]]:
    """Decode every row until it emits a stop id or ``max_new_tokens`` tokens; greedy unless ``choose`` is given.

    This is the one decode loop: the builder, the cap evaluation, :func:`backend.decode.generate.generate_reply` and
    the worker's turns all run on it.

    ``choose(index, logits)`` returns one token per row, or ``None`` for a row that ends here without a token (the
    caller's own limit). ``on_step(index, tokens, readouts)`` runs after the forward pass over token ``index``
    (``tokens[i]`` is ``None`` for a finished row), with that pass's readouts. ``feed_last=False`` skips the
    forward pass over the last token (nothing reads it). Once ``stop()`` is true, no further token is chosen (the
    rows keep what they have). ``attach=False``: the decoder's row controls are attached already (a compiled
    step's shadow holds its own for good).
    """
    controls = decoder.controls
    handle = controls.attach(decoder.model, layers_path) if controls is not None and attach else None
    try:
        logits = decoder.start(prompts, max_new_tokens)
        out: list[list[int]] = [[] for _ in prompts]
        done = [False] * len(prompts)
        for index in range(max_new_tokens):
            if stop is not None and stop():
                break
            picked = choose(index, logits) if choose is not None else logits.argmax(-1).tolist()
            fed: list[int | None] = []
            for i, token in enumerate(picked):
                if not done[i] and (token is None or token in stop_ids):
                    done[i] = True
                if done[i] or token is None:
                    fed.append(None)
                    if controls is not None:
                        controls.set_active(i, False)
                else:
                    out[i].append(int(token))
                    fed.append(int(token))
                    if controls is not None:
                        controls.set_active(i, True)
            if all(done) or (not feed_last and index == max_new_tokens - 1):
                break
            logits = decoder.step([decoder.pad_id if t is None else t for t in fed])
            if on_step is not None:
                on_step(index, fed, decoder.readouts() if controls is not None else None)
        return out
    finally:
        if handle is not None:
            handle.remove()
