"""An outside author's tests: the conformance kit, plus discovery through the entry point."""

import quantlinear
from quantlinear.testing import KernelConformance
from quantlinear_example.kernels.grouped import GroupedIntMatmul


class TestGroupedIntMatmul(KernelConformance):
    kernels = [GroupedIntMatmul]
    device = "cpu"


def test_installed_plugin_is_discovered_and_loads():
    reg = quantlinear.Registry()
    assert reg.plugin("example") is not None, "pip install -e examples/plugin-template first"
    rec = reg.load("example")
    assert rec.state == "loaded", rec.error
    assert [k.name for k in rec.kernels] == ["example.grouped"]


def test_auto_prefers_in_tree_kernels_until_the_user_promotes_it(monkeypatch):
    import torch

    spec = quantlinear.LayerSpec(quantlinear.get_scheme("W4A16"), "gptq", 256, 64, False, torch.float32, "cpu", False, "l")
    reg = quantlinear.Registry()
    assert quantlinear.select_kernel(spec, registry=reg).kernel.name != "example.grouped"
    monkeypatch.setenv("QUANTLINEAR_PRIORITY", "example.grouped=1000")
    assert quantlinear.select_kernel(spec, registry=reg).kernel is GroupedIntMatmul
