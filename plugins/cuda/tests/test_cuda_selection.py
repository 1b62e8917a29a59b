"""Kernel selection with simulated device properties (runs on CPU-only CI)."""

import subprocess
import sys

import pytest
import torch

import quantlinear_cuda.plugin as cuda_plugin
from quantlinear import LayerSpec, Scheme, explain, select_kernel
from quantlinear.select import clear_cache
from quantlinear_cuda import device as cuda_device
from quantlinear_cuda.device import DeviceProps

from cuda_testutil import SM70, SM75, SM80, SM90, simulate  # the `reg` fixture: conftest.py


def spec(dtype=torch.float16, bits=4, group=128, sym=True, K=4096, N=4096):
    return LayerSpec(Scheme(bits=bits, group_size=group, sym=sym), "gptq", K, N, dtype=dtype, device=torch.device("cuda"))


def verdicts(reg, s):
    sel = select_kernel(s, registry=reg, raise_on_none=False)
    return sel.kernel.name if sel.kernel else None, {c.kernel: c.verdict for c in sel.candidates}


def test_plugin_loads_and_names(reg):
    assert [k.name for k in reg.kernels()] == ["cuda.triton", "cuda.tinygemm", "cuda.fp8_scaled_mm", "cuda.scaled_mm_mx",
                                                 "cuda.triton_fp", "cuda.triton_gguf"]
    assert cuda_plugin.quantlinear_benchmark("cpu") is None
    assert callable(cuda_plugin.quantlinear_benchmark("cuda"))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_sm90_picks_triton(monkeypatch, reg, dtype):
    simulate(monkeypatch, SM90)
    chosen, v = verdicts(reg, spec(dtype))
    assert chosen == "cuda.triton"
    assert bool(v["cuda.tinygemm"]) == (dtype == torch.bfloat16)
    if dtype == torch.float16:
        assert "bfloat16" in v["cuda.tinygemm"].reason


def test_sm75_rejects_bf16_and_tinygemm(monkeypatch, reg):
    simulate(monkeypatch, SM75)
    chosen, v = verdicts(reg, spec(torch.float16))
    assert chosen == "cuda.triton"
    chosen, v = verdicts(reg, spec(torch.bfloat16))
    assert chosen is None
    assert "8.0" in v["cuda.triton"].reason and "sm75" in v["cuda.triton"].reason
    assert "8.0" in v["cuda.tinygemm"].reason
    # tinygemm also refuses fp16 layers here, for the dtype
    assert not v["cuda.tinygemm"]


def test_sm70_too_old_for_triton(monkeypatch, reg):
    simulate(monkeypatch, SM70)
    chosen, v = verdicts(reg, spec(torch.float16))
    assert chosen is None
    assert "7.5" in v["cuda.triton"].reason


def test_triton_missing_falls_back_to_tinygemm(monkeypatch, reg):
    simulate(monkeypatch, SM80, triton=False)
    chosen, v = verdicts(reg, spec(torch.bfloat16))
    assert chosen == "cuda.tinygemm"
    assert "Triton is not installed" in v["cuda.triton"].reason
    chosen, v = verdicts(reg, spec(torch.float16))
    assert chosen is None


def test_rocm_rejected(monkeypatch, reg):
    simulate(monkeypatch, SM90)
    monkeypatch.setattr(torch.version, "hip", "6.2.41133", raising=False)
    clear_cache()
    s = spec(torch.bfloat16)
    # the core maps ROCm devices to family "rocm": the cuda kernels never claim them
    from quantlinear_cuda.kernels.tinygemm import TinyGemmLinear
    from quantlinear_cuda.kernels.triton_wna16 import TritonWNA16Linear

    for k in (TritonWNA16Linear, TinyGemmLinear):
        v = k.can_implement(s)
        assert not v and "rocm" in v.reason
        v = k.check(s)  # and their own check says why, too
        assert not v and "ROCm" in v.reason


def test_hip_device_props_rejected(monkeypatch, reg):
    simulate(monkeypatch, DeviceProps("AMD Instinct MI300X", (9, 4), hip=True))
    chosen, v = verdicts(reg, spec(torch.bfloat16))
    assert chosen is None and "ROCm" in v["cuda.triton"].reason and "ROCm" in v["cuda.tinygemm"].reason


def test_scheme_limits(monkeypatch, reg):
    simulate(monkeypatch, SM90)
    _, v = verdicts(reg, spec(bits=5))
    assert "bits=5" in v["cuda.triton"].reason
    _, v = verdicts(reg, spec(group=40))
    assert "group_size=40" in v["cuda.triton"].reason
    chosen, v = verdicts(reg, spec(torch.bfloat16, bits=8))
    assert chosen == "cuda.triton" and "bits=8" in v["cuda.tinygemm"].reason
    chosen, _ = verdicts(reg, spec(torch.float16, bits=3, group=-1, sym=False))
    assert chosen == "cuda.triton"
    text = explain(spec(torch.float16, bits=5), registry=reg)
    assert "cuda.triton" in text and "cuda.tinygemm" in text


def test_no_gpu_reason(monkeypatch, reg):
    def boom(device):
        raise RuntimeError("no CUDA device is available")

    monkeypatch.setattr(cuda_device, "device_props", boom)
    clear_cache()
    _, v = verdicts(reg, spec(torch.bfloat16))
    assert "no CUDA device" in v["cuda.triton"].reason and "no CUDA device" in v["cuda.tinygemm"].reason


def test_cpu_interpret_switch_is_opt_in(monkeypatch):
    from quantlinear_cuda.kernels.triton_wna16 import TritonWNA16Linear

    cpu = LayerSpec(Scheme(bits=4, group_size=128), "gptq", 256, 64, device=torch.device("cpu"))
    monkeypatch.setattr(cuda_device, "CPU_INTERPRET", False)
    v = TritonWNA16Linear.can_implement(cpu)
    assert not v and "not cpu" in v.reason
    monkeypatch.setattr(cuda_device, "CPU_INTERPRET", True)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not TritonWNA16Linear.can_implement(cpu)  # only ever with the interpreter on
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert TritonWNA16Linear.can_implement(cpu)


def test_plugin_imports_without_triton():
    """Importing the plugin and listing kernels never imports Triton; a missing Triton is a verdict."""
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, importlib.util\n"
        "import quantlinear_cuda.plugin as p\n"
        "ks = p.quantlinear_kernels()\n"
        "import quantlinear_cuda.ops, quantlinear_cuda.tune, quantlinear_cuda.bench\n"
        "from quantlinear_cuda import device\n"
        "device.device_props = lambda d: device.DeviceProps('H100', (9, 0))\n"
        "from quantlinear import LayerSpec, Scheme\n"
        "s = LayerSpec(Scheme(), 'gptq', 4096, 4096, dtype=torch.bfloat16, device=torch.device('cuda'))\n"
        "v = ks[0].can_implement(s)\n"
        "assert not v and 'Triton is not installed' in v.reason, v\n"
        "print('OK', [k.name for k in ks])\n"
    )
    env_code = "import os; os.environ.pop('TRITON_INTERPRET', None)\n" + code
    r = subprocess.run([sys.executable, "-c", env_code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "OK ['cuda.triton', 'cuda.tinygemm', 'cuda.fp8_scaled_mm', 'cuda.scaled_mm_mx', 'cuda.triton_fp', 'cuda.triton_gguf']" in r.stdout
