"""Shared fixtures: fresh registries, tiny models, and checkpoints written by quantlinear itself."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import quantlinear
from quantlinear import select
from ql_testmodels import TinyBlock, TinyNet  # noqa: F401  (re-exported for tests)


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
