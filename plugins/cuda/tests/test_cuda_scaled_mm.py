"""``cuda.fp8_scaled_mm`` and ``cuda.scaled_mm_mx`` without a GPU.

CPU tensors stand in for CUDA ones (``scaled_mm_fp8.CPU_STANDS_IN``, device properties simulated).  The FP8
kernel runs on torch's own CPU ``_scaled_mm`` and on ``fake_scaled_mm`` (the CUDA op's contract); the
block-scaled kernel runs only on the fake (no Blackwell GPU exists here).
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import replace

import pytest
import torch

from quantlinear import PRESETS, LayerSpec, QuantLinearError, explain, fpcodes, fpquant, select_kernel
from quantlinear.select import clear_cache
from quantlinear.testing_fp import FloatKernelConformance, float_reference, format_for, random_float_weights
from quantlinear_cuda import blockscaled, fp8_act_ops
from quantlinear_cuda import device as cuda_device
from quantlinear_cuda.device import DeviceProps
from quantlinear_cuda.kernels import scaled_mm_fp8 as fp8mod
from quantlinear_cuda.kernels.scaled_mm_fp8 import FP8ScaledMMLinear, choose_plan
from quantlinear_cuda.kernels.scaled_mm_mx import ScaledMMMXLinear
from quantlinear_triton import scaled_mm as scaled_mm_shared
from quantlinear_triton.fp_packing import pack_slabs
from quantlinear_triton.scaled_mm import unit_rows

from fake_scaled_mm import FakeContractError, FakeCuda, blocked_offset, fake_cuda_scaled_mm, unswizzle

SM90 = DeviceProps("NVIDIA H100 80GB HBM3", (9, 0))
SM89 = DeviceProps("NVIDIA L40S", (8, 9))
SM80 = DeviceProps("NVIDIA A100-SXM4-80GB", (8, 0))
SM100 = DeviceProps("NVIDIA B200", (10, 0))
FP8_STATIC = PRESETS["FP8_STATIC"]


def _cpu_scaled_mm() -> bool:
    """torch's CPU build of _scaled_mm (present in 2.13; older releases may lack it)."""
    try:
        a = torch.zeros(16, 16).to(torch.float8_e4m3fn)
        torch._scaled_mm(a, a.t(), torch.ones(1), torch.ones(1), out_dtype=torch.bfloat16)
        return True
    except (RuntimeError, NotImplementedError):
        return False


needs_cpu_scaled_mm = pytest.mark.skipif(not _cpu_scaled_mm(), reason=f"torch {torch.__version__} has no CPU _scaled_mm")
MX_PRESETS = ("MXFP4", "MXFP4_RCEIL", "MXFP8", "MXFP8_RCEIL", "MXINT4", "NVFP4")


@contextlib.contextmanager
def stand_in(props: DeviceProps = SM90, version: tuple[int, int] | None = None, small_m: int = 0):
    """CPU layers play CUDA layers on a device with ``props`` (and torch ``version``, when given).

    ``small_m``: the FP8 layer's small-M limit (its Triton GEMV path); 0 here by default, so these tests see
    ``_scaled_mm`` at every M (on the slab-ordered bytes; the GEMV has its own tests below; bf16 cannot run it in
    Triton's interpreter).
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(fp8mod.SMALL_M_ENV, str(small_m))
        mp.setattr(cuda_device, "device_props", lambda device: props)
        mp.setattr(fp8mod, "CPU_STANDS_IN", True)
        if version is not None:
            mp.setattr(fp8mod, "torch_version", lambda: version)
        clear_cache()
        yield
    clear_cache()


def fp8_spec(gs=-1, dtype=torch.bfloat16, K=256, N=96, bias=False, scheme=FP8_STATIC, device="cpu"):
    return LayerSpec(replace(scheme, group_size=gs), "fp8", K, N, bias, dtype, torch.device(device), False, "l")


@functools.lru_cache(maxsize=None)
def weights(spec, seed=0):
    """Reference-quantized weights, made once per spec (the CPU FP8 casts are slow; layers never modify them)."""
    return random_float_weights(spec, seed)


def build(kernel, spec, seed=0):
    w = weights(spec, seed)
    b = (torch.randn(spec.out_features, generator=torch.Generator().manual_seed(seed)) * 0.1).to(spec.dtype) if spec.bias else None
    return kernel.from_weights(spec, w, b), w, b


def exact_reference(x, w, spec, b):
    """float64 ``(fp8(x / s) * s) @ (fp8(W) * s_w)^T + b`` and ``|terms|`` summed (the bound of fp32 accumulation error)."""
    a = fpquant.fp8_static_quantize_input(x, w.input_scale).double() * w.input_scale.double()
    W = w.dequantize().double()
    y = a @ W.t() + (0 if b is None else b.double())
    return y, a.abs() @ W.abs().t()


def within_one_ulp(y: torch.Tensor, x, w, spec, b) -> bool:
    """``y`` is the exact result rounded to y's dtype, give or take one unit in the last place and fp32 accumulation."""
    ref, mag = exact_reference(x, w, spec, b)
    ulp = {torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}[y.dtype]
    return bool(((y.double() - ref).abs() <= ref.abs() * ulp + mag * 2.0**-20 + 2.0**-24).all())


