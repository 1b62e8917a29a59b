"""Which CPU kernel ``auto`` picks for the common int schemes, and the exact reasons the others give."""

from __future__ import annotations

import pytest
import torch

import quantlinear as ql
from quantlinear import LayerSpec, Scheme, get_scheme, select
from quantlinear_cpu.kernels import _native_build, native
from quantlinear_cpu.kernels.int4pack import Int4PackLinear
from quantlinear_cpu.kernels.int4x2 import Int4x2Linear
from quantlinear_cpu.kernels.int8pack import Int8PackLinear
from quantlinear_cpu.kernels.native import NativeF32Linear

NATIVE = bool(NativeF32Linear.can_implement(LayerSpec(get_scheme("W4A16"), "gptq", 256, 64, False, torch.float32)))


@pytest.fixture
def reg():
    import quantlinear_cpu.plugin as cpu_plugin

    select.clear_cache()
    r = ql.Registry(entry_points=False)
    r.register(cpu_plugin, "cpu")
    yield r
    select.clear_cache()


def spec(scheme, dtype, K=4096, N=4096, fmt="gptq"):
    s = get_scheme(scheme) if isinstance(scheme, str) else scheme
    return LayerSpec(s, fmt, K, N, False, dtype, "cpu", False, "model.layers.0.mlp.up_proj")


def verdicts(sel) -> dict[str, str | None]:
    return {c.kernel: (None if c.verdict.ok else c.verdict.reason) for c in sel.candidates}


@pytest.fixture
def no_native(monkeypatch):
    """The plugin as on a machine where the C kernel cannot be built."""
    monkeypatch.setenv("QUANTLINEAR_CPU_NO_NATIVE", "1")
    monkeypatch.setattr(_native_build, "_cache", {})
    monkeypatch.setattr(native, "_fn", None)


FALLBACK_PICKS = [
    ("W4A16", torch.bfloat16, "cpu.int4pack"),
    ("W4A16", torch.float16, "cpu.int4pack"),
    ("W2A16", torch.bfloat16, "cpu.int4pack"),
    ("W3A16", torch.float16, "cpu.int4pack"),
    ("W8A16", torch.bfloat16, "cpu.int4x2"),  # g128: int8pack needs per-channel scales
    (Scheme(bits=8, group_size=-1), torch.bfloat16, "cpu.int8pack"),
    (Scheme(bits=8, group_size=-1, sym=False), torch.float16, "cpu.int8pack"),
    ("W5A16", torch.bfloat16, "cpu.int4x2"),
    ("W6A16", torch.float16, "cpu.int4x2"),
    (Scheme(bits=4, group_size=16), torch.bfloat16, "cpu.dequant"),  # the op takes groups of >= 32
    ("W4A16", torch.float32, "cpu.dequant"),  # torch's packed ops are scalar in fp32
    ("W8A16", torch.float32, "cpu.dequant"),
]


@pytest.mark.parametrize("scheme,dtype,expected", FALLBACK_PICKS)
def test_auto_pick_without_native(reg, no_native, scheme, dtype, expected):
    sel = ql.select_kernel(spec(scheme, dtype), registry=reg)
    assert sel.kernel.name == expected
    assert verdicts(sel)["cpu.native_f32"] == "native kernels disabled by QUANTLINEAR_CPU_NO_NATIVE"


@pytest.mark.skipif(not NATIVE, reason="native kernel unavailable here")
@pytest.mark.parametrize("scheme,dtype,fallback", FALLBACK_PICKS)
def test_auto_pick_with_native(reg, scheme, dtype, fallback):
    """The fp32-compute C kernel outranks every torch-op kernel, for every dtype it runs."""
    sel = ql.select_kernel(spec(scheme, dtype), registry=reg)
    assert sel.kernel.name == "cpu.native_f32"
    v = verdicts(sel)
    assert v["cpu.native_f32"] is None and v[fallback] is None  # the fallback is still eligible, just ranked lower


