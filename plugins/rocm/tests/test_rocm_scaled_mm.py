"""``rocm.fp8_scaled_mm`` against ``fake_rocm``'s model of the ROCm build of ``_scaled_mm`` (no AMD hardware here).

The heart of it is the gfx942 activation encoding: ``fnuz(clamp(x / 2s, +-224))`` must carry, byte for byte, the
reference's ``fn(clamp(x / s, +-448))`` -- checked over every bf16 and fp16 value.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import replace

import pytest
import torch

from quantlinear import PRESETS, LayerSpec, fpquant
from quantlinear.testing_fp import FloatKernelConformance, random_float_weights
from quantlinear_rocm import device as rocm_device
from quantlinear_rocm.kernels import scaled_mm_fp8 as mod
from quantlinear_rocm.kernels.scaled_mm_fp8 import RocmFP8ScaledMMLinear
from quantlinear_triton.scaled_mm import unit_rows

import fake_rocm
from fake_rocm import simulate_rocm

FP8_STATIC = PRESETS["FP8_STATIC"]


@contextlib.contextmanager
def on(arch: str, hip: str = "7.0.51831-a3e329ad8"):
    with simulate_rocm(arch, hip=hip) as rt, pytest.MonkeyPatch.context() as mp:
        mp.setattr(rocm_device, "CPU_STANDS_IN", True)
        yield rt


def spec(gs=-1, dtype=torch.bfloat16, K=256, N=80, bias=False, scheme=FP8_STATIC):
    return LayerSpec(replace(scheme, group_size=gs), "fp8", K, N, bias, dtype, torch.device("cpu"), False, "l")


@functools.lru_cache(maxsize=None)
def weights(s):
    return random_float_weights(s)


def all_values(dtype: torch.dtype) -> torch.Tensor:
    v = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype)
    return v[torch.isfinite(v)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fnuz_half_scale_encoding_is_the_reference_for_every_value(dtype):
    y = all_values(dtype)  # every x / s the promoted division can produce in this dtype
    fn = torch.clamp(y, -448, 448).to(torch.float8_e4m3fn)
    fnuz = torch.clamp(y / 2, -224, 224).to(torch.float8_e4m3fnuz)
    b_fn, b_fnuz = fn.view(torch.uint8), fnuz.view(torch.uint8)
    same = b_fn != 0x80  # -0 becomes +0 (0x80 is fnuz's NaN)
    assert torch.equal(b_fnuz[same], b_fn[same]) and bool((b_fnuz[~same] == 0).all())
    assert torch.equal(fnuz.to(torch.float32) * 2, fn.to(torch.float32))  # the same value with the doubled scale
    assert set(b_fn.tolist()) == set(range(256)) - {0x7F, 0xFF}  # every finite e4m3fn code was reached


@pytest.mark.parametrize("xdt,sdt", [(torch.bfloat16, torch.bfloat16), (torch.float16, torch.bfloat16), (torch.float16, torch.float16)])
def test_dividing_by_the_doubled_scale_halves_exactly(xdt, sdt):
    x = all_values(xdt)
    for s in (0.011, 300.0):
        st = torch.tensor([s], dtype=sdt)
        ref = fpquant.fp8_static_quantize_input(x, st).view(torch.uint8)
        got = torch.clamp(x / (st * 2), -224, 224).to(torch.float8_e4m3fnuz).view(torch.uint8)
        keep = ref != 0x80
        assert torch.equal(got[keep], ref[keep]) and bool((got[~keep] == 0).all())


@pytest.mark.parametrize("xdt,sdt", [(torch.bfloat16, torch.bfloat16), (torch.float16, torch.bfloat16), (torch.float16, torch.float16),
                                     (torch.bfloat16, torch.float32)])
def test_fused_fnuz_quantization_is_the_reference_for_every_value(xdt, sdt):
    """The layer's op (Triton kernel, fnuz variant, in the interpreter) with the doubled scale: the reference's bytes."""
    x = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(xdt).reshape(256, 256)
    for s in (0.011, 300.0, 1.0):
        st = torch.tensor([s], dtype=sdt)
        ref = fpquant.fp8_static_quantize_input(x, st).view(torch.uint8)
        got = mod.FP8_QUANT_OP(x, st * 2, True)
        assert got.dtype == torch.float8_e4m3fnuz
        got = got.view(torch.uint8)
        nan = (ref & 0x7F) == 0x7F
        keep = (ref != 0x80) & ~nan
        assert torch.equal(got[keep], ref[keep]) and bool((got[ref == 0x80] == 0).all()) and bool((got[nan] == 0x80).all())
        assert torch.equal(got, mod.quantize_static(x, st * 2, 224.0, torch.float8_e4m3fnuz).view(torch.uint8))  # the torch fallback


def test_the_layer_quantizes_with_the_op_or_torch(monkeypatch):
    """Triton present: the fused op (and the verdict says so); missing: the torch ops, same bytes."""
    with on("gfx942"):
        s = spec(dtype=torch.float16)
        assert "fused Triton launch" in RocmFP8ScaledMMLinear.can_implement(s).reason
        layer = RocmFP8ScaledMMLinear.from_weights(s, weights(s))
        assert layer.act_quant == "triton"
        x = torch.randn(5, 256, dtype=torch.float16) * 4
        y = layer(x)
        monkeypatch.setattr(mod, "triton_available", lambda: False)
        assert "torch ops" in RocmFP8ScaledMMLinear.can_implement(s).reason
        slow = RocmFP8ScaledMMLinear.from_weights(s, weights(s))
        assert slow.act_quant == "torch"
        assert torch.equal(slow(x), y)
    torch.library.opcheck(mod.FP8_QUANT_OP, (torch.randn(3, 32, dtype=torch.bfloat16), torch.tensor([0.5], dtype=torch.bfloat16), True))


@pytest.mark.parametrize("arch,hip,fmt", [("gfx942", "6.4.43484", torch.float8_e4m3fnuz), ("gfx950", "7.0.51831", torch.float8_e4m3fn),
                                          ("gfx1201", "6.5.0", torch.float8_e4m3fn)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_numerics_on_the_fake_rocm_op(arch, hip, fmt, dtype):
    with on(arch, hip) as rt:
        for gs, bias in ((-1, False), (-1, True), (0, True)):
            s = spec(gs, dtype, bias=bias)
            w = weights(s)
            b = (torch.randn(80, generator=torch.Generator().manual_seed(1)) * 0.1).to(dtype) if bias else None
            layer = RocmFP8ScaledMMLinear.from_weights(s, w, b)
            rowwise = gs == -1 and arch == "gfx942" and dtype == torch.bfloat16
            assert layer.plan == ("tensorwise" if gs == 0 else "rowwise" if rowwise else "fold")
            x = (torch.randn(9, 256, generator=torch.Generator().manual_seed(2)) * 3).to(dtype)
            x[0, :2] = torch.tensor([1e4, -1e4])  # saturates like the reference
            a = fpquant.fp8_static_quantize_input(x, w.input_scale).double() * w.input_scale.double()
            ref = a @ w.dequantize().double().t() + (0 if b is None else b.double())
            err = (layer(x).double() - ref).abs().max() / ref.abs().max()
            assert err < {torch.bfloat16: 4e-3, torch.float16: 5e-4}[dtype], err
            call = rt.scaled_mm_calls[-1]
            assert call["a"] == call["b"] == fmt
            assert call["kind"] == ("rowwise" if rowwise else "tensorwise")


def test_rowwise_folds_the_input_scale_into_the_column_scale(monkeypatch):
    """gfx942 row-wise: ``scale_a`` is a slice of the shared ones column (no per-call ``[M, 1]`` copy) and ``scale_b``
    the doubled fnuz weight scales times the doubled input scale: the same product as the e4m3fn scales."""
    seen = []
    with on("gfx942", "6.4.43484"):
        inner = torch._scaled_mm
        monkeypatch.setattr(torch, "_scaled_mm", lambda a, b, scale_a, scale_b, **kw: seen.append((scale_a, scale_b))
                            or inner(a, b, scale_a, scale_b, **kw))
        s = spec(-1, torch.bfloat16)
        w = weights(s)
        layer = RocmFP8ScaledMMLinear.from_weights(s, w)
        assert layer.plan == "rowwise"
        layer((torch.randn(9, 256, generator=torch.Generator().manual_seed(2)) * 3).to(torch.bfloat16))
    (sa, sb), = seen
    assert sa.shape == (9, 1) and bool((sa == 1).all())
    assert sa.untyped_storage().data_ptr() == unit_rows(1, torch.device("cpu")).untyped_storage().data_ptr()
    want = (w.scales.to(torch.float32).reshape(1, 80) * 2) * (w.input_scale.to(torch.float32) * 2)
    assert torch.equal(sb, want)


def test_refusals_say_why():
    with on("gfx90a"):
        v = RocmFP8ScaledMMLinear.can_implement(spec())
        assert not v and "gfx90a" in v.reason and "gfx942" in v.reason
    with on("gfx950", hip=fake_rocm.HIP_VERSION):  # ROCm 6.4
        v = RocmFP8ScaledMMLinear.can_implement(spec())
        assert not v and "ROCm >= 6.5" in v.reason
    with on("gfx942"):
        assert "multiples of 16" in RocmFP8ScaledMMLinear.can_implement(spec(K=264)).reason
        assert "weight-only" in RocmFP8ScaledMMLinear.can_implement(spec(0, scheme=PRESETS["FPW8A16"])).reason
        assert "float32" in RocmFP8ScaledMMLinear.can_implement(spec(dtype=torch.float32)).reason
        assert "float8_e4m3fnuz" in RocmFP8ScaledMMLinear.can_implement(spec()).reason
    with on("gfx942", hip=None):  # a CUDA build: no ROCm device at all
        assert "not a ROCm build" in RocmFP8ScaledMMLinear.check(spec()).reason


def test_the_fake_rocm_op_enforces_formats_and_outputs():
    a = torch.randn(16, 32)
    b = torch.randn(16, 32)
    one = torch.ones(1)
    with on("gfx942"):
        with pytest.raises(RuntimeError, match="HIPBLAS_STATUS_NOT_SUPPORTED"):  # MI300 has no OCP FP8
            torch._scaled_mm(a.to(torch.float8_e4m3fn), b.to(torch.float8_e4m3fn).t(), one, one, out_dtype=torch.bfloat16)
        fz, gz = a.to(torch.float8_e4m3fnuz), b.to(torch.float8_e4m3fnuz)
        with pytest.raises(ValueError, match="BFloat16"):
            torch._scaled_mm(fz, gz.t(), torch.ones(16, 1), torch.ones(1, 16), out_dtype=torch.float16)
        with pytest.raises(RuntimeError, match="divisible by 16"):
            torch._scaled_mm(fz[:, :24], gz[:, :24].t(), one, one, out_dtype=torch.bfloat16)
        torch._scaled_mm(fz, gz.t(), torch.ones(16, 1), torch.ones(1, 16), out_dtype=torch.bfloat16)
    with on("gfx950", hip=fake_rocm.HIP_VERSION), pytest.raises(RuntimeError, match="ROCm MI300"):
        torch._scaled_mm(a.to(torch.float8_e4m3fn), b.to(torch.float8_e4m3fn).t(), one, one, out_dtype=torch.bfloat16)
    with on("gfx1201", hip="7.0.0"), pytest.raises(RuntimeError, match="HIPBLAS_STATUS_NOT_SUPPORTED"):
        torch._scaled_mm(a.to(torch.float8_e4m3fnuz), b.to(torch.float8_e4m3fnuz).t(), one, one, out_dtype=torch.bfloat16)


def generated_on_mi300(generate):
    def pytest_generate_tests(self, metafunc):
        with on("gfx942"):
            generate(self, metafunc)

    return pytest_generate_tests


class TestRocmFP8ScaledMMConformance(FloatKernelConformance):
    """The author kit on a simulated MI300X (e4m3fnuz operands, the fake hipBLASLt op)."""

    kernels = [RocmFP8ScaledMMLinear]
    device = "cpu"
    pytest_generate_tests = generated_on_mi300(FloatKernelConformance.pytest_generate_tests)

    @pytest.fixture(autouse=True)
    def _mi300(self):
        with on("gfx942"):
            yield


def test_torch_version_gate(monkeypatch):
    monkeypatch.setattr(mod, "torch_version", lambda: (2, 6))
    with on("gfx942"):
        assert "fold" in RocmFP8ScaledMMLinear.can_implement(spec()).reason  # row-wise on ROCm arrived in torch 2.7
