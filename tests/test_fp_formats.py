"""Floating-point / microscaling schemes in the core: codecs, reference quantizers, layouts, config, loading.

No AutoRound needed here (its real exports are checked in tests/interop/test_fp_exports.py);
where the ``auto_round`` package is installed, a few tests also compare the codecs and the
activation quantizers with AutoRound's own functions bit for bit.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file

import quantlinear as ql
from quantlinear import fpcodes, fpquant
from quantlinear.config import parse_quantization_config
from quantlinear.errors import CheckpointError, QuantLinearError, UnsupportedSchemeError
from quantlinear.formats import FloatWeights, get_format
from quantlinear.scheme import PRESETS, Scheme
from quantlinear.testing_fp import reference_act



class TinyNet(torch.nn.Module):
    """Embedding, two blocks of up (bias) / down linears, a float head (like tests/conftest.py's TinyNet)."""

    def __init__(self, vocab: int = 96, d: int = 64, hidden: int = 128) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, d)
        self.layers = torch.nn.ModuleList(
            torch.nn.ModuleDict({"up": torch.nn.Linear(d, hidden, bias=True), "down": torch.nn.Linear(hidden, d, bias=False)}) for _ in range(2)
        )
        self.norm = torch.nn.LayerNorm(d)
        self.head = torch.nn.Linear(d, vocab, bias=False)

    def forward(self, ids):
        x = self.embed(ids)
        for blk in self.layers:
            x = x + blk["down"](torch.nn.functional.gelu(blk["up"](x)))
        return self.head(self.norm(x))


FLOAT_PRESET_FORMATS = {
    "MXFP4": "mxfp4", "MXFP4_RCEIL": "mxfp4", "MXFP8": "mxfp8", "MXINT4": "mxint4",
    "NVFP4": "nvfp4", "FPW8A16": "fp8", "FP8_STATIC": "fp8",
}
#: quantization_config as AutoRound 0.16.1 writes it for each preset (from real exports)
_BASE = {"quant_method": "auto-round", "autoround_version": "0.16.1", "block_name_to_quantize": "model.layers.0", "enable_quanted_input": False}
_ACT = {"act_sym": True, "act_dynamic": True}
AUTOROUND_CONFIGS = {
    "MXFP4": {**_BASE, **_ACT, "bits": 4, "act_bits": 4, "data_type": "mx_fp", "act_data_type": "mx_fp", "group_size": 32, "act_group_size": 32, "sym": True, "packing_format": "auto_round:llm_compressor"},
    "MXFP4_RCEIL": {**_BASE, **_ACT, "bits": 4, "act_bits": 4, "data_type": "mx_fp", "act_data_type": "mx_fp_rceil", "group_size": 32, "act_group_size": 32, "sym": True, "packing_format": "auto_round:llm_compressor"},
    "MXFP8": {**_BASE, **_ACT, "bits": 8, "act_bits": 8, "data_type": "mx_fp", "act_data_type": "mx_fp", "group_size": 32, "act_group_size": 32, "sym": True, "packing_format": "auto_round:llm_compressor"},
    "MXINT4": {**_BASE, **_ACT, "bits": 4, "act_bits": 4, "data_type": "mx_int", "act_data_type": "mx_int", "group_size": 32, "act_group_size": 32, "sym": True, "packing_format": "auto_round"},
    "NVFP4": {**_BASE, **_ACT, "bits": 4, "act_bits": 4, "data_type": "nv_fp", "act_data_type": "nv_fp4_with_static_gs", "group_size": 16, "act_group_size": 16, "sym": True, "packing_format": "auto_round:llm_compressor"},
    "FP8_STATIC": {**_BASE, "bits": 8, "act_bits": 8, "data_type": "fp", "act_data_type": "fp", "group_size": -1, "act_group_size": 0, "sym": True, "act_sym": True, "act_dynamic": False, "packing_format": "auto_round:fp8_static", "fmt": "e4m3", "activation_scheme": "static"},
    "FPW8A16": {**_BASE, "bits": 8, "data_type": "fp", "group_size": 0, "sym": True, "fmt": "e4m3", "activation_scheme": "dynamic"},
}


