"""A kernel that reads its weights ahead of the previous kernel's end (``reads_weights_early``: programmatic dependent
launch with loads before the grid-dependency wait) must never follow the kernel that wrote them: the layer waits for
every write of its tensors (``prepare``, a state-dict copy into a prepared layer) at load time."""
from __future__ import annotations

import torch

from ql_testmodels import DenseKernel
from quantlinear import LayerSpec, Scheme
from quantlinear.testing import Case, build_layer


class EarlyReader(DenseKernel):
    name = "testplug.early"
    reads_weights_early = True


class PlainReader(EarlyReader):
    name = "testplug.plain"
    reads_weights_early = False


SPEC = LayerSpec(Scheme(bits=4, group_size=32), "gptq", 64, 32, False, torch.float32, "cpu", False, "layer0")
ACCEL = torch.device("cuda", 1)


def _record_syncs(monkeypatch, kernel):
    calls = []
    monkeypatch.setattr(torch.accelerator, "synchronize", lambda device=None: calls.append(device))
    monkeypatch.setattr(kernel, "_tensor_devices", lambda self: {ACCEL})
    return calls


def test_a_layer_that_reads_weights_early_waits_for_its_repack_and_for_state_dict_copies(monkeypatch):
    calls = _record_syncs(monkeypatch, EarlyReader)
    layer, _, _ = build_layer(Case(EarlyReader, SPEC))
    assert calls == [ACCEL]  # after prepare
    layer.load_state_dict({k: v.clone() for k, v in layer.state_dict().items()})
    assert calls == [ACCEL, ACCEL]  # the copy into the prepared buffers


def test_other_layers_never_synchronize(monkeypatch):
    calls = _record_syncs(monkeypatch, PlainReader)
    layer, _, _ = build_layer(Case(PlainReader, SPEC))
    layer.load_state_dict({k: v.clone() for k, v in layer.state_dict().items()})
    assert calls == []


def test_a_cpu_layer_has_no_device_to_wait_for():
    layer, _, _ = build_layer(Case(EarlyReader, SPEC))
    assert layer._tensor_devices() == set()
