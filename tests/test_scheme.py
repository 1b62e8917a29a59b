import pytest

import quantlinear as ql
from quantlinear.scheme import PRESETS, Scheme, get_scheme


def test_presets_carry_autorounds_values():
    assert get_scheme("W4A16") == Scheme(bits=4, group_size=128, sym=True, data_type="int")
    assert get_scheme("w8a16").bits == 8
    mx = get_scheme("MXFP4")
    assert (mx.bits, mx.group_size, mx.data_type, mx.act_bits, mx.act_data_type) == (4, 32, "mx_fp", 4, "mx_fp")
    assert get_scheme("MXFP4_RCEIL").act_data_type == "mx_fp_rceil"
    nv = get_scheme("NVFP4")
    assert (nv.group_size, nv.data_type, nv.act_data_type) == (16, "nv_fp", "nv_fp4_with_static_gs")
    assert get_scheme("FPW8A16").group_size == 0 and get_scheme("FPW8A16").weight_only
    fp8 = get_scheme("FP8_STATIC")
    assert (fp8.group_size, fp8.act_bits, fp8.act_dynamic) == (-1, 8, False)
    assert get_scheme("MXINT4").data_type == "mx_int"
    assert get_scheme("FP8_BLOCK").group_size == (128, 128)


def test_schemes_are_frozen_hashable_and_canonical():
    a = Scheme(bits=4, group_size=128, act_bits=16, act_data_type="int")
    b = Scheme(bits=4, group_size=128)
    assert a == b and hash(a) == hash(b)  # act_* meaningless when weight-only
    assert len({a, b, Scheme(bits=8)}) == 2
    with pytest.raises(Exception):
        a.bits = 8  # type: ignore[misc]
    assert a.id == "int4_g128_sym"
    assert Scheme(bits=3, group_size=-1, sym=False).id == "int3_gch_asym"
    assert str(PRESETS["W4A16"]).startswith("W4A16")


def test_group_size_resolution():
    s = Scheme(bits=4, group_size=-1)
    assert s.group_size_for(4096) == 4096 and s.num_groups(4096) == 1
    assert Scheme(bits=4, group_size=128).num_groups(4100) == 33  # partial last group


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"bits": 1}, "bits=1"),
        ({"bits": 16}, "bits=16"),
        ({"bits": 4, "data_type": "int9"}, "int9"),
        ({"bits": 4, "group_size": -7}, "group_size"),
        ({"bits": 8, "data_type": "mx_int"}, "bits=8"),
    ],
)
def test_invalid_schemes_raise_quantlinear_errors(kwargs, match):
    with pytest.raises(ql.UnsupportedSchemeError, match=match):
        Scheme(**kwargs)


def test_unknown_preset_is_a_quantlinear_error():
    with pytest.raises(ql.QuantLinearError, match="W9A16"):
        get_scheme("W9A16")
