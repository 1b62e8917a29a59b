"""The CPU floating-point / microscaling kernels: the float conformance kit, plus their own paths."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import quantlinear as ql
from quantlinear import fpquant
from quantlinear.scheme import PRESETS, Scheme
from quantlinear.testing import Case
from quantlinear.testing_fp import FloatKernelConformance, build_float_layer, float_reference, rel_err
from quantlinear_cpu.kernels import floatbase
from quantlinear_cpu.kernels.fp8 import FP8Linear, FP8ScaledMMLinear
from quantlinear_cpu.kernels.mxfp import MXLinear
from quantlinear_cpu.kernels.nvfp4 import NVFP4Linear

KERNELS = [MXLinear, NVFP4Linear, FP8Linear, FP8ScaledMMLinear]
EXPECTED = {"MXFP4": ("cpu.mx", "mxfp4"), "MXFP4_RCEIL": ("cpu.mx", "mxfp4"), "MXFP8": ("cpu.mx", "mxfp8"),
            "MXINT4": ("cpu.mx", "mxint4"), "NVFP4": ("cpu.nvfp4", "nvfp4"), "FPW8A16": ("cpu.fp8", "fp8"),
            "FP8_STATIC": ("cpu.fp8", "fp8")}


class TestCPUFloatKernels(FloatKernelConformance):
    kernels = KERNELS
    device = "cpu"


@pytest.fixture
def registry():
    import quantlinear_cpu.plugin as cpu_plugin

    reg = ql.Registry(entry_points=False)
    reg.register(cpu_plugin, "cpu")
    return reg


@pytest.mark.parametrize("preset", list(EXPECTED))
def test_auto_picks_the_float_kernel_and_int_kernels_say_why_not(registry, preset):
    kernel, fmt = EXPECTED[preset]
    spec = ql.LayerSpec(PRESETS[preset], fmt, 256, 128, False, torch.bfloat16, "cpu", False, "m.proj")
    sel = ql.select_kernel(spec, "auto", registry=registry)
    assert sel.kernel.name == kernel
    report = sel.report()
    assert "cpu.dequant" in report and f"data_type={PRESETS[preset].data_type} not supported" in report


def test_float_kernels_reject_what_they_cannot_run_with_reasons():
    mx_static = Scheme(4, 32, True, "mx_fp", 4, "mx_fp", 32, True, False)
    v = MXLinear.can_implement(ql.LayerSpec(mx_static, "mxfp4", 64, 32))
    assert not v and "act_dynamic" in v.reason
    v = FP8Linear.can_implement(ql.LayerSpec(PRESETS["FP8_BLOCK"], "fp8", 256, 256))
    assert not v and "group_size" in v.reason
    v = NVFP4Linear.can_implement(ql.LayerSpec(PRESETS["MXFP4"], "mxfp4", 64, 32))
    assert not v and "data_type=mx_fp" in v.reason
    v = MXLinear.can_implement(ql.LayerSpec(PRESETS["MXFP4"], "mxfp4", 48, 32))
    assert not v and "in_features=48" in v.reason
    fp8_dyn = Scheme(8, -1, True, "fp", 8, "fp", 0, True, True)
    v = FP8Linear.can_implement(ql.LayerSpec(fp8_dyn, "fp8", 64, 32))
    assert not v and "dynamic FP8" in v.reason
    v = FP8ScaledMMLinear.can_implement(ql.LayerSpec(PRESETS["FPW8A16"], "fp8", 64, 32))
    assert not v and "weight-only" in v.reason


def _case(kernel, preset, dtype=torch.float32, K=256, N=96, bias=True, weight_only=False):
    from dataclasses import replace

    scheme = replace(PRESETS[preset], act_bits=16) if weight_only else PRESETS[preset]
    return Case(kernel, ql.LayerSpec(scheme, EXPECTED[preset][1], K, N, bias, dtype, "cpu", False, "t.proj"))


@pytest.mark.parametrize("kernel,preset", [(MXLinear, "MXFP4"), (MXLinear, "MXFP8"), (NVFP4Linear, "NVFP4"), (FP8Linear, "FPW8A16")])
def test_row_blocked_decode_equals_one_block(monkeypatch, kernel, preset):
    case = _case(kernel, preset)
    whole, w, bias = build_float_layer(case)
    monkeypatch.setattr(floatbase, "BLOCK_ELEMENTS", 256 * 7)  # 7 rows per block: a partial last block
    blocked, _, _ = build_float_layer(case)
    assert blocked.block_rows == 7 and whole.block_rows >= case.spec.out_features
    x = torch.randn(5, case.spec.in_features)
    torch.testing.assert_close(blocked(x), whole(x), rtol=1e-5, atol=1e-5)  # GEMM shapes differ: fp32 rounding only
    assert rel_err(blocked(x), float_reference(x, w, case.spec, bias)) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fp8_static_kernels_exact_values_and_autoround_rounding(dtype):
    case = _case(FP8Linear, "FP8_STATIC", dtype, bias=False)
    layer, w, _ = build_float_layer(case)
    x = (torch.randn(7, case.spec.in_features, generator=torch.Generator().manual_seed(2)) * 2).to(dtype)
    x8 = fpquant.fp8_static_quantize_input(x, w.input_scale).double() * w.input_scale.double()
    exact = x8 @ w.dequantize().double().t()
    y = layer(x)
    assert rel_err(y, exact) <= {torch.float32: 1e-6, torch.bfloat16: 8e-3, torch.float16: 2e-3}[dtype]
    if dtype == torch.bfloat16:  # AutoRound's bf16 computation (WeightFP8ActFP8StaticQuantLinear), bit for bit
        wq = w.codes.view(torch.float8_e4m3fn).to(dtype) * w.raw_scales.unsqueeze(1)
        assert torch.equal(y, F.linear(fpquant.fp8_static_qdq(x, w.input_scale), wq))
    if not hasattr(torch, "_scaled_mm"):
        return
    mm = FP8ScaledMMLinear.from_weights(case.spec, w)
    y2 = mm(x)  # both operands FP8, fp32 accumulation, one rounding
    assert rel_err(y2, exact) <= {torch.float32: 1e-6, torch.bfloat16: 4e-3, torch.float16: 1e-3}[dtype]


def test_mx_activation_quantization_is_applied():
    case = _case(MXLinear, "MXFP4", bias=False)
    layer, w, _ = build_float_layer(case)
    x = torch.randn(3, case.spec.in_features, generator=torch.Generator().manual_seed(3))
    y = layer(x)
    with_qdq = fpquant.mx_qdq(x, "e2m1") @ w.dequantize().t()
    without = x @ w.dequantize().t()
    assert rel_err(y, with_qdq) < 1e-5 and rel_err(y, without) > 1e-2
