"""Transformers models in one call: causal LMs quantized by the real AutoRound, and the
language-model stage of an omni model (Qwen2.5-Omni thinker) stored under the Hub's module names.

References: the float model of the same class with the checkpoint's weights decoded
independently (``helpers.decode_layer``), and for the AutoRound exports AutoRound's own loader
(Transformers ``from_pretrained`` with the ARK CPU kernels), trusted only after its loading
info shows no missing / unexpected keys.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402
from torch import nn  # noqa: E402

import quantlinear  # noqa: E402
from quantlinear import QuantLinear  # noqa: E402

from . import helpers  # noqa: E402
from .helpers import TOL, TOL_EXACT, rel_err, record  # noqa: E402

LLAMA_LAYER_CONFIG = {"model.layers.1.mlp.gate_proj": {"bits": 16}}


@pytest.fixture(scope="session")
def llama_export(exports):
    pytest.importorskip("auto_round")
    return exports.get("llama_w4g32_sym", lambda d: helpers.autoround_llm_export(
        "llama", d, scheme="W4A16", group_size=32, sym=True, layer_config=dict(LLAMA_LAYER_CONFIG)))


@pytest.fixture(scope="session")
def qwen2_export(exports):
    pytest.importorskip("auto_round")
    return exports.get("qwen2_w4g64_asym", lambda d: helpers.autoround_llm_export("qwen2", d, scheme="W4A16", group_size=64, sym=False))


def _llm_reference(arch, d):
    ref = helpers.build_llm(arch, seed=123)
    sd = helpers.dequantized_state_dict(d, helpers.linear_dims(ref))
    tied = helpers.llm_config(arch).tie_word_embeddings
    return helpers.load_reference(ref, sd, allow_missing=("lm_head.weight",) if tied else ())


def _autoround_logits(d):
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32, device_map="cpu", output_loading_info=True)
    problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")}
    assert not problems, f"AutoRound's own load is not trustworthy: {problems}"
    assert not any(type(m) is nn.Linear for n, m in model.named_modules() if n.endswith("q_proj")), "AutoRound left q_proj float"
    return helpers.llm_logits(model.eval())


def _quant_modules(model):
    return sorted(n for n, m in model.named_modules() if isinstance(m, QuantLinear))


@pytest.mark.interop
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_autoround_llm_one_call(arch, llama_export, qwen2_export):
    d = {"llama": llama_export, "qwen2": qwen2_export}[arch]
    model = quantlinear.from_pretrained(d, device="cpu", dtype=torch.float32)
    from transformers import LlamaForCausalLM, Qwen2ForCausalLM

    assert type(model) is {"llama": LlamaForCausalLM, "qwen2": Qwen2ForCausalLM}[arch]
    packed = sorted(k[: -len(".qweight")] for k in helpers.read_tensors(d) if k.endswith(".qweight"))
    assert _quant_modules(model) == packed
    assert isinstance(model.lm_head, nn.Linear) and not isinstance(model.lm_head, QuantLinear)
    logits = helpers.llm_logits(model)
    exact = rel_err(logits, helpers.llm_logits(_llm_reference(arch, d)))
    vs_ar = rel_err(logits, _autoround_logits(d))
    q = helpers.read_qcfg(d)
    record(f"{arch}_autoround", vs_dequant_ref=exact, vs_autoround_loader=vs_ar, packing=q["packing_format"],
           kernels=model.quantlinear_report.kernel_counts())
    assert exact < TOL_EXACT, exact
    assert vs_ar < TOL, vs_ar
    if arch == "llama":  # the per-layer config keeps the gate of layer 1 in float
        assert q["extra_config"]["model.layers.1.mlp.gate_proj"]["bits"] == 16
        gate = model.model.layers[1].mlp.gate_proj
        assert type(gate) is nn.Linear and gate.weight.dtype == torch.float32
        assert "model.layers.1.mlp.gate_proj" in model.quantlinear_report.float_layers
    if arch == "qwen2":  # tied embeddings survive the skeleton
        assert model.lm_head.weight is model.model.embed_tokens.weight


@pytest.mark.interop
def test_default_dtype_is_the_configs(llama_export):
    """dtype=None is Transformers' "auto": the dtype config.json names."""
    cfg = json.loads((llama_export / "config.json").read_text())
    want = getattr(torch, cfg.get("dtype") or cfg.get("torch_dtype"))
    model = quantlinear.from_pretrained(llama_export, device="cpu")
    assert model.quantlinear_report.dtype == want
    assert model.model.embed_tokens.weight.dtype == want


# ---- omni thinker ----------------------------------------------------------------------------------
THINKER_FLOAT = ("lm_head", r"model\.visual\..*", r"model\.audio_tower\..*", r"model\.language_model\.layers\.1\.mlp\.gate_proj")


