"""Reference pack/unpack: round trips, and the exact bit layouts AutoRound writes."""

import pytest
import torch

import quantlinear as ql
from quantlinear import bitpack
from quantlinear.formats import get_format
from quantlinear.quantize import quantize_weight


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
def test_bitstream_round_trip(bits):
    v = torch.randint(0, 2**bits, (7, 64), dtype=torch.int32)
    packed = bitpack.pack(v, bits, dim=1)
    assert packed.dtype == torch.int32 and packed.shape == (7, 64 * bits // 32)
    assert torch.equal(bitpack.unpack(packed, bits, dim=1, dtype=torch.int32), v)


def test_4bit_is_lsb_first_nibbles():
    v = torch.arange(8, dtype=torch.int32)
    assert int(bitpack.pack(v, 4)[0]) == 0x76543210


def test_3bit_layout_matches_autogptq_straddling_values():
    # value 10 straddles words 0/1 (low 2 bits at 30-31 of w0, bit 2 at bit 0 of w1)
    v = torch.zeros(32, dtype=torch.int32)
    v[10] = 0b111
    w = bitpack.pack(v, 3).tolist()
    assert (w[0] & 0xFFFFFFFF) == 0b11 << 30 and w[1] == 1 and w[2] == 0
    v = torch.zeros(32, dtype=torch.int32)
    v[21] = 0b111  # bit0 at bit31 of w1, bits 1-2 at bits 0-1 of w2
    w = bitpack.pack(v, 3).tolist()
    assert (w[1] & 0xFFFFFFFF) == 1 << 31 and w[2] == 0b11


def test_matches_autorounds_own_bitstream_when_installed():
    bp = pytest.importorskip("auto_round.utils.bit_packing")
    for bits in (2, 3, 4, 5, 6, 8):
        v = torch.randint(0, 2**bits, (4, 96), dtype=torch.int32)
        assert torch.equal(bitpack.pack(v, bits, dim=1), bp.pack_bitstream(v, bits, dim=1))
        assert torch.equal(bitpack.pack_awq(v, bits, dim=1), bp.pack_awq_bitstream(v, bits, dim=1))


def test_awq_interleave_order():
    v = torch.arange(8, dtype=torch.int32)
    word = int(bitpack.pack_awq(v, 4)[0])
    nibbles = [(word >> (4 * i)) & 0xF for i in range(8)]
    assert nibbles == [0, 2, 4, 6, 1, 3, 5, 7]


def _spec(scheme, fmt, K=128, N=64, bias=False, act_order=False):
    return ql.LayerSpec(scheme, fmt, K, N, bias, torch.float32, "cpu", act_order, "layer")


@pytest.mark.parametrize("fmt", ["gptq", "gptq_v2", "awq"])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("sym", [True, False])
def test_format_round_trip(fmt, bits, sym):
    scheme = ql.Scheme(bits=bits, group_size=32, sym=sym)
    spec = _spec(scheme, fmt)
    w = quantize_weight(torch.randn(64, 128), scheme)
    f = get_format(fmt)
    tensors = f.pack(w, spec)
    f.validate(tensors, spec)
    back = f.unpack(tensors, spec)
    assert torch.equal(back.qweight, w.qweight)
    assert torch.equal(back.scales, w.scales)
    assert torch.equal(back.zeros, w.zeros)


def test_gptq_v1_stores_zero_minus_one():
    scheme = ql.Scheme(bits=4, group_size=32, sym=True)
    w = quantize_weight(torch.randn(64, 128), scheme)
    v1 = get_format("gptq").pack(w, _spec(scheme, "gptq"))["qzeros"]
    v2 = get_format("gptq_v2").pack(w, _spec(scheme, "gptq_v2"))["qzeros"]
    assert int(v1[0, 0]) == 0x77777777
    assert (int(v2[0, 0]) & 0xFFFFFFFF) == 0x88888888


def test_dequantize_matches_rtn_reference():
    scheme = ql.Scheme(bits=4, group_size=32, sym=True)
    wf = torch.randn(64, 128)
    w = quantize_weight(wf, scheme)
    deq = w.dequantize(32)
    assert (deq - wf).abs().max() <= w.scales.float().abs().max() * 1.01  # within one step


def test_validate_names_layer_tensor_and_value():
    scheme = ql.Scheme(bits=4, group_size=32)
    spec = _spec(scheme, "gptq")
    f = get_format("gptq")
    t = f.pack(quantize_weight(torch.randn(64, 128), scheme), spec)
    bad = dict(t, qweight=t["qweight"][:-1])
    with pytest.raises(ql.CheckpointError, match=r"layer.*qweight.*\(15, 64\).*\(16, 64\)"):
        f.validate(bad, spec)
    with pytest.raises(ql.CheckpointError, match="qzeros.*missing"):
        f.validate({k: v for k, v in t.items() if k != "qzeros"}, spec)
    with pytest.raises(ql.CheckpointError, match="scales.*dtype torch.int32"):
        f.validate(dict(t, scales=t["scales"].to(torch.int32)), spec)
