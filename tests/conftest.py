"""Shared fixtures: fresh registries, tiny models, and checkpoints written by quantlinear itself."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import quantlinear
from quantlinear import select


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


@pytest.fixture(autouse=True)
def _clear_selection_cache():
    select.clear_cache()
    yield
    select.clear_cache()


@pytest.fixture
def cpu_registry():
    """A registry holding only the in-tree CPU plugin, registered in-process."""
    import quantlinear_cpu.plugin as cpu_plugin

    reg = quantlinear.Registry(entry_points=False)
    reg.register(cpu_plugin, "cpu")
    return reg


@pytest.fixture
def tiny_net():
    torch.manual_seed(0)
    return TinyNet().eval()


@pytest.fixture
def tiny_ckpt(tmp_path, tiny_net):
    """TinyNet quantized to W4A16 g32 by quantlinear's own AutoRound-format writer."""
    out = quantlinear.save_quantized(tiny_net, tmp_path / "w4", quantlinear.Scheme(bits=4, group_size=32), skip=("head",))
    return out
