"""A running batch that rows join and leave between decode steps, each row equal to its own single-row run.

:class:`Batch` keeps every row right-aligned on one static KV cache (left padding, as
:class:`backend.decode.engine.Decoder` lays out a batch whose prompts differ in length; each row's positions count only
its own tokens). A row joins with :meth:`Batch.join`: its prompt is read alone (a one-row pass on a cache of its
own, with a one-row :class:`backend.hooks.rows.RowControls` set up like the row), and its keys and values are copied
into the batch's cache at the right-hand end, the others moved left or right so that all end at the same slot. A row
leaves with :meth:`Batch.leave`; the leading padding no row needs any more is dropped then. Each change re-lays the
cache once (a copy of the filled positions), sized to what the rows can still need (their token budgets), so a
step attends to no more than the longest row can reach.

The rows' controls are one :class:`~backend.hooks.rows.RowControls` (:attr:`Batch.controls`) regrouped with the
rows (:meth:`~backend.hooks.rows.RowControls.regroup`): a control change still overwrites a row's tensors in place
and applies from the next step. Readouts of a row's prompt pass are in that row of :attr:`Batch.controls` right
after :meth:`Batch.join` (read them before the next step).

Eager only: the number of rows changes, and a compiled step's graph is for one batch shape. A sliding-window layer
whose window is shorter than the cache cannot be re-laid this way (its slots roll): :meth:`Batch.join` refuses it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
from torch import nn

from backend.decode.engine import Decoder
from backend.errors import PersonaSpaceError
from backend.hooks.handle import Handle
from backend.hooks.rows import Readouts, RowControls


class Batch:
    """Rows decoded together on one static cache; rows join (:meth:`join`) and leave (:meth:`leave`) between steps.

    ``make_controls(n)`` builds row controls for ``n`` rows (the batch's, and a one-row set for each prompt pass);
    ``None`` for no interventions. Rows are numbered in the order they joined, the ones that left taken out.
    """

    def __init__(
        self,
        model: nn.Module,
        make_controls: Callable[[int], RowControls] | None = None,
        *,
        layers_path: str | None = None,
        pad_id: int = 0,
        bucket: int = 64,
    ) -> None:
        self.model = model
        self.layers_path = layers_path
        self.pad_id = pad_id
        self.bucket = max(1, int(bucket))  # capacity rounded up to a multiple of this
        self.make_controls = make_controls
        self.controls = make_controls(1) if make_controls is not None else None
        if self.controls is not None:
            self.controls.regroup([])
        self.prefill = make_controls(1) if make_controls is not None else None
        self.decoder = Decoder(model, self.controls, layers_path=layers_path, pad_id=pad_id)
        self.left: list[int] = []  # per row: how many more tokens it may feed
        self.handle: Handle | None = None

    @property
    def rows(self) -> int:
        return len(self.left)

    @property
    def length(self) -> int:
        """Positions filled in the cache (padding included): every row ends there."""
        return self.decoder.length if self.rows else 0

    def close(self) -> None:
        """Take the batch's hooks off the model (the batch can be used again: the next step attaches them)."""
        if self.handle is not None:
            self.handle.remove()
            self.handle = None

    def _attach(self) -> None:
        if self.handle is None and self.controls is not None:
            self.handle = self.controls.attach(self.model, self.layers_path)

    # -------------------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def join(
        self,
        prompt: Sequence[int],
        new_tokens: int,
        configure: Callable[[RowControls, int], None] | None = None,
    ) -> tuple[int, torch.Tensor]:
        """Read ``prompt`` as a new last row that may feed up to ``new_tokens`` tokens; ``configure(controls, row)``
        sets its cap and steering (called on the prompt pass's controls, before it runs). Returns the row's index
        and the logits ``(vocab,)`` after its prompt."""
        if not prompt:
            raise PersonaSpaceError("every row needs a non-empty prompt")
        if new_tokens < 0:
            raise PersonaSpaceError(f"new_tokens must be >= 0, got {new_tokens}")
        if self.prefill is not None:
            self.prefill.regroup([None])  # a fresh row: nothing of the last prompt's settings
            if configure is not None:
                configure(self.prefill, 0)
        self.close()  # the prompt pass runs with its own one-row controls only
        alone = Decoder(self.model, self.prefill, layers_path=self.layers_path, pad_id=self.pad_id)
        handle = self.prefill.attach(self.model, self.layers_path) if self.prefill is not None else None
        try:
            logits = alone.start([prompt], 0)
        finally:
            if handle is not None:
                handle.remove()
        if not alone.static:
            raise PersonaSpaceError(f"{type(self.model).__name__} cannot decode on a static cache: rows cannot join a batch")
        keep = list(range(self.rows))
        self._relayout(keep, (alone.cache, len(prompt)), [*self.left, new_tokens])
        if self.controls is not None and self.prefill is not None:
            self.controls.regroup([*keep, None])
            self.controls.copy_row(self.rows - 1, self.prefill, 0)
        return self.rows - 1, logits[0]

    def leave(self, rows: Sequence[int]) -> None:
        """Take ``rows`` out of the batch (the others keep their order and renumber)."""
        gone = set(rows)
        if not gone:
            return
        if any(not 0 <= r < self.rows for r in gone):
            raise PersonaSpaceError(f"rows {sorted(gone)} are not all in 0..{self.rows - 1}")
        keep = [r for r in range(self.rows) if r not in gone]
        self._relayout(keep, None, [self.left[r] for r in keep])
        if self.controls is not None:
            self.controls.regroup(keep)
        if not keep:
            self.close()  # an empty batch leaves the model as it found it

    def extend(self, row: int, new_tokens: int) -> None:
        """Let ``row`` feed up to ``new_tokens`` more tokens from now (its limit was raised), re-laying the cache
        when it has no room for them."""
        if not 0 <= row < self.rows:
            raise PersonaSpaceError(f"row {row} is not in 0..{self.rows - 1}")
        self.left[row] = max(0, int(new_tokens))
        if self.decoder.length + max(self.left) > self.decoder.capacity:
            self._relayout(list(range(self.rows)), None, list(self.left))

    @torch.inference_mode()
    def step(self, tokens: Sequence[int]) -> torch.Tensor:
        """Feed one token per row; returns the next logits ``(rows, vocab)``. Readouts: :meth:`readouts`."""
        if len(tokens) != self.rows or not self.rows:
            raise PersonaSpaceError(f"{len(tokens)} tokens for a batch of {self.rows} rows")
        if any(n <= 0 for n in self.left):
            raise PersonaSpaceError("a row fed past its token budget: let it leave first")
        self._attach()
        if self.controls is not None:
            self.controls.active.fill_(1.0)  # every row in the batch is generating
        logits = self.decoder.step(list(tokens))
        self.left = [n - 1 for n in self.left]
        return logits

    def readouts(self) -> Readouts:
        if self.controls is None:
            raise PersonaSpaceError("this batch has no row controls")
        return self.controls.readouts()

    # -------------------------------------------------------------------------------------------------------
    def _relayout(self, keep: list[int], joining: tuple[Any, int] | None, left: list[int]) -> None:
        """A new cache holding rows ``keep`` of the old one (then the joining row's prompt cache, if any), all
        ending at the same slot, no leading slot that every row pads, room for ``max(left)`` more steps."""
        d = self.decoder
        old_mask = d.mask if self.rows else None
        lengths = [int(old_mask[r, : d.length].sum()) for r in keep] if old_mask is not None else []
        span = max(lengths, default=0)  # the old rows' filled region: [d.length - span, d.length)
        width = max([span] + ([joining[1]] if joining is not None else []))
        rows = len(keep) + (1 if joining is not None else 0)
        self.left = left
        if rows == 0:
            d.cache, d.mask, d.length, d.capacity, d.rows = None, None, 0, 0, 0
            return
        capacity = -(-(width + max(left)) // self.bucket) * self.bucket
        capacity = max(capacity, width + 1)
        from transformers import StaticCache
        from transformers.cache_utils import StaticLayer

        cache: Any = StaticCache(config=self.model.config, max_cache_len=capacity)  # type: ignore[arg-type]
        sources = [d.cache.layers if d.cache is not None and keep else None, joining[0].layers if joining else None]
        template = next(s for s in sources if s is not None)
        index = torch.tensor(keep, dtype=torch.long, device=d.device)
        layers: list[Any] = list(cache.layers)
        for i, layer in enumerate(layers):
            if not isinstance(layer, StaticLayer):
                raise PersonaSpaceError(
                    f"layer {i} of {type(self.model).__name__} has a {type(layer).__name__} cache: rows cannot join a batch"
                )
            layer = cast(Any, layer)  # its tensors exist once initialised below
            if layer.max_cache_len != capacity:
                raise PersonaSpaceError(
                    f"layer {i} of {type(self.model).__name__} keeps a sliding window of {layer.max_cache_len} positions, "
                    f"shorter than the batch's {capacity}: rows cannot join this batch"
                )
            like = template[i]
            heads, k_dim, v_dim = like.keys.shape[1], like.keys.shape[-1], like.values.shape[-1]
            layer.lazy_initialization(like.keys.new_zeros(rows, heads, 1, k_dim), like.values.new_zeros(rows, heads, 1, v_dim))
            if keep and sources[0] is not None:
                old = sources[0][i]
                for mine, theirs in ((layer.keys, old.keys), (layer.values, old.values)):
                    mine[: len(keep), :, width - span : width] = theirs[:, :, d.length - span : d.length].index_select(0, index)
            if joining is not None:
                new, n = joining[0].layers[i], joining[1]
                layer.keys[-1, :, width - n : width] = new.keys[0, :, :n]
                layer.values[-1, :, width - n : width] = new.values[0, :, :n]
            layer.cumulative_length.fill_(width)
            if hasattr(layer, "cumulative_length_int"):
                layer.cumulative_length_int = width
        mask = torch.zeros(rows, capacity, dtype=torch.long, device=d.device)
        if keep and old_mask is not None:
            mask[: len(keep), width - span : width] = old_mask.index_select(0, index)[:, d.length - span : d.length]
        if joining is not None:
            mask[-1, width - joining[1] : width] = 1
        d.cache, d.mask, d.length, d.capacity, d.rows, d.static = cache, mask, width, capacity, rows, True


def unjoinable(model: nn.Module, capacity: int) -> str | None:
    """Why rows cannot join a :class:`Batch` of ``model`` whose cache may reach ``capacity`` positions (``None``: they
    can): a cache layer that is not a plain static one, or a sliding window shorter than ``capacity``."""
    from transformers import StaticCache
    from transformers.cache_utils import StaticLayer

    try:
        cache: Any = StaticCache(config=model.config, max_cache_len=capacity)  # type: ignore[arg-type]
    except Exception as exc:  # a config StaticCache cannot read
        return f"no static cache ({type(exc).__name__}: {exc})"
    for i, layer in enumerate(cache.layers):
        if not isinstance(layer, StaticLayer):
            return f"layer {i} has a {type(layer).__name__} cache"
        if layer.max_cache_len != capacity:
            return f"layer {i} keeps a sliding window of {layer.max_cache_len} positions, shorter than {capacity}"
    return None
