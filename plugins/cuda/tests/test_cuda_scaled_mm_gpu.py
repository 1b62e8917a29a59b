"""``cuda.fp8_scaled_mm`` (and, on Blackwell, ``cuda.scaled_mm_mx``) on a real GPU: numerics, torch.compile, CUDA graphs.

Skipped without an FP8-capable CUDA GPU (the CPU-side tests are in test_cuda_scaled_mm.py).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from quantlinear import PRESETS, LayerSpec, fpquant
from quantlinear.testing_fp import float_reference, format_for

from cuda_testutil import GPU, capture_graph

if GPU:
    from quantlinear_cuda.fp8_act_ops import FP8_QUANT_OP

CAP = torch.cuda.get_device_capability() if GPU else (0, 0)
pytestmark = pytest.mark.skipif(not GPU or CAP < (8, 9), reason="needs an FP8 CUDA GPU (sm89 or sm90+)")
DEV = torch.device("cuda")


@pytest.fixture(autouse=True)
def exact_accumulation(monkeypatch):
    """These tests hold ``_scaled_mm`` to fp32-exact sums (``QUANTLINEAR_FP8_FAST_ACCUM=0``); the default, fast
    accumulation, has its own test (:func:`test_fast_accum_by_default`)."""
    monkeypatch.setenv("QUANTLINEAR_FP8_FAST_ACCUM", "0")


def fp8_layer(K, N, dtype, gs=-1, bias=False, seed=0):
    from quantlinear_cuda.kernels.scaled_mm_fp8 import FP8ScaledMMLinear

    g = torch.Generator(device=DEV).manual_seed(seed)
    w = torch.randn(N, K, generator=g, device=DEV) * 0.05
    w[:, ::7] *= 4.0
    spec = LayerSpec(replace(PRESETS["FP8_STATIC"], group_size=gs), "fp8", K, N, bias, dtype, DEV, False, "gpu")
    fw = fpquant.quantize_float(w.to(torch.bfloat16), spec.scheme, act_amax=6.0)
    fw.input_scale = fw.input_scale.to(DEV)
    b = (torch.randn(N, generator=g, device=DEV) * 0.1).to(dtype) if bias else None
    return FP8ScaledMMLinear.from_weights(spec, fw, b), fw, b, spec


def check_close(y, x, fw, b, dtype):
    """Exact result (fp64) rounded to the output dtype, up to one ulp and the FP8 tensor cores' accumulation."""
    a = fpquant.fp8_static_quantize_input(x, fw.input_scale).double() * fw.input_scale.double()
    W = fw.dequantize().double()
    ref = a @ W.t() + (0 if b is None else b.double())
    mag = a.abs() @ W.abs().t()
    ulp = {torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}[dtype]
    bad = (y.double() - ref).abs() > ref.abs() * ulp + mag * 2.0**-12
    assert not bool(bad.any()), f"{int(bad.sum())} elements off; max err {float((y.double() - ref).abs().max())}"
    return float((y.double() - ref).abs().max() / ref.abs().max())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("gs", [-1, 0])
@pytest.mark.parametrize("bias", [False, True])
def test_numerics(dtype, gs, bias):
    layer, fw, b, spec = fp8_layer(1024, 768, dtype, gs, bias)
    assert layer.plan == ("tensorwise" if gs == 0 else "rowwise")
    for M in (1, 16, 255, 1024):
        x = torch.randn(M, 1024, device=DEV, dtype=dtype) * 2
        err = check_close(layer(x), x, fw, b, dtype)
        assert err < {torch.float16: 2e-3, torch.bfloat16: 8e-3}[dtype]
    ref = float_reference(x, fw, spec, b)  # the conformance kit's reference, fp32
    assert float((layer(x).float() - ref).abs().max() / ref.abs().max()) < {torch.float16: 2e-3, torch.bfloat16: 8e-3}[dtype]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_small_m_gemv_and_slab_ordered_scaled_mm(dtype):
    """M <= 32 (K > N here) runs cuda.triton_fp's FP8 GEMV, larger M _scaled_mm on the same bytes (slab order,
    K=1040 padded to 1152), both within an ulp of the exact result; the same codes and weight either side of the limit."""
    layer, fw, b, _ = fp8_layer(1040, 384, dtype, -1, True)
    assert layer.small_m == 32 and layer.slab == 32 and layer.w_fp8.shape == (384, 1152)
    for M in (1, 5, 16, 32, 33, 64):
        x = torch.randn(M, 1040, device=DEV, dtype=dtype) * 2
        x[0, :4] = torch.tensor([1e4, -1e4, 0.0, -0.0])
        check_close(layer(x), x, fw, b, dtype)


