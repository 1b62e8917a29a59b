"""``quantlinear_triton.fp8_act``: the fused static FP8 activation quantization, against the reference, bit for bit.

Without a GPU the kernel runs in Triton's interpreter on CPU tensors (the repository conftest turns it on); on a GPU
machine the same tests run the compiled kernel on CUDA tensors.
"""

from __future__ import annotations

import pytest
import torch

from quantlinear import fpquant
from quantlinear_triton import fp8_act
from quantlinear_triton.runtime import interpreting, triton_available

DEV = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
pytestmark = [pytest.mark.skipif(not triton_available() or not (DEV.type == "cuda" or interpreting()),
                                 reason="needs Triton (a GPU, or TRITON_INTERPRET=1)"),
              pytest.mark.filterwarnings("ignore::RuntimeWarning")]  # the interpreter's numpy overflows to inf, as wanted
SCALES = (0.011, 3.0, 1.0, 1e-3, 0.37, 2.0**-10, 300.0)


def every_value(dtype: torch.dtype) -> torch.Tensor:
    """All 65536 bit patterns of a 16-bit dtype (NaNs and infinities included), as a [256, 256] matrix."""
    return torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype).reshape(256, 256).to(DEV)


def assert_same_codes(got: torch.Tensor, ref: torch.Tensor, fnuz: bool = False) -> None:
    """Equal bytes; where the reference is a NaN, a NaN (torch's NaN sign depends on its code path, see fp8_act)."""
    assert got.dtype == ref.dtype and got.shape == ref.shape and got.is_contiguous()
    g, r = got.view(torch.uint8), ref.view(torch.uint8)
    if fnuz:
        nan_r = r == 0x80
        nan_g = g == 0x80
    else:
        nan_r = (r & 0x7F) == 0x7F
        nan_g = (g & 0x7F) == 0x7F
    assert torch.equal(nan_g, nan_r), "NaN positions differ"
    bad = (g != r) & ~nan_r
    assert not bool(bad.any()), f"{int(bad.sum())} codes differ, e.g. got {g[bad][:8].tolist()} want {r[bad][:8].tolist()}"


