"""npu.wqbmm against the fake torch_npu: repacking, numerics, selection, rejections, end-to-end loading."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import quantlinear
from quantlinear import LayerSpec, Scheme, select_kernel
from quantlinear.errors import NoKernelError
from quantlinear.quantize import quantize_weight

from fake_torch_npu import FakeContractError, simulate_npu
from quantlinear_npu.kernels.wqbmm import WeightQuantBatchMatmulLinear as WQBMM

TOL = {torch.float16: 1e-2, torch.bfloat16: 2e-2}


@pytest.fixture
def npu():
    with simulate_npu():
        yield


@pytest.fixture
def npu_registry():
    import quantlinear_npu.plugin as plugin

    reg = quantlinear.Registry(entry_points=False)
    with simulate_npu():  # the hook finds the (fake) torch_npu already imported
        reg.register(plugin, "npu")
    assert reg.plugin("npu").state == "loaded", reg.plugin("npu").error
    return reg


def _rel_err(y, ref):
    return float((y.float() - ref).abs().max() / ref.abs().max())


def _layer(bits, group, sym, dtype, K=256, N=64, fmt="gptq", bias=False, seed=0):
    scheme = Scheme(bits=bits, group_size=group, sym=sym)
    g = torch.Generator().manual_seed(seed)
    w = quantize_weight(torch.randn(N, K, generator=g) * 0.05, scheme)
    spec = LayerSpec(scheme, fmt, K, N, bias, dtype, "cpu", False, "model.layers.0.self_attn.q_proj")
    b = (torch.randn(N, generator=g) * 0.1).to(torch.float16) if bias else None
    return WQBMM.from_weights(spec, w, b), w, spec, b


def _check_numerics(layer, w, spec, b, M=5):
    x = torch.randn(M, spec.in_features, generator=torch.Generator().manual_seed(7)).to(spec.dtype)
    ref = x.float() @ w.dequantize(spec.group_size).t()
    if b is not None:
        ref = ref + b.to(spec.dtype).float()
    y = layer(x)
    assert y.dtype == spec.dtype and y.shape == (M, spec.out_features)
    err = _rel_err(y, ref)
    assert err <= TOL[spec.dtype], f"{spec.describe()}: relative error {err:.3g}"
    return err


# ---- the repacking: signed codes, offset = 2**(bits-1) - z --------------------------------------------------
def test_offset_sign_and_signed_codes(npu):
    """(q - z) * s == ((q - c) + (c - z)) * s with c = 2**(bits-1), i.e. the op's (weight + offset) * scale."""
    layer, w, spec, _ = _layer(4, 64, False, torch.float16)
    assert layer.weight_packed.dtype == torch.int32 and layer.weight_packed.shape == (64, 256 // 8)
    expected_offset = (8 - w.zeros.to(torch.float32)).t().to(torch.float16)
    assert torch.equal(layer.antiquant_offset, expected_offset)
    assert layer.antiquant_scale.shape == (4, 64) and layer.antiquant_group_size == 64
    # the same numbers through the op's documented formula, written out by hand
    codes = w.qweight.to(torch.float32) - 8  # what went into npu_convert_weight_to_int4pack
    W = (codes.t() + expected_offset.float().repeat_interleave(64, 0)) * w.scales.float().t().repeat_interleave(64, 0)
    torch.testing.assert_close(W.t(), w.dequantize(64), rtol=1e-3, atol=1e-5)
    # symmetric layers need no offset at all; 8-bit codes are stored as int8 q - 128
    layer8, w8, _, _ = _layer(8, -1, True, torch.float16)
    assert layer8.antiquant_offset is None and layer8.antiquant_group_size == 0
    assert layer8.weight_packed.dtype == torch.int8 and torch.equal(layer8.weight_packed.to(torch.int16), w8.qweight.to(torch.int16) - 128)
    assert layer8.antiquant_scale.shape == (64,)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("group", [32, 64, 128, -1])
@pytest.mark.parametrize("sym", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
def test_numerics(npu, bits, sym, group, dtype):
    layer, w, spec, b = _layer(bits, group, sym, dtype)
    _check_numerics(layer, w, spec, b)
    assert layer.weight_packed.dtype == (torch.int32 if bits <= 4 else torch.int8)


@pytest.mark.parametrize("order", [(1, 0, 3, 2, 5, 4, 7, 6), (0, 2, 4, 6, 1, 3, 5, 7), (7, 6, 5, 4, 3, 2, 1, 0)], ids=str)
def test_int4_does_not_depend_on_the_undocumented_nibble_order(order):
    with simulate_npu(nibble_order=order):
        layer, w, spec, b = _layer(4, 32, False, torch.bfloat16)
        _check_numerics(layer, w, spec, b)


@pytest.mark.parametrize("fmt", ["gptq", "gptq_v2", "awq"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_formats_partial_last_group_and_fused_bias(npu, fmt, dtype):
    # K = 160 with groups of 64: 3 groups, the last one holding 32 channels (ceil(K/g) scale rows)
    layer, w, spec, b = _layer(4, 64, False, dtype, K=160, N=64, fmt=fmt, bias=True)
    assert layer.antiquant_scale.shape == (3, 64)
    assert layer.bias.dtype == (torch.float32 if dtype == torch.bfloat16 else torch.float16)
    _check_numerics(layer, w, spec, b, M=1)


# ---- the fake rejects what the op rejects ---------------------------------------------------------------
def test_fake_op_rejects_what_the_npu_rejects(npu):
    op, pack = torch.ops.npu.npu_weight_quant_batchmatmul, torch.ops.npu.npu_convert_weight_to_int4pack
    x = torch.randn(3, 128).to(torch.bfloat16)
    w8 = torch.randint(-8, 8, (64, 128), dtype=torch.int8)
    s = torch.rand(64).to(torch.bfloat16)
    assert op(x, w8.t(), s).shape == (3, 64)
    with pytest.raises(RuntimeError, match="antiquant_group_size can be either 0 or a multiple of 32"):
        op(x, w8.t(), torch.rand(3, 64).to(torch.bfloat16), None, None, None, None, 48)
    with pytest.raises(RuntimeError, match="bias must be torch.float32"):
        op(x, w8.t(), s, None, None, None, torch.zeros(64, dtype=torch.bfloat16))
    with pytest.raises(RuntimeError, match="must equal x dtype"):
        op(x, w8.t(), s.float())
    with pytest.raises(RuntimeError, match="The k of x and weight should be equal"):
        op(x, w8, s)
    with pytest.raises(RuntimeError, match="pergroup antiquant_scale"):
        op(x, w8.t(), s, None, None, None, None, 64)
    with pytest.raises(FakeContractError, match=r"\[-8, 7\]"):
        pack(torch.full((64, 128), 8, dtype=torch.int32))
    with pytest.raises(RuntimeError, match="contiguous"):
        pack(torch.zeros(128, 64, dtype=torch.int32).t())
    with pytest.raises(RuntimeError, match="multiple of 8"):
        pack(torch.zeros(64, 12, dtype=torch.int32))


def test_fake_inference_card_takes_fp16_int8_only():
    with simulate_npu(soc="Ascend310P3"):
        op = torch.ops.npu.npu_weight_quant_batchmatmul
        w = torch.zeros(64, 128, dtype=torch.int8)
        assert op(torch.randn(2, 128).half(), w.t(), torch.ones(64).half()).dtype == torch.float16
        with pytest.raises(RuntimeError, match="x dtype"):
            op(torch.randn(2, 128).bfloat16(), w.t(), torch.ones(64).bfloat16())
        with pytest.raises(RuntimeError, match="Atlas A2/A3 only"):
            torch.ops.npu.npu_convert_weight_to_int4pack(torch.zeros(64, 128, dtype=torch.int32))


# ---- selection -------------------------------------------------------------------------------------------
def _spec(bits, group, sym=True, dtype=torch.float16, K=4096, N=1024, device="cpu"):
    return LayerSpec(Scheme(bits=bits, group_size=group, sym=sym), "gptq", K, N, False, dtype, device, False, "layer")


def _reason(spec, **sim):
    with simulate_npu(**sim):
        v = WQBMM.can_implement(spec)
    return v


def test_auto_picks_npu_kernel(npu_registry):
    with simulate_npu():
        for spec in (_spec(4, 128), _spec(8, 128, dtype=torch.bfloat16), _spec(3, -1, sym=False), _spec(6, 64)):
            assert select_kernel(spec, registry=npu_registry).kernel is WQBMM


def test_product_and_shape_limits_are_explained():
    assert _reason(_spec(8, -1), soc="Ascend310P3")  # inference card: fp16 + int8
    v = _reason(_spec(8, -1, dtype=torch.bfloat16), soc="Ascend310P3")
    assert not v and "float16 activations only" in v.reason
    v = _reason(_spec(4, 128), soc="Ascend310P3")
    assert not v and "int8 weights only" in v.reason
    v = _reason(_spec(4, 128), soc="Ascend910A")
    assert not v and "Ascend910A is not among the op's documented products" in v.reason
    assert _reason(_spec(4, 128), soc="Ascend910_9392")  # Atlas A3
    v = _reason(_spec(4, 128), soc="Ascend950PR")  # newer than the doc's product table: allowed, with a note
    assert v and "not in the op's documented product table" in v.reason
    v = _reason(_spec(4, 128, K=70000))
    assert not v and "65535" in v.reason
    v = _reason(_spec(4, 48, K=4800))
    assert not v and "group_size=48 is not a multiple of 32" in v.reason
    v = _reason(_spec(4, -1, K=100))
    assert not v and "multiple of 8" in v.reason
    assert _reason(_spec(8, -1, K=100))  # int8 weights have no K alignment
    v = _reason(_spec(4, 128), available=False)
    assert not v and "torch.npu.is_available() is False" in v.reason
    v = _reason(_spec(4, 128, dtype=torch.float32))
    assert not v and "dtype float32 not supported" in v.reason


def test_cpu_device_never_gets_npu_kernels():
    import quantlinear_cpu.plugin as cpu_plugin
    import quantlinear_npu.plugin as npu_plugin

    with simulate_npu(family=False):  # torch_npu present and an NPU "available", but the layer is on the CPU
        reg = quantlinear.Registry(entry_points=False)
        reg.register(cpu_plugin, "cpu")
        reg.register(npu_plugin, "npu")
        for spec in (_spec(4, 128), _spec(8, -1)):
            sel = select_kernel(spec, registry=reg)
            assert sel.kernel.name.startswith("cpu."), sel.report()
            npu_c = [c for c in sel.candidates if c.plugin == "npu"]
            assert npu_c and all(not c.verdict.ok and "runs on npu, not cpu" in c.verdict.reason for c in npu_c)


def test_verified_note_is_what_doctor_shows():
    from quantlinear.cli import _kernel_info

    assert "verified: against fakes only" in _kernel_info(WQBMM)["doc"]
    assert "not on Ascend hardware" in WQBMM.verified


# ---- end to end: AutoRound-format checkpoints loaded with backend="auto" -------------------------------------
class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.Linear(128, 256, bias=True)
        self.down = nn.Linear(256, 128, bias=False)

    def forward(self, x):
        return self.down(torch.nn.functional.gelu(self.up(x)))


@pytest.mark.parametrize("scheme", ["W4A16", "W8A16", Scheme(bits=4, group_size=32, sym=False), Scheme(bits=2, group_size=64, sym=False)],
                         ids=["W4A16", "W8A16", "W4g32asym", "W2g64asym"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_autoround_checkpoint_loads_on_simulated_npu(tmp_path, npu_registry, scheme, dtype):
    import quantlinear_cpu.plugin as cpu_plugin

    torch.manual_seed(0)
    path = quantlinear.save_quantized(_Tiny().eval(), tmp_path / "ckpt", scheme, skip=())
    x = torch.randn(4, 128)
    with simulate_npu():
        with quantlinear.skeleton():
            skel = _Tiny()
        q = quantlinear.load_quantized(skel, path, backend="auto", device="cpu", dtype=dtype, registry=npu_registry, progress=False)
        assert q.quantlinear_report.kernel_counts() == {"npu.wqbmm": 2}
        y = q(x.to(dtype))
    reg = quantlinear.Registry(entry_points=False)
    reg.register(cpu_plugin, "cpu")
    with quantlinear.skeleton():
        skel = _Tiny()
    ref = quantlinear.load_quantized(skel, path, backend="cpu.dequant", device="cpu", dtype=torch.float32, registry=reg, progress=False)
    err = _rel_err(y, ref(x.to(dtype).float()))
    assert err < 3e-2, err


def test_group_of_16_checkpoint_is_refused_with_the_reason(tmp_path, npu_registry):
    path = quantlinear.save_quantized(_Tiny().eval(), tmp_path / "ckpt", Scheme(bits=4, group_size=16), skip=())
    with simulate_npu():
        with quantlinear.skeleton():
            skel = _Tiny()
        with pytest.raises(NoKernelError, match="group_size=16 is not a multiple of 32"):
            quantlinear.load_quantized(skel, path, backend="auto", device="cpu", dtype=torch.float16, registry=npu_registry, progress=False)