def test_fold_plan_numerics(monkeypatch):
    from quantlinear_cuda.kernels import scaled_mm_fp8

    monkeypatch.setattr(scaled_mm_fp8, "torch_version", lambda: (2, 9))
    for dtype in (torch.float16, torch.bfloat16):
        layer, fw, b, _ = fp8_layer(512, 256, dtype, -1, True)
        assert layer.plan == "fold"
        x = torch.randn(33, 512, device=DEV, dtype=dtype)
        check_close(layer(x), x, fw, b, dtype)


def every_value(dtype):
    """All 65536 bit patterns of a 16-bit dtype (NaN and +-inf included) as a [256, 256] CUDA matrix."""
    return torch.arange(-(2**15), 2**15, dtype=torch.int32, device=DEV).to(torch.int16).view(dtype).reshape(256, 256)


def assert_same_codes(got, ref, fnuz=False):
    """Equal bytes; a NaN where the reference has one (torch's NaN sign depends on its code path)."""
    g, r = got.view(torch.uint8), ref.view(torch.uint8)
    nan = r == 0x80 if fnuz else (r & 0x7F) == 0x7F
    assert torch.equal(g == 0x80 if fnuz else (g & 0x7F) == 0x7F, nan), "NaN positions differ"
    bad = (g != r) & ~nan
    assert not bool(bad.any()), f"{int(bad.sum())} codes differ: got {g[bad][:8].tolist()} want {r[bad][:8].tolist()}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_compile_fullgraph(dtype):
    layer, fw, b, _ = fp8_layer(1024, 512, dtype, -1, True)
    assert layer.act_quant == "triton"
    x = torch.randn(64, 1024, device=DEV, dtype=dtype)
    x[0, :4] = torch.tensor([1e4, -1e4, 0.0, -0.0])
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True)
    y = compiled(x)
    check_close(y, x, fw, b, dtype)
    torch.testing.assert_close(y, layer(x), atol=0, rtol=2**-7)  # the same FP8 codes; the GEMM is the same aten call
    x8 = torch.compile(lambda t: FP8_QUANT_OP(t, layer.input_scale, False), fullgraph=True)(x)
    assert torch.equal(x8.view(torch.uint8), fpquant.fp8_static_quantize_input(x, fw.input_scale).view(torch.uint8))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("sdt", [torch.float16, torch.bfloat16, torch.float32])
def test_fused_quantization_is_bit_exact(dtype, sdt):
    """The fused op, eager and under torch.compile(fullgraph), gives the reference's codes for every value of the dtype
    (fn; and fnuz, as the ROCm plugin calls it, with the doubled scale)."""
    x = every_value(dtype)
    torch._dynamo.reset()
    f = torch.compile(lambda t, s, fnuz: FP8_QUANT_OP(t, s, fnuz), fullgraph=True)
    for s in (0.011, 3.0, 2.0**-10, 300.0):
        st = torch.tensor([s], dtype=sdt, device=DEV)
        ref = fpquant.fp8_static_quantize_input(x, st)
        assert_same_codes(FP8_QUANT_OP(x, st, False), ref)
        assert_same_codes(f(x, st, False), ref)
        ref_nuz = torch.clamp(x / (st * 2), -224, 224).to(torch.float8_e4m3fnuz)
        assert_same_codes(FP8_QUANT_OP(x, st * 2, True), ref_nuz, fnuz=True)
        assert_same_codes(f(x, st * 2, True), ref_nuz, fnuz=True)
    assert_same_codes(FP8_QUANT_OP(x[:, 16:], st, False), fpquant.fp8_static_quantize_input(x[:, 16:], st))  # row stride > K