@pytest.mark.parametrize("xdt", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("sdt", [torch.float16, torch.bfloat16, torch.float32])
def test_every_value_matches_the_reference(xdt, sdt):
    """e4m3fn: every fp16 / bf16 value, several scales in each scale dtype (promoted quotient: fp16, bf16 or fp32)."""
    x = every_value(xdt)
    for s in SCALES:
        st = torch.tensor([s], dtype=sdt, device=DEV)
        ref = fpquant.fp8_static_quantize_input(x, st)
        assert_same_codes(fp8_act.quantize_static(x, st), ref)
        assert torch.equal(fp8_act.reference(x, st).view(torch.uint8), ref.view(torch.uint8))


@pytest.mark.parametrize("xdt", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("sdt", [torch.float16, torch.bfloat16, torch.float32])
def test_every_value_fnuz(xdt, sdt):
    """e4m3fnuz (gfx942): ``fnuz(clamp(x / 2s, +-224))`` as torch casts it, and each byte the reference's e4m3fn byte."""
    x = every_value(xdt)
    for s in SCALES[:4]:
        st = torch.tensor([s], dtype=sdt, device=DEV)
        st2 = st * 2
        got = fp8_act.quantize_static(x, st2, fnuz=True)
        assert got.dtype == torch.float8_e4m3fnuz
        assert_same_codes(got, torch.clamp(x / st2, -224, 224).to(torch.float8_e4m3fnuz), fnuz=True)
        fn = fpquant.fp8_static_quantize_input(x, st).view(torch.uint8)
        g = got.view(torch.uint8)
        keep = (fn != 0x80) & ((fn & 0x7F) != 0x7F)  # -0 becomes +0; NaN is 0x80 in fnuz
        assert torch.equal(g[keep], fn[keep]) and bool((g[fn == 0x80] == 0).all()) and bool((g[(fn & 0x7F) == 0x7F] == 0x80).all())


def test_special_values():
    x = torch.tensor([[float("inf"), float("-inf"), -0.0, 0.0, 448.0, -1e4, 464.0, 2.0**-10, 3 * 2.0**-10, 2.0**-10 * 1.01,
                       2.0**-11, 17.0, 18.0, 19.0, 2.0**-6, 0.0, float("nan")]], dtype=torch.float32).to(DEV)
    one = torch.ones(1, device=DEV)
    codes = fp8_act.quantize_static(x.half(), one.half()).view(torch.uint8)[0, :16].tolist()
    # inf, -inf -> +-448; -0 keeps its sign; subnormals are multiples of 2^-9 with ties to even (2^-10 -> 0,
    # 3 * 2^-10 -> 2 * 2^-9); 17 and 19 are ties between 16 / 18 and 18 / 20 (even mantissas win); 2^-6 is code 8
    assert codes == [0x7E, 0xFE, 0x80, 0x00, 0x7E, 0xFE, 0x7E, 0x00, 0x02, 0x01, 0x00, 0x58, 0x59, 0x5A, 0x08, 0x00]
    assert codes == fpquant.fp8_static_quantize_input(x.half(), one.half()).view(torch.uint8)[0, :16].tolist()
    assert (fp8_act.quantize_static(x, one).view(torch.uint8)[0, 16] & 0x7F) == 0x7F  # fp32 input: NaN stays NaN


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("M,K", [(1, 16), (3, 100), (37, 1024), (5, 3000), (130, 64)])
def test_shapes_and_row_strides(dtype, M, K):
    """Any M and K (masked edges), a row stride wider than K (a column slice of a larger matrix), fp32 activations."""
    g = torch.Generator().manual_seed(M * K)
    wide = (torch.randn(M, K + 48, generator=g) * torch.logspace(-6, 3, K + 48)).to(dtype).to(DEV)
    for x in (wide[:, :K].contiguous(), wide[:, 48:]):
        for sdt in (torch.float32, dtype):
            st = torch.tensor([0.021], dtype=sdt, device=DEV)
            y = fp8_act.quantize_static(x, st)
            assert y.shape == (M, K)
            assert_same_codes(y, fpquant.fp8_static_quantize_input(x, st))


def test_empty_and_fallback():
    st = torch.tensor([0.5], device=DEV)
    assert fp8_act.quantize_static(torch.empty(0, 64, device=DEV, dtype=torch.float16), st).shape == (0, 64)
    x = torch.randn(4, 32, device=DEV, dtype=torch.float16)
    assert not fp8_act.usable(x, st.double())  # a float64 scale: the reference divides in float64; torch ops run it
    assert_same_codes(fp8_act.quantize_static(x, st.double()), fpquant.fp8_static_quantize_input(x, st.double()))
    assert not fp8_act.usable(x.reshape(2, 2, 32), st) and fp8_act.usable(x, st)
    assert_same_codes(fp8_act.quantize_static(x.reshape(2, 2, 32), st).reshape(4, 32), fpquant.fp8_static_quantize_input(x, st))


@pytest.mark.parametrize("xdt", [torch.float16, torch.bfloat16])
def test_slab_order(xdt):
    """``slab=32``: the same codes in the byte order of slab words (every value; odd K padded with code 0; strides)."""
    x = every_value(xdt)
    for s in SCALES[:3]:
        st = torch.tensor([s], device=DEV)
        ref = fpquant.fp8_static_quantize_input(x, st)
        assert_same_codes(fp8_act.quantize_static(x, st, slab=32), fp8_act.to_slab_order(ref.contiguous(), 32))
    for K in (100, 3000):
        wide = (torch.randn(5, K + 48) * 4).to(xdt).to(DEV)
        for v in (wide[:, :K].contiguous(), wide[:, 48:]):
            y = fp8_act.quantize_static(v, st, slab=32)
            assert y.shape == (5, fp8_act.slab_width(K, 32)) == (5, -(-K // 128) * 128)
            assert_same_codes(y, fp8_act.to_slab_order(fpquant.fp8_static_quantize_input(v, st).contiguous(), 32))
            assert not bool(y.view(torch.uint8).view(5, -1, 32, 4).transpose(2, 3).reshape(5, -1)[:, K:].any())  # padding: 0


@pytest.mark.skipif(DEV.type != "cuda" or not fp8_act.native_ok(torch.empty(1, device=DEV)),
                    reason="the hardware E4M3 conversion needs an NVIDIA GPU of sm_89+")
@pytest.mark.parametrize("xdt", [torch.float16, torch.bfloat16])
def test_native_conversion_equals_the_bit_path(xdt):
    """cvt.rn.satfinite.e4m3x2.f32 (and cvt.rn.bf16.f32) give the bit path's codes for every value (NaN: a NaN)."""
    x = every_value(xdt)
    for s in SCALES:
        for sdt in (torch.float32, xdt):
            st = torch.tensor([s], dtype=sdt, device=DEV)
            assert_same_codes(fp8_act.quantize_static(x, st, native=True), fp8_act.quantize_static(x, st, native=False))
