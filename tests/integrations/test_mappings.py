"""Per-family key mappings: checkpoints quantized under one module tree load into another.

Unit tests of the registry, and a real load: a tiny Wan transformer quantized by quantlinear's
writer, its checkpoint renamed to the original Wan release's names (by a table written here
from Diffusers' converter, independent of the mapping under test), then loaded in one call into
Diffusers' ``WanTransformer3DModel`` in float32 and bfloat16 (whose ``_keep_in_fp32_modules``
must stay float32).
"""

from __future__ import annotations


import pytest
import torch

import quantlinear
from quantlinear.errors import ConfigError
from quantlinear.integrations import mappings
from quantlinear.integrations.mappings import KeyMapping, key_mapping_for, register_key_mapping, select_key_mapping

from . import helpers
from .helpers import TOL, TOL_EXACT, rel_err, record


def test_registry_lookup_through_base_classes():
    class Qwen2_5OmniThinkerForConditionalGeneration(torch.nn.Module):
        pass

    class MyThinker(Qwen2_5OmniThinkerForConditionalGeneration):
        pass

    assert key_mapping_for(MyThinker).name == "qwen2_5_omni_thinker"
    assert key_mapping_for("WanTransformer3DModel").name == "wan"
    assert key_mapping_for(torch.nn.Linear) is None


def test_mapping_applies_only_to_foreign_checkpoints():
    thinker = key_mapping_for("Qwen2_5OmniThinkerForConditionalGeneration")
    own = ["model.language_model.layers.0.self_attn.q_proj.qweight", "model.visual.blocks.0.attn.q.weight", "lm_head.weight"]
    assert select_key_mapping("Qwen2_5OmniThinkerForConditionalGeneration", own) is None
    assert [thinker.apply(k) for k in own] == own  # idempotent on the model's own names
    hub = {"thinker.model.layers.0.mlp.up_proj.qweight": "model.language_model.layers.0.mlp.up_proj.qweight",
           "thinker.model.embed_tokens.weight": "model.language_model.embed_tokens.weight",
           "thinker.visual.merger.mlp.0.weight": "model.visual.merger.mlp.0.weight",
           "thinker.audio_tower.proj.bias": "model.audio_tower.proj.bias",
           "thinker.lm_head.weight": "lm_head.weight",
           "model.layers.3.self_attn.o_proj.scales": "model.language_model.layers.3.self_attn.o_proj.scales",
           "visual.blocks.0.attn.proj.qweight": "model.visual.blocks.0.attn.proj.qweight"}
    assert select_key_mapping("Qwen2_5OmniThinkerForConditionalGeneration", list(hub)) is thinker
    assert {k: thinker.apply(k) for k in hub} == hub


def test_wan_rules_match_diffusers_converter_names():
    wan = key_mapping_for("WanTransformer3DModel")
    table = _wan_diffusers_to_original(num_blocks=2)
    for new, old in table.items():
        for suffix in (".qweight", ".weight", ".bias") if not new.endswith("scale_shift_table") else ("",):
            assert wan.apply(old + suffix) == new + suffix, (old, new)
    assert select_key_mapping("WanTransformer3DModel", ["blocks.0.attn1.to_q.qweight", "blocks.0.norm2.weight"]) is None


def test_register_rejects_bad_input():
    with pytest.raises(ConfigError, match="invalid regex"):
        KeyMapping("bad", (("(unclosed", "x"),), detect="x")
    with pytest.raises(ConfigError, match="already has mapping"):
        register_key_mapping("WanTransformer3DModel", {"a": "b"}, detect="a")
    with pytest.raises(ConfigError, match="detect"):
        register_key_mapping("SomethingNew", {"a": "b"})
    km = register_key_mapping("SomethingNew", {r"^old\.": "new."}, detect=r"^old\.")
    try:
        assert key_mapping_for("SomethingNew") is km and km.apply("old.x.qweight") == "new.x.qweight"
    finally:
        mappings._REGISTRY.pop("SomethingNew")


# ---- a real load through the Wan mapping ----------------------------------------------------------------
WAN_CONFIG = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=32, in_channels=4, out_channels=4,
                  text_dim=32, freq_dim=32, ffn_dim=128, num_layers=2, cross_attn_norm=True, rope_max_seq_len=32)


def _wan_diffusers_to_original(num_blocks: int) -> dict[str, str]:
    """Module names: Diffusers -> the original Wan release (``convert_wan_transformer_to_diffusers`` inverted)."""
    t = {
        "condition_embedder.time_embedder.linear_1": "time_embedding.0",
        "condition_embedder.time_embedder.linear_2": "time_embedding.2",
        "condition_embedder.text_embedder.linear_1": "text_embedding.0",
        "condition_embedder.text_embedder.linear_2": "text_embedding.2",
        "condition_embedder.time_proj": "time_projection.1",
        "scale_shift_table": "head.modulation",
        "proj_out": "head.head",
    }
    for i in range(num_blocks):
        for a, o in (("attn1", "self_attn"), ("attn2", "cross_attn")):
            for p in "qkv":
                t[f"blocks.{i}.{a}.to_{p}"] = f"blocks.{i}.{o}.{p}"
            t[f"blocks.{i}.{a}.to_out.0"] = f"blocks.{i}.{o}.o"
            t[f"blocks.{i}.{a}.norm_q"] = f"blocks.{i}.{o}.norm_q"
            t[f"blocks.{i}.{a}.norm_k"] = f"blocks.{i}.{o}.norm_k"
        t[f"blocks.{i}.norm2"] = f"blocks.{i}.norm3"
        t[f"blocks.{i}.ffn.net.0.proj"] = f"blocks.{i}.ffn.0"
        t[f"blocks.{i}.ffn.net.2"] = f"blocks.{i}.ffn.2"
        t[f"blocks.{i}.scale_shift_table"] = f"blocks.{i}.modulation"
    return t


