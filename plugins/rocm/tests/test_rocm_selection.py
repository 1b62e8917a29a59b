"""Kernel selection on simulated ROCm devices, per gfx architecture, and the CUDA/ROCm boundary both ways."""

import importlib.metadata
import subprocess
import sys

import pytest
import torch

import quantlinear_cuda.plugin as cuda_plugin
import quantlinear_rocm.plugin as rocm_plugin
from quantlinear import LayerSpec, Registry, Scheme, explain, select_kernel
from quantlinear.select import clear_cache
from quantlinear_cuda import device as cuda_device
from quantlinear_cuda.device import DeviceProps
from quantlinear_rocm import device as rocm_device
from quantlinear_rocm.kernels.tinygemm import RocmTinyGemmLinear
from quantlinear_rocm.kernels.triton_wna16 import RocmTritonLinear

from fake_rocm import simulate_rocm


@pytest.fixture
def reg():
    clear_cache()
    r = Registry(entry_points=False)
    r.register(rocm_plugin, "rocm")
    r.register(cuda_plugin, "cuda")
    yield r
    clear_cache()


def spec(dtype=torch.bfloat16, bits=4, group=128, sym=True, K=4096, N=4096, device="cuda"):
    return LayerSpec(Scheme(bits=bits, group_size=group, sym=sym), "gptq", K, N, dtype=dtype, device=torch.device(device))


def verdicts(reg, s):
    sel = select_kernel(s, registry=reg, raise_on_none=False)
    return sel.kernel.name if sel.kernel else None, {c.kernel: c.verdict for c in sel.candidates}


def test_plugin_and_entry_points(reg):
    assert [k.name for k in rocm_plugin.quantlinear_kernels()] == ["rocm.triton", "rocm.tinygemm", "rocm.fp8_scaled_mm",
                                                                       "rocm.triton_fp"]
    eps = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="quantlinear.plugins")}
    assert eps.get("rocm") == "quantlinear_rocm.plugin"
    # the shared library registers nothing
    dist = importlib.metadata.distribution("quantlinear-triton")
    assert not [ep for ep in dist.entry_points if ep.group == "quantlinear.plugins"]
    assert "quantlinear-triton" in " ".join(importlib.metadata.requires("quantlinear-rocm"))
    assert "quantlinear-triton" in " ".join(importlib.metadata.requires("quantlinear-cuda"))


@pytest.mark.parametrize("arch", ["gfx90a", "gfx942", "gfx950"])
def test_cdna_takes_triton_and_has_tinygemm(reg, arch):
    with simulate_rocm(arch, cpu_is_rocm=False):
        chosen, v = verdicts(reg, spec(torch.bfloat16))
        assert chosen == "rocm.triton"
        assert v["rocm.tinygemm"]
        assert "runs on cuda, not rocm" in v["cuda.triton"].reason and "runs on cuda, not rocm" in v["cuda.tinygemm"].reason
        chosen, v = verdicts(reg, spec(torch.float16, bits=3, group=-1, sym=False))
        assert chosen == "rocm.triton" and "bfloat16" in v["rocm.tinygemm"].reason


@pytest.mark.parametrize("arch", ["gfx1100", "gfx1201"])
def test_rdna_takes_triton_not_tinygemm(reg, arch):
    with simulate_rocm(arch, cpu_is_rocm=False):
        chosen, v = verdicts(reg, spec(torch.bfloat16))
        assert chosen == "rocm.triton"
        assert not v["rocm.tinygemm"] and "RDNA" in v["rocm.tinygemm"].reason


@pytest.mark.parametrize("arch,why", [("gfx906", "no matrix cores"), ("gfx908", "CDNA1")])
def test_unsupported_archs_refused_with_reasons(reg, arch, why):
    with simulate_rocm(arch, cpu_is_rocm=False):
        chosen, v = verdicts(reg, spec(torch.float16))
        assert chosen is None
        assert why in v["rocm.triton"].reason and arch in v["rocm.triton"].reason
        assert "CDNA2" in v["rocm.tinygemm"].reason or "bfloat16" in v["rocm.tinygemm"].reason
        v = RocmTinyGemmLinear.can_implement(spec(torch.bfloat16))
        assert not v and "isCDNA2orLater" in v.reason
        assert "rocm.triton" in explain(spec(torch.float16), registry=reg)