# ---- FP8: selection (the `reg` fixture: conftest.py) ------------------------------------------------------------
def test_plan_choice():
    assert choose_plan(True, (2, 6)) == "tensorwise"
    assert choose_plan(False, (2, 10)) == "rowwise"
    assert choose_plan(False, (2, 9)) == "fold"


@pytest.mark.parametrize("props,how", [(SM90, "cuBLASLt"), (SM89, "CUTLASS"), (SM100, "CUTLASS")])
def test_fp8_selected_on_fp8_gpus(monkeypatch, reg, props, how):
    monkeypatch.setattr(cuda_device, "device_props", lambda d: props)
    clear_cache()
    sel = select_kernel(fp8_spec(device="cuda"), registry=reg, raise_on_none=False)
    assert sel.kernel is FP8ScaledMMLinear
    v = FP8ScaledMMLinear.can_implement(fp8_spec(device="cuda"))
    assert "row-wise" in v.reason and how in v.reason
    assert "tensor-wise" in FP8ScaledMMLinear.can_implement(fp8_spec(gs=0, device="cuda")).reason


def test_fp8_rejections_say_why(monkeypatch):
    monkeypatch.setattr(cuda_device, "device_props", lambda d: SM90)
    cases = {
        "8.9": (SM80, fp8_spec(device="cuda")),
        "multiples of 16": (SM90, fp8_spec(K=264, device="cuda")),
        "N=104": (SM90, fp8_spec(N=104, device="cuda")),
        "float32 activations": (SM90, fp8_spec(dtype=torch.float32, device="cuda")),
        "weight-only": (SM90, fp8_spec(gs=0, scheme=PRESETS["FPW8A16"], device="cuda")),
        "ROCm/HIP": (DeviceProps("AMD Instinct MI300X", (9, 4), hip=True), fp8_spec(device="cuda")),
    }
    for needle, (props, spec) in cases.items():
        monkeypatch.setattr(cuda_device, "device_props", lambda d, p=props: p)
        v = FP8ScaledMMLinear.can_implement(spec)
        assert not v and needle in v.reason, (needle, v.reason)
    monkeypatch.setattr(cuda_device, "device_props", lambda d: SM80)
    assert "sm80" in FP8ScaledMMLinear.can_implement(fp8_spec(device="cuda")).reason
    monkeypatch.setattr(torch.version, "hip", "6.4.1", raising=False)
    assert "ROCm" in FP8ScaledMMLinear.check(fp8_spec(device="cuda")).reason


def test_fp8_explain_and_old_torch(monkeypatch, reg):
    monkeypatch.setattr(cuda_device, "device_props", lambda d: SM80)
    clear_cache()
    text = explain(fp8_spec(device="cuda"), registry=reg)
    assert "cuda.fp8_scaled_mm" in text and "compute capability 8.9" in text
    monkeypatch.setattr(cuda_device, "device_props", lambda d: SM90)
    monkeypatch.setattr(fp8mod, "torch_version", lambda: (2, 9))
    assert "fp32 epilogue" in FP8ScaledMMLinear.can_implement(fp8_spec(device="cuda")).reason
    assert not FP8ScaledMMLinear.can_implement(fp8_spec())  # a CPU layer needs the test switch


