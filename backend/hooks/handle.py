"""The handle of registered hooks: ``remove()`` takes every one of them off, and never hides the first failure."""

from __future__ import annotations

from torch import nn
from torch.utils.hooks import RemovableHandle


class Handle:
    """Hooks registered on ``model``. ``remove()`` takes them all off (idempotent); a context manager too.

    Every hook goes into :attr:`handles` the moment it is registered, so a failure half-way through a registration
    can still remove the ones already in.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.handles: list[RemovableHandle] = []

    def remove(self) -> None:
        first: BaseException | None = None
        while self.handles:
            handle = self.handles.pop()
            try:
                handle.remove()
            except Exception as exc:  # keep removing the others; report the first failure after
                first = first or exc
        if first is not None:
            raise first

    def __enter__(self) -> Handle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
