"""XPU kernels against the fake XPU ops: repacking, numerics, selection, rejections, end-to-end loading."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import quantlinear
from quantlinear import LayerSpec, Scheme, select_kernel
from quantlinear.benchutil import random_int_weights
from quantlinear.errors import NoKernelError
from quantlinear.quantize import quantize_weight

import fake_xpu
from fake_xpu import FakeContractError, simulate_xpu
from quantlinear_xpu.kernels.int4_onednn import Int4OneDNNLinear, pack_uint4_pairs
from quantlinear_xpu.kernels.int8pack import Int8PackLinear

TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 2e-2}


@pytest.fixture
def xpu():
    with simulate_xpu():
        yield


@pytest.fixture
def xpu_registry():
    import quantlinear_xpu.plugin as plugin

    reg = quantlinear.Registry(entry_points=False)
    reg.register(plugin, "xpu")
    return reg


def _rel_err(y, ref):
    return float((y.float() - ref).abs().max() / ref.abs().max())


def _autoround_layer(kernel, bits, group, sym, fmt, dtype, K=256, N=96, seed=0, bias=False):
    """RTN-quantize a float weight the AutoRound way, pack it in ``fmt``, load it into ``kernel``."""
    scheme = Scheme(bits=bits, group_size=group, sym=sym)
    g = torch.Generator().manual_seed(seed)
    w = quantize_weight(torch.randn(N, K, generator=g) * 0.05, scheme)
    spec = LayerSpec(scheme, fmt, K, N, bias, dtype, "cpu", False, "model.layers.0.mlp.up_proj")
    b = (torch.randn(N, generator=g) * 0.1).to(torch.float16) if bias else None
    return kernel.from_weights(spec, w, b), w, spec, b


def _check_numerics(layer, w, spec, b, M=5):
    x = torch.randn(M, spec.in_features, generator=torch.Generator().manual_seed(7)).to(spec.dtype)
    ref = x.float() @ w.dequantize(spec.group_size).t()
    if b is not None:
        ref = ref + b.float()
    y = layer(x)
    assert y.dtype == spec.dtype and y.shape == (M, spec.out_features)
    err = _rel_err(y, ref)
    assert err <= TOL[spec.dtype], f"{spec.describe()}: relative error {err:.3g}"
    return err


# ---- packing against the vendor layout --------------------------------------------------------------------
def test_uint4_pairs_and_vendor_packer_give_the_documented_words(xpu):
    # codes k = 0..7 of row 0 are 1..8: XPU word 0 must hold k at bits 4k (little-endian u4x8)
    q = torch.zeros(2, 16, dtype=torch.uint8)
    q[0, :8] = torch.arange(1, 9, dtype=torch.uint8)
    q[1, 8:] = torch.tensor([15, 0, 0, 0, 0, 0, 0, 14], dtype=torch.uint8)
    pairs = pack_uint4_pairs(q)
    assert pairs.dtype == torch.uint8 and pairs.shape == (2, 8)
    assert pairs[0, :4].tolist() == [0x21, 0x43, 0x65, 0x87]
    packed = torch.ops.aten._convert_weight_to_int4pack(pairs, 8)
    assert packed.dtype == torch.int32 and packed.shape == (2, 2)
    assert packed[0, 0].item() == 0x87654321 - 2**32 and packed[0, 1].item() == 0
    assert packed[1, 1].item() == 0xE000000F - 2**32
    assert torch.equal(fake_xpu.unpack_xpu_int4(packed, 16), q.long())


# ---- numerics of AutoRound checkpoints through the repack -------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("group", [32, 64, 128, -1])
@pytest.mark.parametrize("sym", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_int4_numerics(xpu, bits, sym, group, dtype):
    layer, w, spec, b = _autoround_layer(Int4OneDNNLinear, bits, group, sym, "gptq", dtype)
    _check_numerics(layer, w, spec, b)
    assert layer.packed.shape == (spec.out_features, spec.in_features // 8) and layer.packed.dtype == torch.int32
    assert layer.qzeros.dtype == torch.int8 and layer.qscale.dtype == dtype


@pytest.mark.parametrize("fmt", ["gptq", "gptq_v2", "awq"])
def test_int4_every_checkpoint_format_and_bias(xpu, fmt):
    layer, w, spec, b = _autoround_layer(Int4OneDNNLinear, 4, 128, False, fmt, torch.float16, bias=True)
    _check_numerics(layer, w, spec, b, M=1)  # M = 1: the case aten._weight_int4pack_mm gets wrong on XPU


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=["fp16", "bf16", "fp32"])
@pytest.mark.parametrize("sym", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("bits", [2, 4, 5, 8])
def test_int8pack_numerics(xpu, bits, sym, dtype):
    layer, w, spec, b = _autoround_layer(Int8PackLinear, bits, -1, sym, "gptq", dtype, K=160, N=64)
    _check_numerics(layer, w, spec, b)
    assert layer.weight_int8.dtype == torch.int8 and layer.weight_int8.shape == (64, 160)
    assert (layer.zero_term is None) == sym


def test_int8pack_lowbit_asym_has_no_cancellation_error(xpu):
    """Recentring at 2**(bits-1) keeps fp16 error at the op's own level for 2-bit asym codes."""
    layer, w, spec, b = _autoround_layer(Int8PackLinear, 2, -1, False, "gptq", torch.float16, K=1024, N=64)
    assert _check_numerics(layer, w, spec, b) < 3e-3


