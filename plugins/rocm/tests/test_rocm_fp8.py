"""e4m3fn checkpoint bytes -> e4m3fnuz (gfx942's FP8) with the exponent-bias change: exact, every byte."""

import pytest
import torch

from quantlinear_rocm.fp8 import e4m3fn_to_e4m3fnuz, fp8_weight_dtype


def test_every_byte_exact():
    b = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    fn = b.view(torch.float8_e4m3fn).to(torch.float32)
    out, scale = e4m3fn_to_e4m3fnuz(b.view(torch.float8_e4m3fn), torch.ones((), dtype=torch.float32))
    assert out.dtype == torch.float8_e4m3fnuz and float(scale) == 2.0
    fnuz = out.to(torch.float32)
    finite = torch.isfinite(fn)
    assert torch.equal(fnuz[finite] * 2, fn[finite])  # value * new scale == value * old scale, bit for bit
    assert torch.isnan(fnuz[~finite]).all() and int((~finite).sum()) == 2  # 0x7F, 0xFF
    assert int(out.view(torch.uint8)[0x80]) == 0 and float(fnuz[0x80]) == 0.0  # -0 would be fnuz's NaN
    kept = (b != 0x80) & finite
    assert torch.equal(out.view(torch.uint8)[kept], b[kept])  # the bytes themselves do not change


def test_weight_times_scale_unchanged_and_inputs():
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(64, 128, generator=g) * 100).clamp(-448, 448).to(torch.float8_e4m3fn)
    s = torch.rand(64, 1, generator=g, dtype=torch.float32) + 0.01
    wz, sz = e4m3fn_to_e4m3fnuz(w, s)
    assert torch.equal(wz.to(torch.float32) * sz, w.to(torch.float32) * s)
    w2, none = e4m3fn_to_e4m3fnuz(w.view(torch.uint8))  # raw checkpoint bytes, no scale
    assert none is None and torch.equal(w2.view(torch.uint8), wz.view(torch.uint8))
    with pytest.raises(TypeError):
        e4m3fn_to_e4m3fnuz(w.to(torch.float16))
    with pytest.raises(ValueError, match="overflow"):
        e4m3fn_to_e4m3fnuz(w, torch.full((64, 1), 60000.0, dtype=torch.float16))


def test_format_per_arch():
    assert fp8_weight_dtype("gfx942") == torch.float8_e4m3fnuz
    assert fp8_weight_dtype("gfx950") == torch.float8_e4m3fn
    assert fp8_weight_dtype("gfx1201") == torch.float8_e4m3fn
    assert fp8_weight_dtype("gfx90a") is None and fp8_weight_dtype("gfx906") is None