def _auto_round():
    try:
        import auto_round  # noqa: F401
    except Exception:
        pytest.skip("auto_round is not installed")


# ---- element codecs ------------------------------------------------------------------------------
def test_e2m1_table_and_round_trip_of_every_code():
    codes = torch.arange(16, dtype=torch.uint8)
    v = fpcodes.decode_elements(codes, "e2m1")
    assert v[:8].tolist() == [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    assert v[8:].tolist() == [-0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0] and torch.signbit(v[8])
    assert torch.equal(fpcodes.encode_elements(v, "e2m1"), codes)


def test_e2m1_rounds_to_nearest_even_and_saturates():
    x = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 0.26, 4.99, 5.01, 7.0, 1e9, -0.1, -5.0, -0.0])
    want = [0, 2, 2, 4, 4, 6, 6, 1, 6, 7, 7, 7, 8, 14, 8]
    assert fpcodes.encode_elements(x, "e2m1").tolist() == want


def test_e2m1_encoder_agrees_with_autorounds_cast_algorithm_everywhere():
    # fpquant.cast_to_fp4 is AutoRound's (vLLM's) step-wise algorithm; the encoder is a threshold table
    mids = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])
    x = torch.cat([torch.linspace(-6.5, 6.5, 20001), mids, -mids, mids.nextafter(torch.tensor(0.0)), mids.nextafter(torch.tensor(9.0))])
    ref = fpquant.cast_to_fp4(x.clamp(-6, 6))
    got = fpcodes.decode_elements(fpcodes.encode_elements(x, "e2m1"), "e2m1")
    assert torch.equal(got.abs(), ref.abs())


def test_e0m4_sign_magnitude_codes():
    codes = torch.arange(16, dtype=torch.uint8)
    v = fpcodes.decode_elements(codes, "e0m4")
    assert v[:8].tolist() == [m / 4 for m in range(8)] and v[9:].tolist() == [-m / 4 for m in range(1, 8)]
    assert torch.equal(fpcodes.encode_elements(v, "e0m4"), codes)
    x = torch.tensor([0.125, 0.375, 0.13, 1.8, 2.0, -0.3, -1.625])
    assert fpcodes.encode_elements(x, "e0m4").tolist() == [0, 2, 1, 7, 7, 9, 14]


def test_nibble_order_low_nibble_is_the_even_input_channel():
    codes = torch.tensor([[1, 2, 3, 4], [15, 0, 8, 7]], dtype=torch.uint8)
    packed = fpcodes.pack_nibbles(codes)
    assert packed.tolist() == [[0x21, 0x43], [0x0F, 0x78]]
    assert torch.equal(fpcodes.unpack_nibbles(packed), codes)
    with pytest.raises(QuantLinearError, match="odd"):
        fpcodes.pack_nibbles(codes[:, :3])
    with pytest.raises(QuantLinearError, match="< 16"):
        fpcodes.pack_nibbles(codes + 16)


def test_e8m0_scales():
    s = torch.arange(256, dtype=torch.uint8)
    v = fpcodes.decode_e8m0(s)
    assert v[127] == 1.0 and v[128] == 2.0 and v[0] == 2.0**-127 and v[254] == 2.0**127 and math.isnan(v[255])
    assert all(float(v[i]) == 2.0 ** (i - 127) for i in range(255))
    assert torch.equal(fpcodes.encode_e8m0(v), s)
    assert fpcodes.encode_e8m0_exponent(torch.tensor([-200.0, -127.0, 0.0, 3.0, 300.0])).tolist() == [0, 0, 127, 130, 254]
    with pytest.raises(QuantLinearError, match="power of two"):
        fpcodes.encode_e8m0(torch.tensor([0.75]))
    with pytest.raises(QuantLinearError, match="uint8"):
        fpcodes.decode_e8m0(torch.tensor([1.0]))