@pytest.mark.xfail(strict=False, reason="the torch-ops fallback under Inductor: emulate_precision_casts=False drops the "
                                        "quotient's fp16/bf16 rounding (H100, torch 2.11); the layer uses the fused op")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_compiled_torch_fallback_quantization(dtype):
    from quantlinear_cuda.kernels.scaled_mm_fp8 import quantize_static

    v = every_value(dtype)
    x = torch.where(torch.isfinite(v), v, torch.zeros_like(v))
    torch._dynamo.reset()
    f = torch.compile(quantize_static, fullgraph=True)
    st = torch.tensor([0.011], dtype=dtype, device=DEV)
    assert torch.equal(f(x, st).view(torch.uint8), fpquant.fp8_static_quantize_input(x, st).view(torch.uint8))


def test_fast_accum_by_default(monkeypatch):
    """The default (fast accumulation): within the FP8 tensor cores' reduced-precision sums, far inside the error of the
    activations' E4M3 rounding."""
    from quantlinear_cuda.kernels import scaled_mm_fp8

    monkeypatch.delenv(scaled_mm_fp8.FAST_ACCUM_ENV, raising=False)
    layer, fw, b, _ = fp8_layer(4096, 1024, torch.float16, -1, False)
    assert layer.fast_accum
    x = torch.randn(256, 4096, device=DEV, dtype=torch.float16)
    a = fpquant.fp8_static_quantize_input(x, fw.input_scale).double() * fw.input_scale.double()
    ref = a @ fw.dequantize().double().t()
    assert float((layer(x).double() - ref).abs().max() / ref.abs().max()) < 3e-2  # measured 5e-3..1.2e-2


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_graph_of_the_compiled_layer(dtype):
    layer, fw, b, _ = fp8_layer(1024, 512, dtype, -1, False)
    x = torch.randn(8, 1024, device=DEV, dtype=dtype)
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True)
    g, y = capture_graph(compiled, x, warmups=2)
    x.copy_(torch.randn_like(x) * 3)
    g.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(y, layer(x), atol=0, rtol=0)
    check_close(y, x, fw, b, dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_graph(dtype):
    layer, fw, b, _ = fp8_layer(1024, 512, dtype, -1, False)
    x = torch.randn(8, 1024, device=DEV, dtype=dtype)
    g, y = capture_graph(layer, x)
    x.copy_(torch.randn_like(x) * 3)
    g.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(y, layer(x), atol=0, rtol=0)
    check_close(y, x, fw, b, dtype)


@pytest.mark.skipif(CAP < (10, 0), reason="block-scaled _scaled_mm needs sm100+ (Blackwell)")
@pytest.mark.parametrize("name", ["MXFP4", "MXFP8", "MXINT4", "NVFP4"])
def test_blockscaled_on_blackwell(name):
    from quantlinear_cuda.kernels.scaled_mm_mx import ScaledMMMXLinear

    sc = PRESETS[name]
    spec = LayerSpec(sc, format_for(ScaledMMMXLinear, sc), 512, 256, False, torch.bfloat16, DEV, False, "gpu")
    w = torch.randn(256, 512, device=DEV) * 0.05
    fw = fpquant.quantize_float(w.to(torch.bfloat16), sc, act_amax=6.0)
    layer = ScaledMMMXLinear.from_weights(spec, fw)
    if fw.input_global_scale is not None:
        fw.input_global_scale = fw.input_global_scale.to(DEV)
    x = torch.randn(130, 512, device=DEV, dtype=torch.bfloat16)
    ref = float_reference(x, fw, spec, None)
    assert float((layer(x).float() - ref).abs().max() / ref.abs().max()) < 8e-3
