"""torch_npu discovery: no import side effects, a broken install is a failed plugin, CPU use goes on."""

from __future__ import annotations

import sys

import pytest
import torch

import quantlinear
from quantlinear import LayerSpec, Scheme, select_kernel

from fake_torch_npu import broken_torch_npu, simulate_npu
import quantlinear_npu.runtime as runtime
from quantlinear_npu.kernels.wqbmm import WeightQuantBatchMatmulLinear as WQBMM

pytestmark = pytest.mark.skipif("torch_npu" in sys.modules or runtime.installed(),
                                reason="a real torch_npu is installed here; these tests model machines without it")


def _spec(device="cpu", bits=4):
    return LayerSpec(Scheme(bits=bits, group_size=128), "gptq", 512, 256, False, torch.float16, device, False, "layer")


def _npu_family():
    mp = pytest.MonkeyPatch()
    real = quantlinear.devices.device_family
    fam = lambda d: "npu" if torch.device(d).type == "cpu" else real(d)  # noqa: E731
    mp.setattr(quantlinear.devices, "device_family", fam)
    mp.setattr(quantlinear.select, "device_family", fam)
    return mp


def test_not_installed_is_a_reason_and_nothing_is_imported():
    mp = _npu_family()
    try:
        v = WQBMM.can_implement(_spec())
    finally:
        mp.undo()
    assert not v and "torch_npu is not installed" in v.reason
    assert runtime.import_torch_npu() is None and "torch_npu" not in sys.modules


def test_plugin_modules_import_without_touching_torch_npu(tmp_path):
    """In a fresh interpreter with a (broken) torch_npu installed but autoload off: importing the
    plugin and its kernel module imports nothing from torch_npu, and a check only gives a reason."""
    import os
    import subprocess

    with broken_torch_npu(tmp_path) as site:
        code = (
            "import sys, torch, quantlinear\n"
            "import quantlinear_npu.plugin, quantlinear_npu.runtime as rt\n"
            "from quantlinear_npu.kernels.wqbmm import WeightQuantBatchMatmulLinear as K\n"
            "assert 'torch_npu' not in sys.modules and rt.installed()\n"
            "ok, why = rt.status()\n"
            "assert not ok and 'installed but not imported' in why, why\n"
            "assert 'torch_npu' not in sys.modules\n"
            "print('clean')\n"
        )
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]), TORCH_DEVICE_BACKEND_AUTOLOAD="0")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "clean", out.stderr[-2000:]


def test_broken_torch_npu_is_a_failed_plugin_and_auto_on_cpu_still_works(tmp_path):
    with broken_torch_npu(tmp_path):
        reg = quantlinear.Registry()  # the installed entry points, as `quantlinear doctor` sees them
        assert reg.plugin("npu") is not None and reg.plugin("cpu") is not None
        # auto on the CPU never imports the NPU plugin
        sel = select_kernel(_spec(), registry=reg)
        assert sel.kernel.name.startswith("cpu.")
        assert reg.plugin("npu").state == "available" and "torch_npu" not in sys.modules
        # loading it (doctor, backend="npu") reports the import failure with its cause
        rec = reg.load("npu")
        assert rec.state == "failed" and rec.kernels == []
        assert "libhccl.so" in rec.error and "CANN" in rec.error and "torch_npu is installed but cannot be imported" in rec.error
        quantlinear.select.clear_cache()
        sel = select_kernel(_spec(), registry=reg)
        assert sel.kernel.name.startswith("cpu.")
        assert any("plugin 'npu' failed" in n and "libhccl.so" in n for n in sel.notes)
        with pytest.raises(quantlinear.NoKernelError, match="libhccl.so"):
            select_kernel(_spec(), "npu.wqbmm", registry=reg)


def test_working_torch_npu_loads_the_plugin():
    with simulate_npu():
        reg = quantlinear.Registry(entry_points=False)
        import quantlinear_npu.plugin as plugin

        rec = reg.register(plugin, "npu")
        assert rec.state == "loaded" and [k.name for k in rec.kernels] == ["npu.wqbmm"]