@pytest.fixture(scope="session")
def thinker_hub_export(exports):
    """A Qwen2.5-Omni thinker quantized by quantlinear's writer, then stored under the Hub's names
    (``thinker.model.layers.*``, ``thinker.visual.*`` ...) with AutoRound-style per-layer float
    entries for lm_head, the towers and one gate."""

    def make(d):
        from safetensors.torch import load_file, save_file

        model = helpers.build_thinker()
        out = quantlinear.save_quantized(model, d, quantlinear.Scheme(bits=4, group_size=32), skip=THINKER_FLOAT,
                                         dtype=torch.float32)
        sd = load_file(str(out / "model.safetensors"))
        save_file({helpers.thinker_hub_name(k): v for k, v in sd.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
        cfg = json.loads((out / "config.json").read_text())
        q = cfg["quantization_config"]
        q["block_name_to_quantize"] = [helpers.thinker_hub_name(b + ".x")[:-2] for b in q["block_name_to_quantize"]]
        extra = {helpers.thinker_hub_name(k + ".x")[:-2]: v for k, v in (q.get("extra_config") or {}).items()}
        extra.update({"thinker.lm_head": {"bits": 16, "data_type": "float"},
                      r".*visual.*": {"bits": 16, "data_type": "float"},
                      r".*audio_tower.*": {"bits": 16, "data_type": "float"}})
        q["extra_config"] = extra
        cfg["architectures"] = ["Qwen2_5OmniThinkerForConditionalGeneration"]
        (out / "config.json").write_text(json.dumps(cfg))
        (out / "quantization_config.json").write_text(json.dumps(q))
        return out

    return exports.get("thinker_hub_w4g32", make)


def _hub_to_v5(name: str) -> str:
    for old, new in (("thinker.model.", "model.language_model."), ("thinker.visual.", "model.visual."),
                     ("thinker.audio_tower.", "model.audio_tower."), ("thinker.lm_head.", "lm_head.")):
        if name.startswith(old):
            return new + name[len(old):]
    raise AssertionError(name)


def test_omni_thinker_under_hub_names(thinker_hub_export):
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    d = thinker_hub_export
    keys = helpers.read_tensors(d)
    assert any(k.startswith("thinker.model.layers.0.") and k.endswith(".qweight") for k in keys)
    model = quantlinear.from_pretrained(d, device="cpu", dtype=torch.float32)
    assert type(model) is Qwen2_5OmniThinkerForConditionalGeneration
    report = model.quantlinear_report
    assert "qwen2_5_omni_thinker" in report.key_mapping
    packed = sorted(_hub_to_v5(k[: -len(".qweight")] + ".x")[:-2] for k in keys if k.endswith(".qweight"))
    assert _quant_modules(model) == packed
    assert all(n.startswith("model.language_model.layers.") for n in packed)
    # float as the per-layer config says: lm_head, the towers, one gate
    for name in ("lm_head", "model.visual.blocks.0.attn.q", "model.audio_tower.layers.0.fc1",
                 "model.language_model.layers.1.mlp.gate_proj"):
        assert type(model.get_submodule(name)) is nn.Linear, name
    ref = helpers.build_thinker(seed=123)
    sd = helpers.dequantized_state_dict(d, helpers.linear_dims(ref), rename=_hub_to_v5)
    helpers.load_reference(ref, sd)
    err = rel_err(helpers.llm_logits(model), helpers.llm_logits(ref))
    # the towers were loaded too (not left random): their weights equal the checkpoint's
    assert torch.equal(model.model.visual.blocks[0].attn.q.weight, sd["model.visual.blocks.0.attn.q.weight"])
    record("qwen2_5_omni_thinker_hub_names", vs_dequant_ref=err, quantized=len(packed),
           float_linear=len(report.float_layers))
    assert err < TOL_EXACT, err


def test_thinker_without_mapping_names_the_orphan_tensor(thinker_hub_export):
    with pytest.raises(quantlinear.CheckpointError, match=r"thinker\.model\.layers\.\d+\.\S+\.qweight maps to no module"):
        quantlinear.from_pretrained(thinker_hub_export, device="cpu", dtype=torch.float32, key_mapping=False)


def test_wrong_user_mapping_is_a_clear_error(thinker_hub_export):
    bad = {r"^thinker\.model\.layers\.1\.": "model.language_model.layers.7.", r"^thinker\.model\.": "model.language_model.",
           r"^thinker\.visual\.": "model.visual.", r"^thinker\.audio_tower\.": "model.audio_tower.", r"^thinker\.": ""}
    with pytest.raises(quantlinear.CheckpointError, match=r"layers\.7\.\S+\.qweight maps to no module.*user key_mapping"):
        quantlinear.from_pretrained(thinker_hub_export, device="cpu", dtype=torch.float32, key_mapping=bad)


def test_thinker_out_of_a_full_omni_checkpoint(thinker_hub_export, tmp_path):
    """A full Qwen2.5-Omni checkpoint also holds talker.* and token2wav.* tensors and a config whose
    thinker is a sub-config: asking for the thinker class builds it from thinker_config and the
    family mapping drops the other stages' tensors (reported, not silent)."""
    import shutil

    from safetensors.torch import load_file, save_file
    from transformers import Qwen2_5OmniConfig, Qwen2_5OmniThinkerForConditionalGeneration

    d = tmp_path / "full_omni"
    shutil.copytree(thinker_hub_export, d)
    sd = load_file(str(d / "model.safetensors"))
    sd["talker.model.layers.0.mlp.up_proj.weight"] = torch.randn(8, 8)
    sd["token2wav.code2wav_dit_model.proj.weight"] = torch.randn(4, 4)
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((d / "config.json").read_text())
    thinker = helpers.thinker_config().to_dict()
    full = Qwen2_5OmniConfig(thinker_config=thinker).to_dict()
    full["architectures"] = ["Qwen2_5OmniForConditionalGeneration"]
    full["quantization_config"] = cfg["quantization_config"]
    (d / "config.json").write_text(json.dumps(full, default=str))

    model = quantlinear.from_pretrained(d, device="cpu", dtype=torch.float32, model_class="Qwen2_5OmniThinkerForConditionalGeneration")
    assert type(model) is Qwen2_5OmniThinkerForConditionalGeneration
    assert any("dropped 2 checkpoint tensors" in w for w in model.quantlinear_report.warnings)
    ref = quantlinear.from_pretrained(thinker_hub_export, device="cpu", dtype=torch.float32)
    assert torch.equal(helpers.llm_logits(model), helpers.llm_logits(ref))