@pytest.mark.parametrize("scheme", ["W4A16", "W8A16", "W2A16", "W3A16", "W5A16", Scheme(bits=4, group_size=128, sym=False), Scheme(bits=8, group_size=-1)])
def test_fp32_reasons_of_torch_op_kernels(reg, scheme):
    v = verdicts(ql.select_kernel(spec(scheme, torch.float32), registry=reg))
    bits = (get_scheme(scheme) if isinstance(scheme, str) else scheme).bits
    assert v["cpu.int4pack"] == ("dtype float32 not supported (supports bfloat16, float16)" if bits <= 4 else f"bits={bits} not supported (supports 2, 3, 4)")
    assert v["cpu.dequant"] is None


def test_w4a16_bf16_reasons_are_exact(reg, no_native):
    sel = ql.select_kernel(spec("W4A16", torch.bfloat16), registry=reg)
    v = verdicts(sel)
    assert v["cpu.int4pack"] is None
    assert v["cpu.int8pack"] == "bits=4 not supported (supports 8)"
    assert v["cpu.int4x2"] == "bits=4 not supported (supports 5, 6, 7, 8)"
    assert v["cpu.dequant"] is None
    report = sel.report()
    assert "-> cpu.int4pack" in report and "no cpu.native_f32" in report


def test_w8a16_g128_reasons_are_exact(reg):
    v = verdicts(ql.select_kernel(spec("W8A16", torch.bfloat16), registry=reg))
    assert v["cpu.int8pack"] == "needs one scale per output channel; group_size=128 gives 32 groups per row"
    assert v["cpu.int4pack"] == "bits=8 not supported (supports 2, 3, 4)"
    assert v["cpu.int4x2"] is None


def test_group_size_and_shape_reasons():
    g16 = spec(Scheme(bits=4, group_size=16), torch.bfloat16)
    assert Int4PackLinear.can_implement(g16).reason == "group_size=16 is not a multiple of 32 (the op takes groups of 256/128/64/32)"
    assert Int4x2Linear.can_implement(spec(Scheme(bits=8, group_size=16), torch.bfloat16)).reason == (
        "group_size=16 is not a multiple of 32 (the op takes groups of 256/128/64/32)"
    )
    odd_n = spec("W4A16", torch.float32, N=4104)
    assert NativeF32Linear.can_implement(odd_n).reason == "out_features=4104 is not a multiple of 16"
    partial = spec("W4A16", torch.bfloat16, K=4160)  # 32.5 groups of 128
    assert Int4PackLinear.can_implement(partial).reason == "group_size=128 does not divide in_features=4160"
    assert Int8PackLinear.can_implement(spec("W8A16", torch.float32)).reason == "dtype float32 not supported (supports bfloat16, float16)"
    assert NativeF32Linear.can_implement(spec(Scheme(bits=4, group_size=33), torch.float32, K=4125)).reason == "in_features=4125 is not a multiple of 2"
    assert NativeF32Linear.can_implement(spec(Scheme(bits=4, group_size=33), torch.float32, K=4092)).reason == (
        "group_size=33 is odd (codes are decoded in pairs of input channels)"
    )


def test_native_disabled_says_why(reg, no_native):
    sel = ql.select_kernel(spec("W4A16", torch.float32), registry=reg)
    assert sel.kernel.name == "cpu.dequant"
    assert verdicts(sel)["cpu.native_f32"] == "native kernels disabled by QUANTLINEAR_CPU_NO_NATIVE"


def test_native_without_compiler_says_why(monkeypatch, tmp_path):
    monkeypatch.delenv("QUANTLINEAR_CPU_NO_NATIVE", raising=False)
    monkeypatch.setenv("QUANTLINEAR_CPU_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "")
    monkeypatch.setattr(_native_build.shutil, "which", lambda name: None)
    monkeypatch.setattr(_native_build, "_cache", {})
    assert _native_build.load("woq_gemm_f32") == "no C compiler (cc/gcc) on PATH to build the native kernel"


@pytest.mark.skipif(not NATIVE, reason="native kernel unavailable here")
def test_native_builds_into_the_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("QUANTLINEAR_CPU_CACHE", str(tmp_path))
    monkeypatch.setattr(_native_build, "_cache", {})
    lib = _native_build.load("woq_gemm_f32")
    assert not isinstance(lib, str), lib
    assert lib.woq_abi_version() == 2
    assert [p.suffix for p in tmp_path.iterdir()] == [".so"]