# ---- FP8: numerics -----------------------------------------------------------------------------------------------
@needs_cpu_scaled_mm
@pytest.mark.parametrize("plan,gs,version", [("rowwise", -1, None), ("fold", -1, (2, 9)), ("tensorwise", 0, None)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fp8_numerics_on_torch_cpu_scaled_mm(plan, gs, version, dtype):
    with stand_in(SM90, version):
        for bias in (False, True):
            spec = fp8_spec(gs, dtype, bias=bias)
            layer, w, b = build(FP8ScaledMMLinear, spec)
            assert layer.plan == plan and layer.w_fp8.dtype == torch.uint8
            for M in (1, 7, 33):
                x = (torch.randn(M, spec.in_features, generator=torch.Generator().manual_seed(M)) * 2).to(dtype)
                x[0, :3] = torch.tensor([1e4, -1e4, 0.0])  # saturates at +-448 after x / s, as the reference does
                ref = float_reference(x, w, spec, b)
                y = layer(x)
                assert within_one_ulp(y, x, w, spec, b), (plan, dtype, bias, M)
                assert float((y.float() - ref.to(dtype).float()).abs().max() / ref.abs().max()) < 1e-3


@pytest.mark.parametrize("xdt,sdt", [(torch.bfloat16, torch.bfloat16), (torch.float16, torch.float16), (torch.float16, torch.bfloat16)])
def test_compile_time_quantization_rounds_like_eager(monkeypatch, xdt, sdt):
    """The explicit form used under torch.compile gives the reference's codes for every finite value."""
    v = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(xdt)
    x = v[torch.isfinite(v)]
    s = torch.tensor([0.011], dtype=sdt)
    ref = fpquant.fp8_static_quantize_input(x, s).view(torch.uint8)
    assert torch.equal(fp8mod.quantize_static(x, s).view(torch.uint8), ref)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert torch.equal(fp8mod.quantize_static(x, s).view(torch.uint8), ref)


def test_fp8_equal_channel_scales_take_tensorwise():
    with stand_in(SM90):
        spec = fp8_spec()
        w = random_float_weights(spec)
        w.scales = torch.full_like(w.scales, float(w.scales[0, 0]))
        w.raw_scales = w.scales.reshape(-1).to(w.raw_scales.dtype)
        layer = FP8ScaledMMLinear.from_weights(spec, w)
        assert layer.plan == "tensorwise" and layer.w_scale.shape == (1,)


# ---- FP8: against the fake of the CUDA op --------------------------------------------------------------------
@pytest.mark.parametrize("props,cublas,path", [(SM90, (13, 0), "cublas"), (SM90, (12, 4), "cutlass"), (SM89, (13, 0), "cutlass"),
                                                (SM100, (13, 0), "cutlass")])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fp8_against_fake_cuda_op(props, cublas, path, dtype):
    fake = FakeCuda(props.name, props.capability, torch=(2, 11), cublas=cublas)
    with stand_in(props, (2, 11)), fake_cuda_scaled_mm(fake):
        for gs, bias in ((-1, False), (-1, True), (0, False), (0, True)):
            spec = fp8_spec(gs, dtype, K=256, N=80, bias=bias)
            layer, w, b = build(FP8ScaledMMLinear, spec, seed=gs + 5)
            x = (torch.randn(19, 256) * 3).to(dtype)
            y = layer(x)
            assert within_one_ulp(y, x, w, spec, b)
            call = fake.calls[-1]
            assert call["kind"] == ("tensorwise" if gs == 0 else "rowwise")
            if gs == -1:
                assert call["path"] == path
                if dtype == torch.float16:
                    assert call["bias_dtype"] == torch.float16  # the zero bias when the layer has none


def test_rowwise_calls_pass_shared_ones_and_the_folded_column_scale(monkeypatch):
    """Row-wise ``scale_a`` is a slice of one all-ones column per device (a view: no per-call ``[M, 1]`` copy, which was
    a kernel launch of its own), and ``scale_b`` is the weight scales times the input scale, both in fp32."""
    fake = FakeCuda(SM90.name, SM90.capability, torch=(2, 11), cublas=(13, 0))
    seen = []
    with stand_in(SM90, (2, 11)), fake_cuda_scaled_mm(fake):
        inner = torch._scaled_mm
        monkeypatch.setattr(torch, "_scaled_mm", lambda a, b, scale_a, scale_b, **kw: seen.append((scale_a, scale_b))
                            or inner(a, b, scale_a, scale_b, **kw))
        spec = fp8_spec(-1, torch.float16, K=256, N=80)
        layer, w, b = build(FP8ScaledMMLinear, spec, seed=3)
        for M in (1, 19, 40):
            x = (torch.randn(M, 256, generator=torch.Generator().manual_seed(M)) * 3).half()
            assert within_one_ulp(layer(x), x, w, spec, b)
    column = unit_rows(1, torch.device("cpu"))
    want_b = w.scales.to(torch.float32).reshape(1, 80) * w.input_scale.to(torch.float32)
    assert [sa.shape for sa, _ in seen] == [(1, 1), (19, 1), (40, 1)]
    for sa, sb in seen:
        assert sa.dtype == torch.float32 and sa.is_contiguous() and bool((sa == 1).all())
        assert sa.untyped_storage().data_ptr() == column.untyped_storage().data_ptr()
        assert sb.shape == (1, 80) and torch.equal(sb, want_b)


def test_unit_rows_are_views_of_a_column_that_grows_and_stays_alive():
    cpu = torch.device("cpu")
    a, b = unit_rows(5, cpu), unit_rows(3, cpu)
    assert a.shape == (5, 1) and b.shape == (3, 1) and a.is_contiguous() and bool((a == 1).all())
    assert a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
    big = unit_rows(scaled_mm_shared.UNIT_ROWS + 3, cpu)
    assert big.shape == (scaled_mm_shared.UNIT_ROWS + 3, 1) and bool((big == 1).all())
    assert big.untyped_storage().data_ptr() != a.untyped_storage().data_ptr()
    assert unit_rows(2, cpu).untyped_storage().data_ptr() == big.untyped_storage().data_ptr()  # the grown one serves now
    kept = {t.untyped_storage().data_ptr() for t in scaled_mm_shared._UNITS.tensors()}
    assert a.untyped_storage().data_ptr() in kept  # (a graph captured with the old column still reads it)


# ---- FP8: small M through the Triton GEMV, on the same bytes -------------------------------------------------
@pytest.mark.parametrize("K", [256, 160])
def test_small_m_takes_the_triton_gemv_on_the_same_bytes(K):
    """M <= the limit: cuda.triton_fp's FP8 GEMV; above: _scaled_mm on the same weight bytes (slab order) with the
    activation codes written in that order.  fp16 (the interpreter's bf16 loads are wrong; bf16 runs on the GPU)."""
    fake = FakeCuda(torch=(2, 11))
    with stand_in(SM90, (2, 11), small_m=4), fake_cuda_scaled_mm(fake):
        for bias in (False, True):
            spec = fp8_spec(-1, torch.float16, K=K, N=80, bias=bias)
            layer, w, b = build(FP8ScaledMMLinear, spec, seed=K)
            assert layer.small_m == 4 and layer.slab == 32
            assert layer.w_fp8.shape == (80, 256)  # K padded to whole 128-channel tiles
            words = layer.w_fp8.view(torch.int32)
            assert torch.equal(words, pack_slabs(w.codes, 8, 32))  # the GEMV's words: no second copy of the weight
            for M in (1, 4, 5, 19):
                x = (torch.randn(M, K, generator=torch.Generator().manual_seed(M)) * 3).to(torch.float16)
                x[0, :3] = torch.tensor([1e4, -1e4, 0.0])
                n = len(fake.calls)
                y = layer(x)
                assert len(fake.calls) == n + (M > 4), M  # _scaled_mm only above the limit
                assert within_one_ulp(y, x, w, spec, b), (K, bias, M)


def test_slab_ordered_activation_codes():
    x = (torch.randn(3, 160) * 3).to(torch.float16)
    s = torch.tensor([0.25])
    ref = fpquant.fp8_static_quantize_input(x, s).view(torch.uint8)
    got = fp8_act_ops.FP8_QUANT_OP(x, s, False, 32)
    assert got.shape == (3, 256)
    assert torch.equal(got.view(torch.uint8), pack_slabs(ref, 8, 32).view(torch.uint8))  # the weight's byte order, zero padded
    torch.library.opcheck(fp8_act_ops.FP8_QUANT_OP, (x, s, False, 32))


def test_small_m_switch_keeps_the_layout():
    """QUANTLINEAR_FP8_SMALL_M only routes calls: the prepared bytes (and so a prepared state dict) are the same."""
    with stand_in(SM90, (2, 11), small_m=0):
        off, w, _ = build(FP8ScaledMMLinear, fp8_spec(-1, torch.float16, K=160, N=80))
    with stand_in(SM90, (2, 11), small_m=16):
        on, _, _ = build(FP8ScaledMMLinear, fp8_spec(-1, torch.float16, K=160, N=80))
    assert (off.small_m, on.small_m, off.slab) == (0, 16, 32)
    assert torch.equal(off.w_fp8, on.w_fp8) and torch.equal(off.w_fp8.view(torch.int32), pack_slabs(w.codes, 8, 32))
    assert off.state_dict().keys() == on.state_dict().keys()


def test_small_m_switch(monkeypatch):
    monkeypatch.setenv(fp8mod.SMALL_M_ENV, "lots")
    with pytest.raises(QuantLinearError, match="QUANTLINEAR_FP8_SMALL_M"):
        fp8mod.small_m_limit()
    monkeypatch.setenv(fp8mod.SMALL_M_ENV, "0")
    assert fp8mod.small_m_limit() == 0
    monkeypatch.delenv(fp8mod.SMALL_M_ENV)
    assert fp8mod.small_m_limit(4096, 14336) == fp8mod.SMALL_M == 16
    assert fp8mod.small_m_limit(14336, 4096) == fp8mod.SMALL_M_K_HEAVY == 32  # more inputs than outputs
    monkeypatch.setenv(fp8mod.SMALL_M_ENV, "8")
    assert fp8mod.small_m_limit(14336, 4096) == 8


# ---- FP8: the fused activation quantization op and fast accumulation -----------------------------------------
@pytest.mark.parametrize("xdt,sdt", [(torch.bfloat16, torch.bfloat16), (torch.float16, torch.float16), (torch.float16, torch.bfloat16),
                                     (torch.bfloat16, torch.float32)])
def test_fused_quantization_op_is_the_reference_for_every_value(xdt, sdt):
    """``quantlinear_cuda::fp8_quant_static`` (the Triton kernel; interpreter here) over every value of the dtype."""
    v = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(xdt).reshape(256, 256)
    for s in (0.011, 3.0):
        st = torch.tensor([s], dtype=sdt)
        ref = fpquant.fp8_static_quantize_input(v, st).view(torch.uint8)
        got = fp8_act_ops.FP8_QUANT_OP(v, st, False)
        assert got.dtype == torch.float8_e4m3fn and got.shape == v.shape
        got = got.view(torch.uint8)
        nan = (ref & 0x7F) == 0x7F  # torch's own NaN sign depends on its code path (quantlinear_triton.fp8_act)
        assert torch.equal(got[~nan], ref[~nan]) and bool(((got[nan] & 0x7F) == 0x7F).all())


def test_fused_quantization_op_contract():
    x = torch.randn(7, 48, dtype=torch.float16)
    torch.library.opcheck(fp8_act_ops.FP8_QUANT_OP, (x, torch.tensor([0.25], dtype=torch.float16), False))
    torch.library.opcheck(fp8_act_ops.FP8_QUANT_OP, (x[:, 16:], torch.tensor([0.25]), False))  # a row stride wider than K


@needs_cpu_scaled_mm
def test_layer_uses_the_op_and_says_which(monkeypatch):
    with stand_in(SM90):
        spec = fp8_spec(dtype=torch.float16)
        assert "fused Triton launch" in FP8ScaledMMLinear.can_implement(fp8_spec(device="cuda")).reason
        layer, w, b = build(FP8ScaledMMLinear, spec)
        assert layer.act_quant == "triton" and layer.fast_accum  # (the default)
        x = (torch.randn(6, 256, generator=torch.Generator().manual_seed(6)) * 3).to(torch.float16)
        calls = []
        real = fp8_act_ops.FP8_QUANT_OP
        monkeypatch.setattr(fp8mod, "FP8_QUANT_OP", lambda *a: calls.append(a) or real(*a))
        y = layer(x)
        assert len(calls) == 1 and within_one_ulp(y, x, w, spec, b)
        monkeypatch.setattr(fp8mod, "triton_available", lambda: False)
        monkeypatch.setattr(fp8_act_ops, "triton_available", lambda: False)
        assert "torch ops" in FP8ScaledMMLinear.can_implement(fp8_spec(device="cuda")).reason
        slow, _, _ = build(FP8ScaledMMLinear, spec)
        assert slow.act_quant == "torch" and slow.slab == 0 and layer.slab == 32  # no Triton: the checkpoint's order
        ys = slow(x)
        assert within_one_ulp(ys, x, w, spec, b) and len(calls) == 1
        # the same FP8 codes and products; only the order of the fp32 sums differs (channels in slab order)
        torch.testing.assert_close(ys, y, atol=0, rtol=2**-9)


@needs_cpu_scaled_mm
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_compile_fullgraph_keeps_the_op(dtype):
    """fullgraph tracing goes through the op's fake; the op stays one opaque node (aot_eager: no C++ compiler needed)."""
    with stand_in(SM90):
        layer, w, b = build(FP8ScaledMMLinear, fp8_spec(dtype=dtype, bias=True))
        x = (torch.randn(9, 256) * 3).to(dtype)
        torch._dynamo.reset()
        graphs = []

        def backend(gm, example_inputs):
            graphs.append(gm)
            return gm

        y = torch.compile(layer, fullgraph=True, backend=backend)(x)
        assert torch.equal(y, layer(x))
        assert any("fp8_quant_static" in str(n.target) for g in graphs for n in g.graph.nodes)
        torch._dynamo.reset()


@pytest.mark.parametrize("env,want", [(None, True), ("0", False), ("off", False), ("1", True)])
def test_fast_accum_is_the_default_and_can_be_turned_off(monkeypatch, env, want):
    if env is None:
        monkeypatch.delenv(fp8mod.FAST_ACCUM_ENV, raising=False)
    else:
        monkeypatch.setenv(fp8mod.FAST_ACCUM_ENV, env)
    fake = FakeCuda()
    with stand_in(SM90, (2, 11)), fake_cuda_scaled_mm(fake):
        why = FP8ScaledMMLinear.can_implement(fp8_spec(device="cuda")).reason
        assert ("; fast accumulation" in why) is want and ("fp32-exact accumulation" in why) is not want
        for gs in (-1, 0):
            layer, w, b = build(FP8ScaledMMLinear, fp8_spec(gs, torch.bfloat16))
            assert layer.fast_accum is want
            monkeypatch.setenv(fp8mod.FAST_ACCUM_ENV, "0" if want else "1")  # read at prepare, not per call
            layer(torch.randn(3, 256, dtype=torch.bfloat16))
            assert fake.calls[-1]["fast_accum"] is want
            monkeypatch.setenv(fp8mod.FAST_ACCUM_ENV, "1" if want else "0")


def test_fp8_fake_catches_the_cutlass_fp16_no_bias_branch(monkeypatch):
    """Without the zero bias, an fp16 row-wise GEMM on sm89 hits the (faked) bf16-writing no-bias branch."""
    with stand_in(SM89, (2, 11)), fake_cuda_scaled_mm(FakeCuda("L40S", (8, 9), torch=(2, 11))):
        layer, _, _ = build(FP8ScaledMMLinear, fp8_spec(dtype=torch.float16))
        layer.zero_bias = None
        with pytest.raises(FakeContractError, match="bf16"):
            layer(torch.randn(4, 256, dtype=torch.float16))
    with stand_in(SM89, (2, 9)), fake_cuda_scaled_mm(FakeCuda("L40S", (8, 9), torch=(2, 9))) as fake:
        layer, w, _ = build(FP8ScaledMMLinear, fp8_spec(dtype=torch.float16))
        assert layer.plan == "fold"  # before 2.10 the CUTLASS row-wise kernel takes no fp16 output at all
        layer(torch.randn(4, 256, dtype=torch.float16))
        assert fake.calls[-1]["kind"] == "tensorwise" and fake.calls[-1]["out_dtype"] == torch.float32


def test_fake_cuda_op_enforces_the_contract():
    a = torch.randn(32, 64).to(torch.float8_e4m3fn)
    b = torch.randn(48, 64).to(torch.float8_e4m3fn)
    one = torch.ones(1)
    with fake_cuda_scaled_mm(FakeCuda()):
        torch._scaled_mm(a, b.t(), one, one, out_dtype=torch.bfloat16)
        with pytest.raises(RuntimeError, match="row-major and column-major"):
            torch._scaled_mm(a, b.t().contiguous(), one, one, out_dtype=torch.bfloat16)
        with pytest.raises(RuntimeError, match="divisible by 16"):
            torch._scaled_mm(a[:, :40], b[:, :40].t(), one, one, out_dtype=torch.bfloat16)
        with pytest.raises(RuntimeError, match="Invalid scaling"):
            torch._scaled_mm(a, b.t(), torch.ones(32, 1), torch.ones(48, 1), out_dtype=torch.bfloat16)  # scale_b must be [1, N]
        with pytest.raises(RuntimeError, match="Invalid scaling"):
            torch._scaled_mm(a, b.t(), one.half(), one, out_dtype=torch.bfloat16)
        with pytest.raises(RuntimeError, match="Bias must be BFloat16"):
            torch._scaled_mm(a, b.t(), one, one, bias=torch.zeros(48, dtype=torch.float16), out_dtype=torch.bfloat16)
        with pytest.raises(RuntimeError, match="Float32"):
            torch._scaled_mm(a, b.t(), one, one, bias=torch.zeros(48, dtype=torch.bfloat16), out_dtype=torch.float32)
    with fake_cuda_scaled_mm(FakeCuda("A100", (8, 0))), pytest.raises(RuntimeError, match="compute capability"):
        torch._scaled_mm(a, b.t(), one, one, out_dtype=torch.bfloat16)
    with fake_cuda_scaled_mm(FakeCuda("L40S", (8, 9), torch=(2, 6))), pytest.raises(RuntimeError, match="Rowwise"):
        torch._scaled_mm(a, b.t(), torch.ones(32, 1), torch.ones(1, 48), out_dtype=torch.bfloat16)


# ---- block-scaled: layout and activation codes ---------------------------------------------------------------
@pytest.mark.parametrize("rows,cols", [(128, 4), (1, 1), (130, 5), (256, 8), (300, 9)])
def test_swizzle_matches_the_cublas_index_formula(rows, cols):
    s = torch.randint(0, 255, (rows, cols), dtype=torch.int32, generator=torch.Generator().manual_seed(rows)).to(torch.uint8)
    flat = blockscaled.to_blocked(s)
    assert flat.numel() == blockscaled.blocked_numel(rows, cols) == (-(-rows // 128) * 128) * (-(-cols // 4) * 4)
    assert torch.equal(unswizzle(flat, rows, cols), s)
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    assert torch.equal(flat[blocked_offset(r, c, -(-cols // 4))], s)


def test_swizzle_hand_checked():
    s = (torch.arange(128 * 4) % 251).to(torch.uint8).reshape(128, 4)  # s[r, c] = 4 r + c (mod 251)
    flat = blockscaled.to_blocked(s)
    assert flat[:4].tolist() == [0, 1, 2, 3]  # row 0
    assert flat[4:8].tolist() == [128, 129, 130, 131]  # row 32: rows 0, 32, 64, 96 share a 16-byte line
    assert flat[12:16].tolist() == [(4 * 96 + c) % 251 for c in range(4)]  # row 96
    assert flat[16:20].tolist() == [4, 5, 6, 7]  # row 1 starts the next line
    assert flat[511] == (4 * 127 + 3) % 251  # row 127, column 3 is the tile's last byte
    two = blockscaled.to_blocked(torch.cat([s, s + 1], 1))  # 8 columns: two 128x4 tiles side by side, 512 bytes each
    assert torch.equal(two[:512], flat) and torch.equal(two[512:], flat + 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_activation_codes_decode_to_the_reference_qdq(dtype):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(37, 256, generator=g) * torch.logspace(-5, 4, 256)).to(dtype)
    x[0, :32] = 0.0
    x[1, :16] = -0.0
    for element in ("e2m1", "e4m3"):
        for rceil in (False, True):
            codes, scales = blockscaled.quantize_act_mx(x, element, rceil)
            assert codes.dtype == torch.float8_e4m3fn and scales.dtype == torch.uint8 and scales.shape == (37, 8)
            assert torch.equal(blockscaled.decode_act_mx(codes, scales).to(dtype), fpquant.mx_qdq(x, element, 32, rceil))
            if element == "e2m1":  # FP4 activations stay on the FP4 grid inside the E4M3 codes
                grid = fpcodes.element_table("e2m1").unique()
                assert torch.isin(codes.float(), grid).all()
    gs = fpquant.nvfp4_global_scale(x.float().abs().max())
    packed, s = blockscaled.quantize_act_nvfp4(x, gs)
    assert packed.shape == (37, 128) and s.dtype == torch.float8_e4m3fn
    assert torch.equal(blockscaled.decode_act_nvfp4(packed, s, gs).to(dtype), fpquant.nvfp4_qdq(x, gs))


def test_e2m1_codes_every_value():
    table = fpcodes.element_table("e2m1")
    codes = blockscaled.e2m1_codes(table)
    assert codes.tolist() == list(range(16))


# ---- block-scaled: selection and numerics on the fake --------------------------------------------------------
def mx_spec(name, dtype=torch.bfloat16, K=256, N=96, bias=False, device="cpu"):
    sc = PRESETS[name]
    return LayerSpec(sc, format_for(ScaledMMMXLinear, sc), K, N, bias, dtype, torch.device(device), False, "l")


def test_mx_gate_says_why(monkeypatch):
    monkeypatch.setattr(cuda_device, "device_props", lambda d: SM90)
    v = ScaledMMMXLinear.can_implement(mx_spec("MXFP4", device="cuda"))
    assert not v and "needs sm100+ (Blackwell)" in v.reason and "NVIDIA H100 80GB HBM3 is sm90" in v.reason
    monkeypatch.setattr(cuda_device, "device_props", lambda d: SM100)
    assert ScaledMMMXLinear.can_implement(mx_spec("NVFP4", device="cuda"))
    for needle, spec in {"weight-only": replace(mx_spec("MXFP4", device="cuda"), scheme=replace(PRESETS["MXFP4"], act_bits=16)),
                         "multiple of 32": mx_spec("MXFP8", K=272, device="cuda"),
                         "float32": mx_spec("MXFP8", dtype=torch.float32, device="cuda"),
                         "hardware block": replace(mx_spec("MXFP8", device="cuda"), scheme=replace(PRESETS["MXFP8"], act_group_size=64))}.items():
        v = ScaledMMMXLinear.can_implement(spec)
        assert not v and needle in v.reason, (needle, v.reason)
    monkeypatch.setattr(fp8mod, "torch_version", lambda: (2, 9))
    assert "torch >= 2.10" in ScaledMMMXLinear.can_implement(mx_spec("NVFP4", device="cuda")).reason
    assert ScaledMMMXLinear.can_implement(mx_spec("MXFP4", device="cuda"))
    monkeypatch.setattr(fp8mod, "torch_version", lambda: (2, 6))
    assert "torch >= 2.7" in ScaledMMMXLinear.can_implement(mx_spec("MXFP4", device="cuda")).reason


@pytest.mark.parametrize("name", MX_PRESETS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mx_against_fake_blockscaled_op(name, dtype):
    fake = FakeCuda("NVIDIA B200", (10, 0), torch=(2, 13))
    with stand_in(SM100, (2, 13)), fake_cuda_scaled_mm(fake):
        spec = mx_spec(name, dtype, K=320, N=48, bias=True)
        layer, w, b = build(ScaledMMMXLinear, spec)
        assert all(t.dtype == torch.uint8 for t in layer.buffers() if t.numel() >= 320 * 48 // 2)
        for M in (1, 130):  # scales padded to 128-row tiles; K/32 = 10 blocks padded to 12 (K/16 = 20 stays 20)
            x = (torch.randn(M, 320, generator=torch.Generator().manual_seed(M)) * 2).to(dtype)
            ref = float_reference(x, w, spec, b)
            err = float((layer(x).float() - ref).abs().max() / ref.abs().max())
            assert err < {torch.bfloat16: 8e-3, torch.float16: 1.5e-3}[dtype], err
            assert fake.calls[-1]["kind"] == ("blockwise1x16" if name == "NVFP4" else "blockwise1x32")
            assert fake.calls[-1]["op"] == ("_scaled_mm_v2" if name == "NVFP4" else "_scaled_mm")


def test_fake_blockscaled_op_enforces_sizes_and_capability():
    a = torch.ones(130, 64).to(torch.float8_e4m3fn)
    b = torch.ones(48, 64).to(torch.float8_e4m3fn)
    sa = torch.full((130, 2), 127, dtype=torch.uint8)
    sb = torch.full((48, 2), 127, dtype=torch.uint8)
    good = (blockscaled.to_blocked(sa).view(torch.float8_e8m0fnu), blockscaled.to_blocked(sb).view(torch.float8_e8m0fnu))
    with fake_cuda_scaled_mm(FakeCuda("B200", (10, 0))):
        y = torch._scaled_mm(a, b.t(), *good, out_dtype=torch.bfloat16)
        assert torch.equal(y, torch.full((130, 48), 64.0, dtype=torch.bfloat16))
        with pytest.raises(RuntimeError, match="Invalid scaling"):  # unpadded scales: 130*2 bytes, not 256*4
            torch._scaled_mm(a, b.t(), sa.view(torch.float8_e8m0fnu), good[1], out_dtype=torch.bfloat16)
        p = torch.ones(130, 32, dtype=torch.uint8).view(torch.float4_e2m1fn_x2)
        q = torch.ones(48, 32, dtype=torch.uint8).view(torch.float4_e2m1fn_x2)
        with pytest.raises(RuntimeError, match="Invalid scaling"):  # packed FP4 + E8M0 is not a v1 recipe on CUDA here
            torch._scaled_mm(p, q.t(), *good, out_dtype=torch.bfloat16)
    with fake_cuda_scaled_mm(FakeCuda()), pytest.raises(RuntimeError, match="CUBLAS_STATUS_NOT_SUPPORTED"):
        torch._scaled_mm(a, b.t(), *good, out_dtype=torch.bfloat16)


# ---- the plugin author kit -------------------------------------------------------------------------------------
def generated_under(props, generate):
    def pytest_generate_tests(self, metafunc):
        with stand_in(props, (2, 13)):
            generate(self, metafunc)

    return pytest_generate_tests


@needs_cpu_scaled_mm
class TestFP8ScaledMMConformance(FloatKernelConformance):
    """On torch's CPU ``_scaled_mm``."""

    kernels = [FP8ScaledMMLinear]
    device = "cpu"
    pytest_generate_tests = generated_under(SM90, FloatKernelConformance.pytest_generate_tests)

    @pytest.fixture(autouse=True)
    def _sm90(self):
        with stand_in(SM90, (2, 13)):
            yield


class TestScaledMMMXConformance(FloatKernelConformance):
    """On the fake of the block-scaled CUDA op."""

    kernels = [ScaledMMMXLinear]
    device = "cpu"
    pytest_generate_tests = generated_under(SM100, FloatKernelConformance.pytest_generate_tests)

    @pytest.fixture(autouse=True)
    def _sm100(self):
        with stand_in(SM100, (2, 13)), fake_cuda_scaled_mm(FakeCuda("B200", (10, 0), torch=(2, 13))):
            yield

    def test_compiles_fullgraph(self, case):
        # two code paths (v1 _scaled_mm for MX, F.scaled_mm for NVFP4): trace each once, in bf16, to keep the suite fast
        if not case.id.endswith("K128N64-bfloat16") or case.spec.scheme.id not in ("mx_fp4_g32_sym_a4mx_fp", "nv_fp4_g16_sym_a4nv_fp4_with_static_gs"):
            pytest.skip("same code path as the MXFP4 / NVFP4 bf16 cases, which are traced")
        super().test_compiles_fullgraph(case)
