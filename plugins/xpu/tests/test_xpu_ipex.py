"""xpu.ipex: selected only when intel-extension-for-pytorch matches torch's minor; never imported otherwise."""

from __future__ import annotations

import importlib
import sys

import pytest
import torch

import quantlinear
from quantlinear import LayerSpec, Scheme, select_kernel
from quantlinear.quantize import quantize_weight

import fake_xpu
from fake_xpu import FakeProcessExit, fake_ipex, simulate_xpu
from quantlinear_xpu.kernels.int4_onednn import Int4OneDNNLinear
from quantlinear_xpu.kernels.ipex_woq import IPEXWeightOnlyLinear, ipex_api

TORCH_MINOR = ".".join(torch.__version__.split(".")[:2])


@pytest.fixture(autouse=True)
def _fresh_ipex_probe():
    ipex_api.cache_clear()
    yield
    ipex_api.cache_clear()


def _spec(bits=4, group=128, sym=True, dtype=torch.float16, K=512, N=128, fmt="gptq"):
    return LayerSpec(Scheme(bits=bits, group_size=group, sym=sym), fmt, K, N, False, dtype, "cpu", False, "layer")


def test_not_installed_is_a_clear_reason():
    with simulate_xpu():
        v = IPEXWeightOnlyLinear.can_implement(_spec())
    assert not v and "intel-extension-for-pytorch is not installed" in v.reason and "xpu.int4" in v.reason


def test_version_mismatch_is_refused_without_importing_ipex():
    with simulate_xpu(), fake_ipex("2.8.10+xpu"):
        v = IPEXWeightOnlyLinear.can_implement(_spec())
        assert not v
        assert "2.8.10+xpu is built for torch 2.8.*" in v.reason and torch.__version__ in v.reason
        assert "os._exit" in v.reason and "archived" in v.reason
        assert "intel_extension_for_pytorch" not in sys.modules and fake_xpu.IPEX_IMPORT_EXITS == []
        # what quantlinear avoided: importing this build ends the process (the fake raises instead)
        with pytest.raises(FakeProcessExit):
            importlib.import_module("intel_extension_for_pytorch")
        assert fake_xpu.IPEX_IMPORT_EXITS == ["2.8.10+xpu"]
    fake_xpu.IPEX_IMPORT_EXITS.clear()


def test_cpu_build_of_ipex_is_refused():
    with simulate_xpu(), fake_ipex(f"{TORCH_MINOR}.0+cpu"):
        v = IPEXWeightOnlyLinear.can_implement(_spec())
    assert not v and "CPU build" in v.reason


def test_broken_ipex_import_is_a_reason(tmp_path):
    with simulate_xpu(), fake_ipex(f"{TORCH_MINOR}.10+xpu", tmp_path) as site:
        (site / "intel_extension_for_pytorch" / "__init__.py").write_text("raise ImportError('libsycl.so.8: cannot open shared object file')\n")
        v = IPEXWeightOnlyLinear.can_implement(_spec())
    assert not v and "importing intel_extension_for_pytorch" in v.reason and "libsycl.so.8" in v.reason


@pytest.mark.parametrize("group", [32, 128, -1])
@pytest.mark.parametrize("sym", [True, False], ids=["sym-gptq-path", "asym-awq-path"])
def test_matching_ipex_numerics(sym, group):
    K, N = 256, 64
    scheme = Scheme(bits=4, group_size=group, sym=sym)
    w = quantize_weight(torch.randn(N, K, generator=torch.Generator().manual_seed(0)) * 0.05, scheme)
    spec = LayerSpec(scheme, "awq" if not sym else "gptq", K, N, True, torch.float16, "cpu", False, "layer")
    bias = torch.randn(N, generator=torch.Generator().manual_seed(1)).to(torch.float16)
    with simulate_xpu(), fake_ipex(f"{TORCH_MINOR}.10+xpu"):
        layer = IPEXWeightOnlyLinear.from_weights(spec, w, bias)
        x = torch.randn(3, K).to(torch.float16)
        y = layer(x)
    ref = x.float() @ w.dequantize(spec.group_size).t() + bias.float()
    err = float((y.float() - ref).abs().max() / ref.abs().max())
    assert y.dtype == torch.float16 and err < 1e-2, err
    impl = layer.ipex_linear.woq_linear_impl
    assert impl.qweight.shape == (K // 8, N)  # GPTQ order inside IPEX for both paths
    assert (impl.qzeros.numel() == 1) == sym  # GPTQ path: IPEX's scalar zero point 8


def test_gptq_path_would_be_wrong_for_asym_zeros():
    """The fake reproduces IPEX's 'GPTQ means symmetric': zeros passed to GPTQ_GEMM are ignored."""
    K, N = 128, 32
    w = quantize_weight(torch.randn(N, K, generator=torch.Generator().manual_seed(0)), Scheme(bits=4, group_size=64, sym=False))
    spec = LayerSpec(Scheme(bits=4, group_size=64, sym=False), "gptq", K, N, False, torch.float16, "cpu", False, "l")
    with simulate_xpu(), fake_ipex(f"{TORCH_MINOR}.10+xpu"):
        from quantlinear.formats import get_format

        cls, qm, qd = ipex_api()[0]
        t = get_format("gptq").pack(w, spec)
        mod = cls.from_weight(t["qweight"], t["scales"], t["qzeros"], K, N, group_size=64, quant_method=qm.GPTQ_GEMM, dtype=qd.INT4)
        x = torch.randn(2, K).to(torch.float16)
        err = float((mod(x).float() - x.float() @ w.dequantize(64).t()).abs().max())
    assert err > 1e-2


def test_auto_prefers_upstream_op_and_ipex_can_be_forced():
    import quantlinear_xpu.plugin as plugin

    reg = quantlinear.Registry(entry_points=False)
    reg.register(plugin, "xpu")
    with simulate_xpu(), fake_ipex(f"{TORCH_MINOR}.10+xpu"):
        sel = select_kernel(_spec(), registry=reg)
        assert sel.kernel is Int4OneDNNLinear
        assert {c.kernel: c.verdict.ok for c in sel.candidates}["xpu.ipex"] is True
        assert select_kernel(_spec(), "xpu.ipex", registry=reg).kernel is IPEXWeightOnlyLinear
        v = IPEXWeightOnlyLinear.can_implement(_spec(dtype=torch.bfloat16))
        assert not v and "bfloat16" in v.reason