def _to_original(key: str, table: dict[str, str]) -> str:
    for new in sorted(table, key=len, reverse=True):
        if key == new or key.startswith(new + "."):
            return table[new] + key[len(new):]
    return key


def _to_diffusers(key: str, table: dict[str, str]) -> str:
    inv = {v: k for k, v in table.items()}
    return _to_original(key, inv)


def build_wan(seed: int = 0):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    m = WanTransformer3DModel(**WAN_CONFIG)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # nothing zero-initialized: every tensor must load
    return m.eval()


def wan_out(model, dtype=torch.float32):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 4, 1, 4, 4, generator=g).to(dtype)
    ctx = torch.randn(1, 6, 32, generator=g).to(dtype)
    with torch.no_grad():
        return model(x, torch.tensor([500]), ctx, return_dict=False)[0].float()


@pytest.fixture(scope="module")
def wan_original_names(tmp_path_factory):
    pytest.importorskip("diffusers")
    from safetensors.torch import load_file, save_file

    d = tmp_path_factory.mktemp("wan") / "wan"
    model = build_wan()
    table = _wan_diffusers_to_original(WAN_CONFIG["num_layers"])

    def cfg(c):
        q = c["quantization_config"]
        q["block_name_to_quantize"] = ["blocks"]
        q["extra_config"] = {_to_original(k, table): v for k, v in (q.get("extra_config") or {}).items()}
        return {**dict(model.config), "_class_name": "WanTransformer3DModel", "quantization_config": q}

    quantlinear.save_quantized(model, d, quantlinear.Scheme(bits=4, group_size=32), skip=(r"condition_embedder\..*", "proj_out"),
                               dtype=torch.float32, config_transform=cfg)
    sd = load_file(str(d / "model.safetensors"))
    (d / "model.safetensors").unlink()
    save_file({_to_original(k, table): v for k, v in sd.items()}, str(d / "diffusion_pytorch_model.safetensors"))
    return d, table


def _wan_reference(d, table):
    ref = build_wan(seed=123)
    sd = helpers.dequantized_state_dict(d, helpers.linear_dims(ref), rename=lambda k: _to_diffusers(k, table))
    return helpers.load_reference(ref, sd)


def test_wan_checkpoint_under_original_names_loads(wan_original_names):
    from diffusers import WanTransformer3DModel

    d, table = wan_original_names
    keys = helpers.read_tensors(d)
    assert "blocks.0.self_attn.q.qweight" in keys and "head.head.weight" in keys
    model = quantlinear.from_pretrained(d, device="cpu", dtype=torch.float32)
    assert type(model) is WanTransformer3DModel
    assert "'wan'" in model.quantlinear_report.key_mapping
    assert len(model.quantlinear_report.layers) == 2 * 10
    ref = _wan_reference(d, table)
    err = rel_err(wan_out(model), wan_out(ref))
    record("wan_original_names_fp32", vs_dequant_ref=err)
    assert err < TOL_EXACT, err


def test_wan_bf16_keeps_fp32_modules(wan_original_names):
    d, table = wan_original_names
    model = quantlinear.from_pretrained(d, device="cpu", dtype=torch.bfloat16)
    # the class's _keep_in_fp32_modules stay float32, as Diffusers keeps them; the rest is bf16
    assert model.scale_shift_table.dtype == torch.float32
    assert model.blocks[0].scale_shift_table.dtype == torch.float32
    assert model.condition_embedder.time_embedder.linear_1.weight.dtype == torch.float32
    assert model.blocks[0].norm2.weight.dtype == torch.float32
    assert model.condition_embedder.text_embedder.linear_1.weight.dtype == torch.bfloat16
    # and hold the checkpoint's exact values (read again, not round-tripped through bf16)
    ck = helpers.read_tensors(d)
    assert torch.equal(model.blocks[0].scale_shift_table, ck["blocks.0.modulation"].float())
    err = rel_err(wan_out(model, torch.bfloat16), wan_out(_wan_reference(d, table)))
    record("wan_original_names_bf16", vs_fp32_dequant_ref=err)
    assert err < TOL, err


def test_unmapped_quantized_tensor_is_named(wan_original_names):
    d, _ = wan_original_names
    with pytest.raises(quantlinear.CheckpointError, match=r"checkpoint tensor blocks\.\d+\.(self|cross)_attn\.[qkvo]\.qweight maps to no module"):
        quantlinear.from_pretrained(d, device="cpu", key_mapping=False)
    # a mapping that leaves one layer under a name the model lacks: that tensor is named
    partial = {k: v for k, v in key_mapping_for("WanTransformer3DModel").rules if "([qkv])" not in k}
    with pytest.raises(quantlinear.CheckpointError, match=r"blocks\.0\.attn1\.[qkv]\.qweight.*maps to no module.*user key_mapping"):
        quantlinear.from_pretrained(d, device="cpu", key_mapping=partial)
