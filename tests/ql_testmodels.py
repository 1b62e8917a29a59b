"""Tiny models and a fake kernel body shared by the core tests (a uniquely named module:
``conftest`` is ambiguous once several test folders have one)."""

from __future__ import annotations

import torch
from torch import nn

from quantlinear import QuantLinear


class DenseKernel(QuantLinear):
    """Shared body of the fake kernels: dequantize once, matmul (subclasses give the name and capabilities)."""

    abstract = True
    device_families = frozenset({"cpu"})
    bits = frozenset({4})

    def prepare(self, w):
        self.register_buffer("w", w.dequantize(self.spec.group_size, self.spec.dtype))

    def compute(self, x):
        return x @ self.w.t()


class TinyBlock(nn.Module):
    def __init__(self, d: int = 64, hidden: int = 128) -> None:
        super().__init__()
        self.up = nn.Linear(d, hidden, bias=True)
        self.down = nn.Linear(hidden, d, bias=False)

    def forward(self, x):
        return x + self.down(torch.nn.functional.gelu(self.up(x)))


class TinyNet(nn.Module):
    """Embedding, a ModuleList of blocks (AutoRound's "block" notion), a tied head."""

    def __init__(self, vocab: int = 96, d: int = 64, hidden: int = 128, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(TinyBlock(d, hidden) for _ in range(layers))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.embed.weight  # tied
        self.register_buffer("position_scale", torch.linspace(1.0, 2.0, d), persistent=False)

    def forward(self, ids):
        x = self.embed(ids) * self.position_scale
        for blk in self.layers:
            x = blk(x)
        return self.head(self.norm(x))
