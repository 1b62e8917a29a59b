"""Buffers that live as long as the process, one per device, grown outside CUDA-graph capture and never freed.

Why: two hot paths want scratch memory without an allocation (or a fill kernel) per call -- the split-K workspace of
the Triton kernels (:func:`.kernels.split_buffers`) and the all-ones ``scale_a`` column of the FP8 layers
(:func:`.scaled_mm.unit_rows`).  Both hand out a view of one buffer per device and grow it when a call needs more.
A CUDA graph captured with a view reads or writes that memory at every replay, so a buffer is never freed once
handed out: the one it replaces is kept in :attr:`GrowingBuffers.retired`.  While a graph is being captured a
buffer is not replaced (an allocation there would come from the graph's private pool); the caller makes a
temporary instead.  Imports no Triton (the FP8 layers run without it).
"""

from __future__ import annotations

from typing import Callable, Hashable

import torch


class GrowingBuffers:
    """One buffer per key (a device), made by ``make(size, device)``; ``grow(need, old_size)`` says the new size when
    the current one (``old_size``, 0 if none) is shorter than ``need`` along dimension 0; ``capturing(key, device)``
    says whether a graph is being captured there (asked only when a buffer must grow: the per-call path is one
    lookup)."""

    def __init__(self, make: Callable[[int, torch.device], torch.Tensor], grow: Callable[[int, int], int],
                 capturing: Callable[[Hashable, torch.device], bool]):
        self._make, self._grow, self._capturing = make, grow, capturing
        #: the buffer each key hands out now
        self.current: dict[Hashable, torch.Tensor] = {}
        #: every buffer a larger one replaced (a captured graph may still use it)
        self.retired: list[torch.Tensor] = []

    def get(self, key: Hashable, need: int, device: torch.device) -> torch.Tensor | None:
        """The key's buffer, at least ``need`` long, grown if needed; None if it must grow during a capture."""
        buf = self.current.get(key)
        if buf is not None and buf.shape[0] >= need:
            return buf
        if self._capturing(key, device):
            return None
        old = 0 if buf is None else buf.shape[0]
        if buf is not None:
            self.retired.append(buf)
        buf = self.current[key] = self._make(self._grow(need, old), device)
        return buf

    def tensors(self) -> list[torch.Tensor]:
        """Every buffer ever handed out (for :class:`.launch.Replay`'s constants)."""
        return [*self.current.values(), *self.retired]


__all__ = ["GrowingBuffers"]