@pytest.mark.parametrize("element", ["e4m3", "e5m2"])
def test_fp8_codes_round_trip_every_byte(element):
    b = torch.arange(256, dtype=torch.uint8)
    v = fpcodes.decode_elements(b, element)
    ok = torch.isfinite(v)  # e5m2 also has infinities: encoding saturates them
    assert torch.equal(fpcodes.encode_elements(v[ok], element), b[ok])
    mx = fpcodes.ELEMENTS[element][0]
    assert fpcodes.decode_elements(fpcodes.encode_elements(torch.tensor([1e9, -1e9]), element), element).tolist() == [mx, -mx]
    with pytest.raises(QuantLinearError, match="NaN"):
        fpcodes.encode_elements(torch.tensor([float("nan")]), element)


def test_e5m3_round_trip_and_values():
    b = torch.arange(255, dtype=torch.uint8)
    v = fpcodes.decode_e5m3(b)
    assert torch.equal(fpcodes.encode_e5m3(v), b)
    assert fpcodes.decode_e5m3(torch.tensor([120, 0xFE, 1], dtype=torch.uint8)).tolist()[:2] == [1.0, fpcodes.E5M3_MAX]
    assert float(fpcodes.decode_e5m3(torch.tensor([1], dtype=torch.uint8))) == 2.0**-17
    assert math.isnan(float(fpcodes.decode_e5m3(torch.tensor([0xFF], dtype=torch.uint8))))


def test_e5m3_matches_autoround():
    _auto_round()
    from auto_round.data_type.nvfp import e5m3_to_float_tensor, float_to_e5m3_frexp

    x = torch.cat([torch.logspace(-20, 17.5, 4000, base=2.0), torch.tensor([0.0, 3.14, 1e10])])
    assert torch.equal(fpcodes.encode_e5m3(x), float_to_e5m3_frexp(x))
    b = torch.arange(255, dtype=torch.uint8)
    assert torch.equal(fpcodes.decode_e5m3(b), e5m3_to_float_tensor(b))


# ---- reference quantizers --------------------------------------------------------------------------
def test_mx_shared_exponent_floor_versus_rceil():
    x = torch.zeros(2, 32)
    x[0, 0], x[0, 1] = 5.0, 0.3
    x[1, 0], x[1, 1] = 7.0, 0.3
    v, e = fpquant.mx_quantize_blocks(x, "e2m1")
    assert e.flatten().tolist() == [0.0, 0.0] and v[0, :2].tolist() == [4.0, 0.5] and v[1, 0] == 6.0  # 7 saturates
    v, e = fpquant.mx_quantize_blocks(x, "e2m1", rceil=True)
    assert e.flatten().tolist() == [0.0, 1.0] and v[1, 0] == 4.0  # 7/2 = 3.5 -> 4 (ties to even), i.e. 8
    assert fpquant.mx_qdq(x, "e2m1", rceil=True)[1, 0] == 8.0
    z = fpquant.mx_quantize_blocks(torch.zeros(1, 32), "e2m1")[1]
    assert float(z) == -1.0  # AutoRound: log2 of an all-zero block counts as 1, minus emax 2


@pytest.mark.parametrize("element", ["e2m1", "e4m3", "e0m4"])
def test_quantize_mx_dequantizes_to_the_qdq_and_requantizes_to_itself(element):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(24, 96, generator=g) * torch.logspace(-3, 1, 96).reshape(1, -1)
    fw = fpquant.quantize_mx(w, element)
    assert fw.codes.shape == (24, 96) and fw.raw_scales.dtype == torch.uint8 and fw.raw_scales.shape == (24, 3)
    deq = fw.dequantize()
    assert torch.equal(deq, fpquant.mx_qdq(w, element))
    again = fpquant.quantize_mx(deq, element)
    assert torch.equal(again.raw_scales, fw.raw_scales)
    assert torch.equal(again.dequantize(), deq)  # codes equal up to the sign of zero
    given = fpcodes.encode_elements(deq / fw.scales.repeat_interleave(32, 1), element)
    assert torch.equal(given, fw.codes)  # re-encoding with the stored scales is byte-exact, -0.0 included
    # worst case: floor-scaled blocks saturate their largest element (e4m3: [448, 512) -> 448)
    assert float((deq - w).abs().max() / w.abs().max()) < {"e2m1": 0.25, "e4m3": 0.13, "e0m4": 0.2}[element]