def test_unknown_arch_gets_the_generic_reason(reg):
    with simulate_rocm("gfx942", cpu_is_rocm=False) as rt:
        rt.props = rt.props.__class__(**{**rt.props.__dict__, "gcnArchName": "gfx1250"})
        v = RocmTritonLinear.can_implement(spec())
        assert not v and "no launch-configuration table" in v.reason and "gfx942" in v.reason


def test_cuda_plugin_never_claims_rocm(reg):
    """ROCm build (torch.version.hip set): the core maps 'cuda' devices to family rocm; the CUDA checks refuse too."""
    with simulate_rocm("gfx942", cpu_is_rocm=False):
        from quantlinear_cuda.kernels.tinygemm import TinyGemmLinear
        from quantlinear_cuda.kernels.triton_wna16 import TritonWNA16Linear

        for k in (TritonWNA16Linear, TinyGemmLinear):
            assert "runs on cuda, not rocm" in k.can_implement(spec()).reason
            assert "ROCm" in k.check(spec()).reason


def test_rocm_plugin_never_claims_cuda(reg, monkeypatch):
    """CUDA build (torch.version.hip unset) with an H100: the ROCm kernels refuse by family and in their own check."""
    monkeypatch.setattr(cuda_device, "device_props", lambda d: DeviceProps("NVIDIA H100 80GB HBM3", (9, 0), sm_count=132))
    monkeypatch.setattr(cuda_device, "triton_available", lambda: True)
    with simulate_rocm("gfx942", cpu_is_rocm=False, ops=False, hip=None):
        chosen, v = verdicts(reg, spec(torch.bfloat16))
        assert chosen == "cuda.triton"
        for k in (RocmTritonLinear, RocmTinyGemmLinear):
            assert "runs on rocm, not cuda" in v[k.name].reason
            assert "not a ROCm build" in k.check(spec()).reason


def test_cpu_layers_are_not_rocm_layers(reg, monkeypatch):
    """Without the simulation's family mapping a CPU layer is family cpu; the stand-in switch alone changes nothing."""
    monkeypatch.setattr(torch.version, "hip", "6.4", raising=False)
    for k in (RocmTritonLinear, RocmTinyGemmLinear):
        v = k.can_implement(spec(device="cpu"))
        assert not v and "not cpu" in v.reason
    monkeypatch.setattr(rocm_device, "CPU_STANDS_IN", False)
    with pytest.raises(RuntimeError, match="not a ROCm device"):
        rocm_device.device_props("cpu")


def test_triton_missing_and_no_device(reg, monkeypatch):
    with simulate_rocm("gfx942", cpu_is_rocm=False):
        monkeypatch.setattr(rocm_device, "triton_available", lambda: False)
        clear_cache()
        chosen, v = verdicts(reg, spec(torch.bfloat16))
        assert chosen == "rocm.tinygemm" and "Triton is not installed" in v["rocm.triton"].reason
    monkeypatch.setattr(torch.version, "hip", "6.4", raising=False)  # a ROCm build whose runtime has no GPU
    v = RocmTritonLinear.can_implement(spec())
    assert not v and "no ROCm device" in v.reason


def test_plugin_imports_without_triton():
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import quantlinear_rocm.plugin as p\n"
        "ks = p.quantlinear_kernels()\n"
        "import quantlinear_rocm.ops, quantlinear_rocm.tune, quantlinear_rocm.fp8\n"
        "print('OK', [k.name for k in ks])\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "OK ['rocm.triton', 'rocm.tinygemm', 'rocm.fp8_scaled_mm', 'rocm.triton_fp']" in r.stdout
