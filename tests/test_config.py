"""Parsing the quantization_config dialects that AutoRound, GPTQ and AWQ write."""

import json

import pytest

import quantlinear as ql
from quantlinear.config import parse_quantization_config, read_quant_config


def test_autoround_default_packing_is_gptq_v1():
    c = parse_quantization_config({"quant_method": "auto-round", "bits": 4, "group_size": 128, "sym": True, "packing_format": "auto_round:auto_gptq"})
    assert (c.format, c.scheme) == ("gptq", ql.get_scheme("W4A16"))


@pytest.mark.parametrize(
    "packing, fmt",
    [("auto_round:auto_gptq", "gptq"), ("auto_round:gptq", "gptq"), ("auto_round", "gptq_v2"), ("auto_round:gptqmodel", "gptq_v2"), ("auto_round:auto_awq", "awq")],
)
def test_autoround_packing_formats(packing, fmt):
    c = parse_quantization_config({"quant_method": "auto-round", "bits": 4, "group_size": 32, "sym": False, "packing_format": packing})
    assert c.format == fmt


def test_extra_config_exact_names_win_over_regexes_and_bits16_is_float():
    c = parse_quantization_config(
        {
            "quant_method": "auto-round",
            "bits": 4,
            "group_size": 128,
            "sym": True,
            "packing_format": "auto_round:auto_gptq",
            "block_name_to_quantize": "model.layers",
            "extra_config": {
                ".*mlp\\.down_proj.*": {"bits": 8},
                "model.layers.1.mlp.down_proj": {"bits": 2, "group_size": 32},
                "model.layers.0.self_attn.q_proj": {"bits": 16, "data_type": "fp"},
            },
        }
    )
    assert c.layer_scheme("model.layers.0.mlp.down_proj").bits == 8
    assert c.layer_scheme("model.layers.0.mlp.down_proj").group_size == 128  # unset fields keep global values
    s = c.layer_scheme("model.layers.1.mlp.down_proj")
    assert (s.bits, s.group_size) == (2, 32)
    assert c.layer_scheme("model.layers.0.self_attn.q_proj") is None
    assert c.layer_scheme("model.layers.0.self_attn.k_proj") == ql.get_scheme("W4A16")
    assert c.block_names == ("model.layers",)


def test_gptq_dialect_with_dynamic_rules_and_v2_checkpoints():
    c = parse_quantization_config(
        {
            "quant_method": "gptq",
            "bits": 4,
            "group_size": 128,
            "desc_act": True,
            "sym": False,
            "checkpoint_format": "gptq_v2",
            "dynamic": {"-:.*lm_head": {}, "+:.*\\.1\\..*down_proj": {"bits": 8, "group_size": 64}},
        }
    )
    assert c.format == "gptq_v2" and c.desc_act and not c.scheme.sym
    assert c.layer_scheme("lm_head") is None
    s = c.layer_scheme("model.layers.1.mlp.down_proj")
    assert (s.bits, s.group_size) == (8, 64)
    assert parse_quantization_config({"quant_method": "gptq", "bits": 4, "group_size": 128}).format == "gptq"


def test_awq_dialect_zero_point_means_asymmetric():
    c = parse_quantization_config({"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm", "modules_to_not_convert": ["visual"]})
    assert c.format == "awq" and not c.scheme.sym
    assert c.layer_scheme("model.visual.blocks.0.qkv") is None
    c2 = parse_quantization_config({"quant_method": "awq", "w_bit": 4, "q_group_size": 64, "zero_point": False})
    assert c2.scheme.sym and c2.scheme.group_size == 64


@pytest.mark.parametrize(
    "cfg, match",
    [
        ({"quant_method": "bitsandbytes"}, "quant_method='bitsandbytes'"),
        ({"quant_method": "auto-round", "bits": 1}, "bits=1"),
        ({"quant_method": "auto-round", "bits": 4, "packing_format": "auto_round:marlin"}, "auto_round:marlin"),
        ({"quant_method": "awq", "bits": 4, "version": "gemv"}, "gemv"),
        ({"quant_method": "gptq", "bits": 4, "checkpoint_format": "marlin"}, "marlin"),
        ({"quant_method": "auto-round", "bits": 4, "extra_config": {"x": 3}}, "extra_config"),
    ],
)
def test_bad_configs_raise_config_errors(cfg, match):
    with pytest.raises(ql.ConfigError, match=match):
        parse_quantization_config(cfg)


def test_config_is_found_in_config_json_or_separate_files(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "config.json").write_text(json.dumps({"model_type": "llama", "quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128}}))
    assert read_quant_config(tmp_path / "a")[0].quant_method == "awq"
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "quantize_config.json").write_text(json.dumps({"bits": 4, "group_size": 128, "desc_act": False}))
    assert read_quant_config(tmp_path / "b")[0].quant_method == "gptq"
    (tmp_path / "c").mkdir()
    with pytest.raises(ql.ConfigError, match="no quantization config"):
        read_quant_config(tmp_path / "c")
    (tmp_path / "c" / "config.json").write_text("{not json")
    with pytest.raises(ql.ConfigError, match="cannot read JSON"):
        read_quant_config(tmp_path / "c")