# ---- the fakes reject what the vendor ops reject ----------------------------------------------------------
def test_fake_int4_op_rejects_what_xpu_rejects(xpu):
    w = random_int_weights(256, 64, Scheme(bits=4, group_size=128, sym=False))
    B = torch.ops.aten._convert_weight_to_int4pack(pack_uint4_pairs(w.qweight), 8)
    s, z = w.scales.t().contiguous(), w.zeros.to(torch.int8).t().contiguous()
    A = torch.randn(3, 256, dtype=torch.float16)
    mm = torch.ops.aten._weight_int4pack_mm_with_scales_and_zeros
    with pytest.raises(RuntimeError, match="Unsupported data type for int4 matmul"):
        mm(A.float(), B, 128, s.float(), z)
    with pytest.raises(RuntimeError, match="multiple of 32"):
        mm(A, B, 48, s, z)
    with pytest.raises(RuntimeError, match="qZeros to be int8"):
        mm(A, B, 128, s, z.to(torch.int32))
    with pytest.raises(RuntimeError, match="expect A to be contiguous"):
        mm(torch.randn(256, 3, dtype=torch.float16).t(), B, 128, s, z)
    with pytest.raises(FakeContractError, match="qScale must be contiguous"):
        mm(A, B, 128, w.scales.t(), z)
    with pytest.raises(FakeContractError, match="qScale dtype"):
        mm(A, B, 128, s.float(), z)
    with pytest.raises(RuntimeError, match="innerKTiles"):
        torch.ops.aten._convert_weight_to_int4pack(pack_uint4_pairs(w.qweight), 1)
    with pytest.raises(RuntimeError, match="kByte"):
        torch.ops.aten._convert_weight_to_int4pack(w.qweight.to(torch.int32), 8)
    with pytest.raises(RuntimeError, match="contiguous on the last dimension"):
        torch.ops.aten._weight_int8pack_mm(torch.randn(8, 3).t(), torch.zeros(4, 8, dtype=torch.int8), torch.ones(4))
    assert mm(A, B, 128, s, z).shape == (3, 64)


# ---- selection on the simulated device -------------------------------------------------------------------
def _spec(bits, group, sym=True, dtype=torch.float16, K=4096, N=1024, fmt="gptq", device="cpu"):
    return LayerSpec(Scheme(bits=bits, group_size=group, sym=sym), fmt, K, N, False, dtype, device, False, "layer")


def test_auto_picks_the_right_xpu_kernel(xpu, xpu_registry):
    assert select_kernel(_spec(4, 128), registry=xpu_registry).kernel is Int4OneDNNLinear
    assert select_kernel(_spec(3, 64, sym=False, dtype=torch.bfloat16), registry=xpu_registry).kernel is Int4OneDNNLinear
    assert select_kernel(_spec(4, -1), registry=xpu_registry).kernel is Int4OneDNNLinear
    assert select_kernel(_spec(8, -1, sym=False), registry=xpu_registry).kernel is Int8PackLinear
    # per-channel 4-bit with K not a multiple of 32: only the int8 path can take it
    assert select_kernel(_spec(4, -1, K=200), registry=xpu_registry).kernel is Int8PackLinear
    # fp32 activations: the oneDNN int4 path asserts on fp32, so int4 says why and int8pack takes per-channel
    sel = select_kernel(_spec(4, -1, dtype=torch.float32), registry=xpu_registry)
    assert sel.kernel is Int8PackLinear
    assert "dtype float32 not supported" in dict((c.kernel, c.verdict.reason) for c in sel.candidates)["xpu.int4"]


def test_unsupported_layers_are_explained(xpu, xpu_registry):
    with pytest.raises(NoKernelError) as e:
        select_kernel(_spec(8, 128), registry=xpu_registry)
    msg = str(e.value)
    assert "xpu.int4" in msg and "bits=8 not supported" in msg
    assert "xpu.int8pack" in msg and "one scale per output channel" in msg
    sel = select_kernel(_spec(4, 48, K=4800), registry=xpu_registry, raise_on_none=False)
    reasons = {c.kernel: c.verdict.reason for c in sel.candidates}
    assert "group_size=48 is not a multiple of 32" in reasons["xpu.int4"]