def test_quantize_nvfp4():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(16, 64, generator=g) * 0.02
    fw = fpquant.quantize_nvfp4(w)
    assert torch.equal(fw.global_scale, torch.tensor([448.0 * 6.0]) * (1.0 / w.abs().max()))
    assert fw.raw_scales.dtype == torch.float8_e4m3fn and fw.raw_scales.shape == (16, 4)
    assert not bool((fw.codes == 8).any())  # AutoRound's packing re-casts -0.0 to +0
    deq = fw.dequantize()
    x2 = w.reshape(-1, 16)
    v, s, out = fpquant.nvfp4_quantize_blocks(x2, fw.global_scale)
    assert torch.equal(deq.reshape(-1, 16), v * (1.0 / fw.global_scale) * s)
    assert float((deq - w).abs().max() / w.abs().max()) < 0.2
    again = fpquant.quantize_nvfp4(deq, fw.global_scale)
    assert torch.equal(again.codes, fw.codes) and torch.equal(again.raw_scales.view(torch.uint8), fw.raw_scales.view(torch.uint8))


@pytest.mark.parametrize("per_tensor", [False, True])
def test_quantize_fp8(per_tensor):
    g = torch.Generator().manual_seed(2)
    w = (torch.randn(8, 40, generator=g) * 0.05).to(torch.bfloat16)
    w[0, 0] = -1e-9  # rounds to zero: stored as +0 like AutoRound
    fw = fpquant.quantize_fp8(w, per_tensor=per_tensor)
    assert fw.raw_scales.dtype == torch.bfloat16 and fw.raw_scales.shape == ((1,) if per_tensor else (8,))
    amax = w.float().abs().amax() if per_tensor else w.float().abs().amax(-1)
    assert torch.equal(fw.raw_scales, (amax / 448.0).to(torch.bfloat16).reshape(fw.raw_scales.shape))
    assert int(fw.codes[0, 0]) == 0 and int(fw.codes.view(torch.float8_e4m3fn).float().abs().max()) == 448
    deq = fw.dequantize()
    assert float((deq - w.float()).abs().max() / w.float().abs().max()) < 0.04
    again = fpquant.quantize_fp8(deq, per_tensor=per_tensor)
    assert torch.equal(again.codes, fw.codes) and torch.equal(again.raw_scales, fw.raw_scales)


def test_fp8_static_activation_qdq_rounds_in_bf16_like_autoround():
    s = torch.tensor([0.01], dtype=torch.bfloat16)
    x = torch.tensor([[0.013, -5.0, 1e-6, 0.0]], dtype=torch.float32)
    q = fpquant.fp8_static_qdq(x, s)
    codes = fpquant.fp8_static_quantize_input(x, s)
    assert codes.float().tolist() == [[1.25, -448.0, 0.0, 0.0]]  # 1.3 -> 1.25, saturation, underflow
    assert q.dtype == torch.float32 and torch.equal(q, (codes.to(torch.bfloat16) * s).float())
    exact = fpquant.fp8_static_qdq(x, s, hp_dtype=torch.float32)
    assert torch.equal(exact, codes.float() * s.float())


def test_act_quant_kind_per_scheme():
    assert fpquant.act_quant_kind(PRESETS["FPW8A16"]) is None
    assert fpquant.act_quant_kind(PRESETS["MXFP4"]) == ("mx", {"element": "e2m1", "block_size": 32, "rceil": False})
    assert fpquant.act_quant_kind(PRESETS["MXFP4_RCEIL"])[1]["rceil"] is True
    assert fpquant.act_quant_kind(PRESETS["MXFP8"])[1]["element"] == "e4m3"
    assert fpquant.act_quant_kind(PRESETS["MXINT4"])[1]["element"] == "e2m1"  # AutoRound: FP4 grid for mx_int acts
    assert fpquant.act_quant_kind(PRESETS["NVFP4"]) == ("nvfp4", {"block_size": 16})
    assert fpquant.act_quant_kind(PRESETS["FP8_STATIC"]) == ("fp8_static", {})
    with pytest.raises(UnsupportedSchemeError, match="dynamic FP8"):
        fpquant.act_quant_kind(PRESETS["FP8_BLOCK"])
    with pytest.raises(UnsupportedSchemeError, match="act_dynamic"):
        fpquant.act_quant_kind(Scheme(4, 32, True, "mx_fp", 4, "mx_fp", 32, True, False))


