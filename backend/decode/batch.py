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

Compiled steps (``compiled``: the ready :class:`backend.decode.compiled.CompiledRows`) serve the batch whenever one
fits: its graph is for one shape (``rows`` x ``capacity``), so the cache is then laid out in that step's own static
cache (written in place, where the graph saw it), the rows padded to its row count with spare rows that cap nothing
and attend to their own padding, and the cache as long as its capacity. Before each such step the shadow's row
controls mirror :attr:`Batch.controls` (:meth:`~backend.hooks.rows.RowControls.mirror`) and after it hand back the
step's readouts, so the rest of the batch sees the same controls either way. Where no compiled step fits (more rows,
a longer cache, none ready yet) the step is eager, on a cache sized to what the rows need. The choice is made at
each re-lay, and again once another compiled step becomes ready.

A sliding-window layer whose window is shorter than the cache cannot be re-laid this way (its slots roll):
:meth:`Batch.join` refuses it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from backend.decode.engine import Decoder
from backend.errors import PersonaSpaceError
from backend.hooks.handle import Handle
from backend.hooks.rows import Readouts, RowControls

log = logging.getLogger("persona_space.decode")

if TYPE_CHECKING:
    from backend.decode.compiled import CompiledRows


class Batch:
    """Rows decoded together on one static cache; rows join (:meth:`join`) and leave (:meth:`leave`) between steps.

    ``make_controls(n)`` builds row controls for ``n`` rows (the batch's, and a one-row set for each prompt pass);
    ``None`` for no interventions. Rows are numbered in the order they joined, the ones that left taken out.
    ``compiled()`` lists the compiled steps ready now (see the module; they need row controls).
    """

    def __init__(
        self,
        model: nn.Module,
        make_controls: Callable[[int], RowControls] | None = None,
        *,
        layers_path: str | None = None,
        pad_id: int = 0,
        bucket: int = 64,
        compiled: Callable[[], Sequence[CompiledRows]] | None = None,
    ) -> None:
        self.model = model
        self.compiled = compiled if make_controls is not None else None
        self.on: CompiledRows | None = None  # the compiled step the cache is laid out for (None: eager)
        self.seen = 0  # how many compiled steps were ready at the last re-lay
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
        if self.compiled is not None and len(self.compiled()) != self.seen:  # another compiled step is ready
            if self._fixed_shape(self.rows, self._span() + max(self.left)) is not self.on:
                self._relayout(list(range(self.rows)), None, list(self.left))
        if self.controls is not None:
            self.controls.active.fill_(1.0)  # every row in the batch is generating
        while True:
            if self.on is None:
                self._attach()
                logits = self.decoder.step(list(tokens))
                break
            try:
                logits = self._fixed_step(tokens)
                break
            except Exception as exc:  # never again: this step and the rest of the batch's life go another way
                self.on.abandon(f"{type(exc).__name__}: {exc}")
                log.warning(
                    "the compiled step for %d rows x %d positions failed (%s: %s); the batch steps without it",
                    self.on.rows, self.on.capacity, type(exc).__name__, exc,
                )  # fmt: skip
                self._relayout(list(range(self.rows)), None, list(self.left))  # the step wrote nothing that is kept
        self.left = [n - 1 for n in self.left]
        return logits

    def _fixed_step(self, tokens: Sequence[int]) -> torch.Tensor:
        assert self.controls is not None and self.on is not None
        fixed = self.on.controls
        fixed.mirror(self.controls)  # the spare rows: fresh (no cap, no steering, inactive)
        spare = [self.pad_id] * (self.decoder.rows - self.rows)
        logits = self.decoder.step([*tokens, *spare])[: self.rows]
        self.controls.take_readouts(fixed)
        return logits

    def _span(self) -> int:
        """The filled positions of the longest row (what a re-lay keeps)."""
        d = self.decoder
        if not self.rows or d.mask is None:
            return 0
        return int(d.mask[: self.rows, : d.length].sum(-1).max())

    def _fixed_shape(self, rows: int, positions: int) -> CompiledRows | None:
        """The ready compiled step for ``rows`` rows needing ``positions`` cache positions: the smallest cache, then
        the fewest rows (attention reads the whole cache every step); ``None``: eager."""
        if self.compiled is None:
            return None
        ready = list(self.compiled())
        self.seen = len(ready)
        fitting = [c for c in ready if c.fits(rows, positions)]
        return min(fitting, key=lambda c: (c.capacity, c.rows)) if fitting else None

    def readouts(self) -> Readouts:
        if self.controls is None:
            raise PersonaSpaceError("this batch has no row controls")
        return self.controls.readouts()

    # -------------------------------------------------------------------------------------------------------
    @torch.inference_mode()  # a compiled step's cache was made in inference mode (its warm-up)
    def _relayout(self, keep: list[int], joining: tuple[Any, int] | None, left: list[int]) -> None:
        """A new cache holding rows ``keep`` of the old one (then the joining row's prompt cache, if any), all
        ending at the same slot, no leading slot that every row pads, room for ``max(left)`` more steps; in a
        compiled step's own cache when one fits (see the module)."""
        d = self.decoder
        old_mask = d.mask if self.rows else None
        lengths = [int(old_mask[r, : d.length].sum()) for r in keep] if old_mask is not None else []
        span = max(lengths, default=0)  # the old rows' filled region: [d.length - span, d.length)
        width = max([span] + ([joining[1]] if joining is not None else []))
        rows = len(keep) + (1 if joining is not None else 0)
        if rows == 0:
            d.cache, d.mask, d.length, d.capacity, d.rows, d.step_forward = None, None, 0, 0, 0, None
            self.on, self.left = None, left
            return
        on = self._fixed_shape(rows, width + max(left))
        if on is not None:
            slots, capacity = on.rows, on.capacity
        else:
            slots = rows
            capacity = max(-(-(width + max(left)) // self.bucket) * self.bucket, width + 1)
        from transformers import StaticCache
        from transformers.cache_utils import StaticLayer

        index = torch.tensor(keep, dtype=torch.long, device=d.device)
        old_layers = list(d.cache.layers) if d.cache is not None and keep else None
        # what stays, read before anything is written (a compiled step's cache may be the old cache itself)
        kept = (
            [(o.keys[:, :, d.length - span : d.length].index_select(0, index),
              o.values[:, :, d.length - span : d.length].index_select(0, index)) for o in old_layers]
            if old_layers is not None else None
        )  # fmt: skip
        kept_mask = old_mask.index_select(0, index)[:, d.length - span : d.length] if keep and old_mask is not None else None
        cache: Any = on.cache() if on is not None else StaticCache(config=self.model.config, max_cache_len=capacity)  # type: ignore[arg-type]
        template = old_layers if old_layers is not None else list(cast(Any, joining)[0].layers)
        layers: list[Any] = list(cache.layers)
        for i, layer in enumerate(layers):  # every check before any write: a refused re-lay leaves the batch as it was
            if not isinstance(layer, StaticLayer):
                raise PersonaSpaceError(
                    f"layer {i} of {type(self.model).__name__} has a {type(layer).__name__} cache: rows cannot join a batch"
                )
            if cast(Any, layer).max_cache_len != capacity:
                raise PersonaSpaceError(
                    f"layer {i} of {type(self.model).__name__} keeps a sliding window of {cast(Any, layer).max_cache_len} "
                    f"positions, shorter than the batch's {capacity}: rows cannot join this batch"
                )
        for i, layer in enumerate(layers):
            if on is None:
                like = template[i]
                heads, k_dim, v_dim = like.keys.shape[1], like.keys.shape[-1], like.values.shape[-1]
                layer.lazy_initialization(
                    like.keys.new_zeros(rows, heads, 1, k_dim), like.values.new_zeros(rows, heads, 1, v_dim)
                )
            else:  # a compiled step's cache, initialised by its warm-up: its tensors stay where the graph saw them
                layer.keys.zero_()  # as a new cache starts: nothing of earlier rows, even where masked
                layer.values.zero_()
            if kept is not None:
                layer.keys[: len(keep), :, width - span : width] = kept[i][0]
                layer.values[: len(keep), :, width - span : width] = kept[i][1]
            if joining is not None:
                new, n = joining[0].layers[i], joining[1]
                layer.keys[len(keep), :, width - n : width] = new.keys[0, :, :n]
                layer.values[len(keep), :, width - n : width] = new.values[0, :, :n]
            layer.cumulative_length.fill_(width)
            if hasattr(layer, "cumulative_length_int"):
                layer.cumulative_length_int = width
        # a spare row of a compiled step attends to nothing here; at each step it attends to its own padding
        mask = torch.zeros(slots, capacity, dtype=torch.long, device=d.device)
        if kept_mask is not None:
            mask[: len(keep), width - span : width] = kept_mask
        if joining is not None:
            mask[len(keep), width - joining[1] : width] = 1
        d.cache, d.mask, d.length, d.capacity, d.rows, d.static = cache, mask, width, capacity, slots, True
        d.step_forward = on.step.forward if on is not None else None
        self.on, self.left = on, left


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