def test_no_xpu_device_or_no_xpu_kernels_are_reasons(monkeypatch):
    with simulate_xpu(available=False):
        v = Int4OneDNNLinear.can_implement(_spec(4, 128))
        assert not v and "torch.xpu.is_available() is False" in v.reason
    with simulate_xpu(ops=()):
        v = Int4OneDNNLinear.can_implement(_spec(4, 128))
        assert not v and "no XPU kernel" in v.reason and "_convert_weight_to_int4pack" in v.reason
        v = Int8PackLinear.can_implement(_spec(8, -1))
        assert not v and "_weight_int8pack_mm" in v.reason


def test_cpu_device_never_gets_xpu_kernels(monkeypatch):
    """Even with an 'available' XPU and XPU kernels registered, a CPU layer goes to the CPU plugin."""
    import quantlinear_cpu.plugin as cpu_plugin
    import quantlinear_xpu.plugin as xpu_plugin

    monkeypatch.setattr(torch.xpu, "is_available", lambda: True)
    reg = quantlinear.Registry(entry_points=False)
    reg.register(cpu_plugin, "cpu")
    reg.register(xpu_plugin, "xpu")
    with fake_xpu.fake_xpu_ops():
        for spec in (_spec(4, 128), _spec(8, -1)):
            sel = select_kernel(spec, registry=reg)
            assert sel.kernel.name.startswith("cpu."), sel.report()
            for c in sel.candidates:
                if c.plugin == "xpu":
                    assert not c.verdict.ok and "runs on xpu, not cpu" in c.verdict.reason


def test_real_xpu_device_spec_is_family_xpu(xpu_registry):
    """Without any simulation, a layer on torch.device('xpu') is matched by family (and refused
    here only because this machine has no XPU)."""
    spec = _spec(4, 128, device="xpu")
    v = Int4OneDNNLinear.can_implement(spec)
    assert not v and "torch.xpu.is_available() is False" in v.reason


# ---- end to end: an AutoRound-format checkpoint loaded with backend="auto" ------------------------------
class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.Linear(128, 256, bias=True)
        self.down = nn.Linear(256, 128, bias=False)

    def forward(self, x):
        return self.down(torch.nn.functional.gelu(self.up(x)))


@pytest.mark.parametrize(
    "scheme,expected",
    [("W4A16", "xpu.int4"), (Scheme(bits=4, group_size=32, sym=False), "xpu.int4"),
     (Scheme(bits=2, group_size=64, sym=False), "xpu.int4"), (Scheme(bits=8, group_size=-1, sym=False), "xpu.int8pack")],
    ids=["W4A16", "W4g32asym", "W2g64asym", "W8perchannel-asym"],
)
def test_autoround_checkpoint_loads_on_simulated_xpu(tmp_path, monkeypatch, xpu_registry, scheme, expected):
    import quantlinear_cpu.plugin as cpu_plugin

    torch.manual_seed(0)
    model = _Tiny().eval()
    path = quantlinear.save_quantized(model, tmp_path / "ckpt", scheme, skip=())
    x = torch.randn(4, 128).to(torch.float16)
    with simulate_xpu():
        with quantlinear.skeleton():
            skel = _Tiny()
        q = quantlinear.load_quantized(skel, path, backend="auto", device="cpu", dtype=torch.float16, registry=xpu_registry, progress=False)
        assert q.quantlinear_report.kernel_counts() == {expected: 2}
        y = q(x)
    # the same checkpoint through the CPU plugin's reference kernel, in fp32
    reg = quantlinear.Registry(entry_points=False)
    reg.register(cpu_plugin, "cpu")
    with quantlinear.skeleton():
        skel = _Tiny()
    ref = quantlinear.load_quantized(skel, path, backend="cpu.dequant", device="cpu", dtype=torch.float32, registry=reg, progress=False)
    err = _rel_err(y, ref(x.float()))
    assert err < 2e-2, err


def test_w8a16_group128_checkpoint_is_refused_with_reasons(tmp_path, monkeypatch, xpu_registry):
    path = quantlinear.save_quantized(_Tiny().eval(), tmp_path / "ckpt", "W8A16", skip=())
    with simulate_xpu():
        with quantlinear.skeleton():
            skel = _Tiny()
        with pytest.raises(NoKernelError, match="one scale per output channel"):
            quantlinear.load_quantized(skel, path, backend="auto", device="cpu", dtype=torch.float16, registry=xpu_registry, progress=False)


def test_verified_note_is_what_doctor_shows():
    from quantlinear.cli import _kernel_info

    from quantlinear_xpu.kernels.ipex_woq import IPEXWeightOnlyLinear

    for k in (Int4OneDNNLinear, Int8PackLinear, IPEXWeightOnlyLinear):
        assert "verified: against fakes only" in _kernel_info(k)["doc"], k.name
        assert "not on Intel hardware" in k.verified