def _midpoint_inputs(n, k, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g) * torch.logspace(-2, 1, k).reshape(1, -1)


@pytest.mark.parametrize("preset", ["MXFP4", "MXFP4_RCEIL", "MXFP8", "MXINT4"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_mx_activation_qdq_matches_autoround_bit_for_bit(preset, dtype):
    _auto_round()
    from auto_round.experimental.qmodules.mx import _mx_qdq
    from auto_round.schemes import PRESET_SCHEMES

    x = _midpoint_inputs(6, 96, 3).to(dtype)
    x[0, :32] = 0.0
    x[1, 5] = 1e4
    assert torch.equal(fpquant.act_qdq(x, PRESETS[preset]), _mx_qdq(x, PRESET_SCHEMES[preset]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_nvfp4_and_fp8_static_activation_qdq_match_autoround_bit_for_bit(dtype):
    _auto_round()
    from auto_round.experimental.qmodules.fp8_static import WeightFP8ActFP8StaticQuantLinear
    from auto_round.experimental.qmodules.nvfp4 import _nvfp4_qdq
    from auto_round.schemes import PRESET_SCHEMES

    x = _midpoint_inputs(6, 64, 4).to(dtype)
    igs = fpquant.nvfp4_global_scale(torch.tensor(3.0))
    fw = FloatWeights(torch.zeros(1, 64, dtype=torch.uint8), "e2m1", torch.ones(1, 4), 16, input_global_scale=igs)
    ref = _nvfp4_qdq(x.to(torch.float32), PRESET_SCHEMES["NVFP4"], igs).to(dtype)
    assert torch.equal(fpquant.act_qdq(x, PRESETS["NVFP4"], fw), ref)
    s = torch.tensor([3.0 / 448], dtype=torch.bfloat16)
    mod = WeightFP8ActFP8StaticQuantLinear(64, 8, input_scale=s)
    fw8 = FloatWeights(torch.zeros(8, 64, dtype=torch.uint8), "e4m3", torch.ones(8, 1), 64, input_scale=s)
    assert torch.equal(fpquant.act_qdq(x, PRESETS["FP8_STATIC"], fw8), mod.qdq_input(x).to(dtype))


# ---- layouts ---------------------------------------------------------------------------------------
def _spec(preset, K=64, N=32, bias=False, name="blk.proj"):
    return ql.LayerSpec(PRESETS[preset], FLOAT_PRESET_FORMATS[preset], K, N, bias, torch.float32, "cpu", False, name)


@pytest.mark.parametrize("preset", list(FLOAT_PRESET_FORMATS))
def test_format_pack_unpack_round_trip_and_tensor_specs(preset):
    spec = _spec(preset)
    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(5)) * 0.1
    fw = fpquant.quantize_float(w, spec.scheme, act_amax=2.0)
    fmt = get_format(spec.format)
    tensors = fmt.pack(fw, spec)
    fmt.validate(tensors, spec)
    assert set(tensors) == set(fmt.tensor_specs(spec))
    back = fmt.unpack(tensors, spec)
    assert torch.equal(back.codes, fw.codes) and torch.equal(back.dequantize(), fw.dequantize())
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    assert fmt.infer_features(shapes, spec.scheme.bits) == (64, 32)
    # packing from decoded scales alone (no raw scales) gives the same bytes
    bare = FloatWeights(fw.codes, fw.element, fw.scales, fw.block_size, global_scale=fw.global_scale,
                        input_scale=fw.input_scale, input_global_scale=fw.input_global_scale)
    again = fmt.pack(bare, spec)
    for k, t in tensors.items():
        if k == "weight_scale" and preset in ("FPW8A16", "FP8_STATIC"):
            assert torch.equal(again[k].float(), t.float())
        else:
            assert torch.equal(again[k].view(torch.uint8) if t.dtype.itemsize == 1 else again[k], t.view(torch.uint8) if t.dtype.itemsize == 1 else t), k


def test_expected_tensor_layouts():
    s = {k: (v.shape, v.dtype) for k, v in get_format("mxfp4").tensor_specs(_spec("MXFP4", 128, 16)).items()}
    assert s == {"weight_packed": ((16, 64), torch.uint8), "weight_scale": ((16, 4), torch.uint8)}
    s = {k: (v.shape, v.dtype) for k, v in get_format("mxfp8").tensor_specs(_spec("MXFP8", 128, 16)).items()}
    assert s == {"weight": ((16, 128), torch.float8_e4m3fn), "weight_scale": ((16, 4), torch.uint8)}
    s = {k: (v.shape, v.dtype) for k, v in get_format("nvfp4").tensor_specs(_spec("NVFP4", 128, 16, bias=True)).items()}
    assert s == {"weight_packed": ((16, 64), torch.uint8), "weight_scale": ((16, 8), torch.float8_e4m3fn),
                 "weight_global_scale": ((1,), None), "input_global_scale": ((1,), None), "bias": ((16,), None)}
    s = {k: v.shape for k, v in get_format("fp8").tensor_specs(_spec("FP8_STATIC", 128, 16)).items()}
    assert s == {"weight": (16, 128), "weight_scale": (16,), "input_scale": (1,)}
    s = {k: v.shape for k, v in get_format("fp8").tensor_specs(_spec("FPW8A16", 128, 16)).items()}
    assert s == {"weight": (16, 128), "weight_scale": (1,)}
    weight_only_nv = ql.LayerSpec(Scheme(4, 16, True, "nv_fp"), "nvfp4", 32, 16)
    assert "input_global_scale" not in get_format("nvfp4").tensor_specs(weight_only_nv)


def test_format_shape_checks_give_reasons():
    assert "multiple of the scale block 32" in get_format("mxfp4").check_shape(_spec("MXFP4", K=48))
    assert "bits=8" in get_format("mxfp4").check_shape(_spec("MXFP8"))
    assert "data_type" in get_format("mxint4").check_shape(_spec("MXFP4"))
    assert "group_size 16" in get_format("nvfp4").check_shape(ql.LayerSpec(Scheme(4, 32, True, "nv_fp"), "nvfp4", 64, 16))
    assert get_format("fp8").check_shape(ql.LayerSpec(PRESETS["FP8_BLOCK"], "fp8", 256, 256)) is not None


def _packed(preset, **kw):
    spec = _spec(preset, **kw)
    fw = fpquant.quantize_float(torch.randn(32, 64, generator=torch.Generator().manual_seed(6)), spec.scheme, act_amax=2.0)
    return spec, get_format(spec.format), get_format(spec.format).pack(fw, spec)


def test_bad_float_checkpoint_values_name_layer_tensor_and_value():
    spec, fmt, t = _packed("MXFP4")
    t["weight_scale"][3, 1] = 255
    with pytest.raises(CheckpointError, match=r"blk\.proj.*weight_scale.*255.*\(3, 1\)"):
        fmt.unpack(t, spec)
    spec, fmt, t = _packed("MXFP8")
    t["weight"].view(torch.uint8)[2, 7] = 0x7F
    with pytest.raises(CheckpointError, match=r"blk\.proj\.weight.*NaN byte 0x7f.*\(2, 7\)"):
        fmt.unpack(t, spec)
    spec, fmt, t = _packed("NVFP4")
    t["weight_global_scale"] = torch.tensor([0.0])
    with pytest.raises(CheckpointError, match=r"weight_global_scale holds 0\.0"):
        fmt.unpack(t, spec)
    spec, fmt, t = _packed("NVFP4")
    t["weight_scale"].view(torch.uint8)[0, 0] = 0xFF
    with pytest.raises(CheckpointError, match=r"weight_scale holds a NaN byte"):
        fmt.unpack(t, spec)
    spec, fmt, t = _packed("FP8_STATIC")
    t["input_scale"] = torch.tensor([float("inf")], dtype=torch.bfloat16)
    with pytest.raises(CheckpointError, match=r"input_scale holds inf"):
        fmt.unpack(t, spec)
    spec, fmt, t = _packed("FP8_STATIC")
    with pytest.raises(CheckpointError, match=r"weight_scale has shape \(1,\), expected \(32,\)"):
        fmt.validate({**t, "weight_scale": t["weight_scale"][:1]}, spec)
    with pytest.raises(CheckpointError, match=r"weight has dtype torch.float8_e5m2"):
        fmt.validate({**t, "weight": t["weight"].float().to(torch.float8_e5m2)}, spec)
    with pytest.raises(CheckpointError, match=r"'input_scale' is missing"):
        fmt.validate({k: v for k, v in t.items() if k != "input_scale"}, spec)
    with pytest.raises(QuantLinearError, match="e2m1 elements, got e4m3"):
        get_format("mxfp4").pack(fpquant.quantize_float(torch.randn(32, 64), PRESETS["MXFP8"]), _spec("MXFP4"))


# ---- config ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", list(AUTOROUND_CONFIGS))
def test_autoround_float_configs_map_to_formats(preset):
    qc = parse_quantization_config(AUTOROUND_CONFIGS[preset])
    assert qc.format == FLOAT_PRESET_FORMATS[preset]
    assert qc.scheme == PRESETS[preset]


def test_unknown_float_packings_have_no_format():
    assert parse_quantization_config({**AUTOROUND_CONFIGS["FPW8A16"], "fmt": "e5m2"}).format is None
    assert parse_quantization_config({**AUTOROUND_CONFIGS["MXFP4"], "packing_format": "auto_round:auto_gptq"}).format is None
    assert parse_quantization_config({**AUTOROUND_CONFIGS["MXFP4"], "packing_format": None}).packing_format is None
    # int configs are untouched: the default int packing still applies
    assert parse_quantization_config({"quant_method": "auto-round", "bits": 4, "group_size": 128, "sym": True}).format == "gptq"


# ---- loading, end to end ---------------------------------------------------------------------------
def _write_float_ckpt(tmp_path, preset, *, overrides=None, tamper=None):
    """TinyNet's block linears quantized by the reference quantizer, written as AutoRound lays them out."""
    torch.manual_seed(0)
    net = TinyNet().eval()
    qcfg = dict(AUTOROUND_CONFIGS[preset])
    qcfg.pop("block_name_to_quantize")
    if overrides:
        qcfg["extra_config"] = overrides
    qc = parse_quantization_config(qcfg)
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    weights = {}
    for name, mod in net.named_modules():
        if not isinstance(mod, torch.nn.Linear) or name == "head":
            continue
        scheme = qc.layer_scheme(name)
        fmt = FLOAT_PRESET_FORMATS[preset] if scheme == qc.scheme else ql.formats.float_format_for(scheme.data_type, scheme.bits, qc.packing_format)
        spec = ql.LayerSpec(scheme, fmt, mod.in_features, mod.out_features, mod.bias is not None, torch.float32, "cpu", False, name)
        fw = fpquant.quantize_float(mod.weight.detach().to(torch.bfloat16), scheme, act_amax=4.0)
        weights[name] = (spec, fw)
        del sd[f"{name}.weight"]
        for k, v in get_format(fmt).pack(fw, spec).items():
            sd[f"{name}.{k}"] = v
    if tamper:
        tamper(sd)
    out = tmp_path / preset
    out.mkdir()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps({"quantization_config": qcfg}))
    return out, net, weights


def _reference_forward(net, weights, ids):
    """TinyNet with each quantized linear replaced by act_qdq + fp32 dequantized weight."""
    import copy

    ref = copy.deepcopy(net)
    for name, (spec, fw) in weights.items():
        mod = ref.get_submodule(name)
        mod.weight.data = fw.dequantize()

        def pre(m, args, spec=spec, fw=fw):
            return (reference_act(args[0], fw, spec),)  # FP8 static: exact fp8 * input_scale

        mod.register_forward_pre_hook(pre)
    with torch.no_grad():
        return ref(ids)


@pytest.mark.parametrize("preset", list(FLOAT_PRESET_FORMATS))
def test_load_quantized_float_checkpoint_end_to_end(tmp_path, cpu_registry, preset):
    d, net, weights = _write_float_ckpt(tmp_path, preset)
    with ql.skeleton():
        model = TinyNet()
    model = ql.load_quantized(model, d, registry=cpu_registry, dtype=torch.float32)
    rep = model.quantlinear_report
    want = {"mxfp4": "cpu.mx", "mxfp8": "cpu.mx", "mxint4": "cpu.mx", "nvfp4": "cpu.nvfp4", "fp8": "cpu.fp8"}[FLOAT_PRESET_FORMATS[preset]]
    assert set(rep.layers) == {f"layers.{i}.{p}" for i in range(2) for p in ("up", "down")}
    assert {s.kernel.name for s in rep.layers.values()} == {want}
    assert {s.spec.format for s in rep.layers.values()} == {FLOAT_PRESET_FORMATS[preset]}
    ids = torch.randint(0, 96, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(ids)
    ref = _reference_forward(net, weights, ids)
    err = float((y - ref).abs().max() / ref.abs().max())
    assert err < 1e-4, err


def test_per_layer_float_override_gets_its_own_layout(tmp_path, cpu_registry):
    d, net, weights = _write_float_ckpt(tmp_path, "MXFP4", overrides={"layers.1.down": {"bits": 8, "act_bits": 8}})
    assert weights["layers.1.down"][0].format == "mxfp8"
    with ql.skeleton():
        model = TinyNet()
    model = ql.load_quantized(model, d, registry=cpu_registry, dtype=torch.float32)
    assert model.quantlinear_report.layers["layers.1.down"].spec.format == "mxfp8"
    assert model.quantlinear_report.layers["layers.0.down"].spec.format == "mxfp4"
    ids = torch.randint(0, 96, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(ids)
    ref = _reference_forward(net, weights, ids)
    assert float((y - ref).abs().max() / ref.abs().max()) < 1e-4


def test_loading_bad_float_checkpoints_raises_quantlinear_errors(tmp_path, cpu_registry):
    def bad_scale(sd):
        sd["layers.0.up.weight_scale"][1, 0] = 255

    d, _, _ = _write_float_ckpt(tmp_path, "MXFP4", tamper=bad_scale)
    with ql.skeleton():
        model = TinyNet()
    with pytest.raises(CheckpointError, match=r"layers\.0\.up.*weight_scale.*255"):
        ql.load_quantized(model, d, registry=cpu_registry, dtype=torch.float32)

    def drop(sd):
        del sd["layers.1.up.input_global_scale"]

    d, _, _ = _write_float_ckpt(tmp_path, "NVFP4", tamper=drop)
    with ql.skeleton():
        model = TinyNet()
    with pytest.raises(CheckpointError, match=r"layers\.1\.up.*input_global_scale"):
        ql.load_quantized(model, d, registry=cpu_registry, dtype=torch.float32)

    # a float layout under an int config, and a float config with an unknown packing
    d, _, _ = _write_float_ckpt(tmp_path, "MXFP8")
    cfg = json.loads((d / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "auto-round", "bits": 4, "group_size": 32, "sym": True}
    (d / "config.json").write_text(json.dumps(cfg))
    with ql.skeleton():
        model = TinyNet()
    with pytest.raises(QuantLinearError, match=r"layers\.0\.(up|down)"):
        ql.load_quantized(model, d, registry=cpu_registry, dtype=torch.float32)
    cfg["quantization_config"] = {**AUTOROUND_CONFIGS["MXFP8"], "packing_format": "auto_round:auto_gptq"}
    (d / "config.json").write_text(json.dumps(cfg))
    with ql.skeleton():
        model = TinyNet()
    with pytest.raises(UnsupportedSchemeError, match=r"layers\.0\.(up|down).*no loader"):
        ql.load_quantized(model, d, registry=cpu_registry, dtype=torch.float32)
