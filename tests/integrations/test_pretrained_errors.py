"""Bad input to ``from_pretrained`` / ``load_pipeline`` raises a QuantLinearError that names it,
and the core never imports Transformers or Diffusers by itself."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

import quantlinear
from quantlinear import CheckpointError, ConfigError, QuantLinearError

from . import helpers


def test_core_import_pulls_in_no_model_library():
    code = ("import sys, quantlinear, quantlinear.pretrained, quantlinear.integrations.mappings; "
            "bad = [m for m in ('transformers', 'diffusers', 'auto_round') if m in sys.modules]; "
            "assert not bad, bad; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    pytest.importorskip("transformers")
    d = tmp_path_factory.mktemp("errors") / "llama"
    return quantlinear.save_quantized(helpers.build_llm("llama"), d, quantlinear.Scheme(bits=4, group_size=32), dtype=torch.float32)


def _copy(src, tmp_path, name="m"):
    d = tmp_path / name
    shutil.copytree(src, d)
    return d


def _edit_config(d, fn):
    cfg = json.loads((d / "config.json").read_text())
    fn(cfg)
    (d / "config.json").write_text(json.dumps(cfg))


def test_loads_in_one_call(llama_dir):
    """The happy path the error tests below perturb (quantlinear's own writer, no AutoRound)."""
    m = quantlinear.from_pretrained(llama_dir, device="cpu", dtype="float32")
    assert len(m.quantlinear_report.layers) == 14
    assert helpers.llm_logits(m).isfinite().all()


def test_missing_libraries_are_named(llama_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(QuantLinearError, match=r"optional package 'transformers'.*pip install"):
        quantlinear.from_pretrained(llama_dir, device="cpu")
    monkeypatch.setitem(sys.modules, "diffusers", None)
    from quantlinear.integrations import diffusers as integ

    with pytest.raises(QuantLinearError, match="optional package 'diffusers'"):
        integ.model_class_for("FluxTransformer2DModel")


def test_bad_paths(tmp_path, llama_dir):
    with pytest.raises(CheckpointError, match="does not exist"):
        quantlinear.from_pretrained(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="not a file"):
        quantlinear.from_pretrained(llama_dir / "model.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="neither config.json"):
        quantlinear.from_pretrained(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="does not exist"):
        quantlinear.from_pretrained(llama_dir, subfolder="transformer")


def test_bad_config_and_class(tmp_path, llama_dir):
    d = _copy(llama_dir, tmp_path, "noclass")
    _edit_config(d, lambda c: [c.pop("architectures", None), c.pop("model_type", None)])
    with pytest.raises(ConfigError, match="names no model class"):
        quantlinear.from_pretrained(d, device="cpu")
    d = _copy(llama_dir, tmp_path, "badtype")
    _edit_config(d, lambda c: c.update(model_type="no_such_model_type", architectures=["NoSuchModel"]))
    with pytest.raises(ConfigError, match="no_such_model_type|NoSuchModel"):
        quantlinear.from_pretrained(d, device="cpu")
    d = _copy(llama_dir, tmp_path, "badjson")
    (d / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read JSON"):
        quantlinear.from_pretrained(d, device="cpu")
    with pytest.raises(ConfigError, match="model_class='NoSuchModel'"):
        quantlinear.from_pretrained(llama_dir, device="cpu", model_class="NoSuchModel")
    with pytest.raises(QuantLinearError, match="model_class must be"):
        quantlinear.from_pretrained(llama_dir, device="cpu", model_class=42)


def test_diffusers_class_errors(tmp_path, llama_dir):
    pytest.importorskip("diffusers")
    d = _copy(llama_dir, tmp_path, "diff")
    _edit_config(d, lambda c: c.update(_class_name="NoSuchTransformer2DModel"))
    with pytest.raises(ConfigError, match="no model class 'NoSuchTransformer2DModel'"):
        quantlinear.from_pretrained(d, device="cpu")
    _edit_config(d, lambda c: c.update(_class_name="FluxPipeline"))
    with pytest.raises(ConfigError, match="not a Diffusers model class"):
        quantlinear.from_pretrained(d, device="cpu")
    _edit_config(d, lambda c: c.update(_class_name="FluxTransformer2DModel"))  # Llama config, Flux class
    with pytest.raises(QuantLinearError, match=r"maps to no module|cannot build"):
        quantlinear.from_pretrained(d, device="cpu")


def test_unquantized_folder_and_bad_arguments(tmp_path, llama_dir):
    d = tmp_path / "float"
    helpers.build_llm("llama").save_pretrained(d)
    with pytest.raises(ConfigError, match="no quantization config"):
        quantlinear.from_pretrained(d, device="cpu")
    with pytest.raises(QuantLinearError, match="dtype"):
        quantlinear.from_pretrained(llama_dir, device="cpu", dtype=torch.int8)
    with pytest.raises(QuantLinearError, match="dtype"):
        quantlinear.from_pretrained(llama_dir, device="cpu", dtype="float13")
    with pytest.raises(QuantLinearError, match="disagree"):
        quantlinear.from_pretrained(llama_dir, device="cpu", dtype=torch.float16, torch_dtype=torch.bfloat16)
    with pytest.raises(QuantLinearError, match="not a device"):
        quantlinear.from_pretrained(llama_dir, device="warp-drive")
    with pytest.raises(QuantLinearError, match=r"unexpected keyword arguments \['variant'\]"):
        quantlinear.from_pretrained(llama_dir, device="cpu", variant="fp16")
    with pytest.raises(QuantLinearError, match="no-such-backend"):
        quantlinear.from_pretrained(llama_dir, device="cpu", backend="no-such-backend")
    with pytest.raises(ConfigError, match="disagree"):
        quantlinear.from_pretrained(llama_dir, device="cpu", backend="cpu.int4pack", quantization_config={"backend": "cpu.dequant"})


def test_corrupt_and_ambiguous_weights(tmp_path, llama_dir):
    d = _copy(llama_dir, tmp_path, "trunc")
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated"):
        quantlinear.from_pretrained(d, device="cpu")
    d = _copy(llama_dir, tmp_path, "shape")
    from safetensors.torch import load_file, save_file

    sd = load_file(str(d / "model.safetensors"))
    sd["model.layers.0.self_attn.q_proj.scales"] = sd["model.layers.0.self_attn.q_proj.scales"][:, :64].contiguous()
    save_file(sd, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model\.layers\.0\.self_attn\.q_proj.*scales"):
        quantlinear.from_pretrained(d, device="cpu")
    d = _copy(llama_dir, tmp_path, "index")
    (d / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x.weight": "gone.safetensors"}}))
    (d / "model.safetensors").rename(d / "diffusion_pytorch_model-00001-of-00001.safetensors")
    with pytest.raises(CheckpointError, match="gone.safetensors"):
        quantlinear.from_pretrained(d, device="cpu")


def test_pipeline_errors(tmp_path, llama_dir):
    pytest.importorskip("diffusers")
    d = tmp_path / "pipe"
    d.mkdir()
    (d / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline", "transformer": ["diffusers", "FluxTransformer2DModel"]}))
    with pytest.raises(ConfigError, match="no component of the pipeline is quantized"):
        quantlinear.load_pipeline(d)
    with pytest.raises(ConfigError, match="not a Diffusers pipeline"):
        quantlinear.load_pipeline(llama_dir)
    with pytest.raises(QuantLinearError, match="pipeline: model_class= and key_mapping="):
        quantlinear.from_pretrained(d, model_class="FluxTransformer2DModel")
    (d / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline", "transformer": ["diffusers", 7]}))
    with pytest.raises(ConfigError, match="invalid entry"):
        quantlinear.load_pipeline(d)
