"""Diffusers transformers and pipelines quantized by the real AutoRound, loaded in one call.

Exports (``/work/shared/notes/diffusers-autoround.md``): the pipeline route (a pipeline of a
scheduler and a tiny transformer, zero-shot RTN) for Flux (W4 g128 sym: every 64-input layer is
one partial group, the 320-input ``proj_out`` has a partial last group; and W4 g32 asym, packed
AWQ-style) and Z-Image; the model-free route for Flux (W4 g128 asym from a saved bf16 folder:
layers packed outside ``block_name_to_quantize``, inputs padded to whole groups).  Each load
is compared with the float model of the same class holding the checkpoint's weights, decoded
independently (``helpers.decode_layer``).
"""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import torch  # noqa: E402

import quantlinear  # noqa: E402
from quantlinear import QuantLinear  # noqa: E402

from . import helpers  # noqa: E402
from .helpers import TOL, TOL_EXACT, rel_err, record  # noqa: E402

pytestmark = pytest.mark.interop


@pytest.fixture(scope="session")
def flux_g128(exports):
    pytest.importorskip("auto_round")
    return exports.get("flux_pipe_w4g128_sym", lambda d: helpers.autoround_pipeline_export("flux", d, scheme="W4A16", group_size=128, sym=True))


@pytest.fixture(scope="session")
def flux_g32_asym(exports):
    pytest.importorskip("auto_round")
    return exports.get("flux_pipe_w4g32_asym", lambda d: helpers.autoround_pipeline_export("flux", d, scheme="W4A16", group_size=32, sym=False))


@pytest.fixture(scope="session")
def flux_model_free(exports):
    pytest.importorskip("auto_round")

    def make(d):
        d.mkdir()
        return helpers.autoround_model_free_export(helpers.build_flux(), d / "src", d / "out", scheme="W4A16", group_size=128, sym=False)

    return exports.get("flux_model_free_w4g128_asym", make)


@pytest.fixture(scope="session")
def zimage_pipe(exports):
    pytest.importorskip("auto_round")
    return exports.get("zimage_pipe_w4g64_sym", lambda d: helpers.autoround_pipeline_export("zimage", d, scheme="W4A16", group_size=64, sym=True))


def _reference(build, folder):
    """The float model of the same class with the checkpoint's weights decoded independently."""
    ref = build(seed=123)  # other random weights: the load must overwrite every one
    sd = helpers.dequantized_state_dict(folder, helpers.linear_dims(ref))
    return helpers.load_reference(ref, sd)


def _packed(folder):
    return sorted(k[: -len(".qweight")] for k in helpers.read_tensors(folder) if k.endswith(".qweight"))


def _quant_modules(model):
    return sorted(n for n, m in model.named_modules() if isinstance(m, QuantLinear))


# ---- pipeline route ------------------------------------------------------------------------------
def test_flux_pipeline_route_transformer_folder(flux_g128):
    folder = flux_g128 / "transformer"
    cfg = json.loads((folder / "config.json").read_text())
    # what the notes say the pipeline route writes: no _class_name, model.safetensors
    assert "_class_name" not in cfg and (folder / "model.safetensors").is_file()
    model = quantlinear.from_pretrained(folder, device="cpu", dtype=torch.float32)
    from diffusers import FluxTransformer2DModel

    assert type(model) is FluxTransformer2DModel
    assert _quant_modules(model) == _packed(folder)
    ref = _reference(helpers.build_flux, folder)
    err = rel_err(helpers.flux_out(model), helpers.flux_out(ref))
    record("flux_pipeline_route_g128_sym", vs_dequant_ref=err, layers=len(_packed(folder)),
           kernels=model.quantlinear_report.kernel_counts())
    assert err < TOL_EXACT, err
    # partial groups really are there: K=64 < 128, and proj_out K=320 = 2*128 + 64
    spec = model.quantlinear_report.layers["single_transformer_blocks.0.proj_out"].spec
    assert (spec.in_features, spec.num_groups) == (320, 3)
    assert model.quantlinear_report.layers["transformer_blocks.0.attn.to_q"].spec.in_features == 64


def test_quantized_layers_matter(flux_g128):
    """The comparison can fail: a layer left with random weights (what a silently failed load
    leaves) moves the output by more than the brief's 2e-2, and 100x more than TOL_EXACT."""
    folder = flux_g128 / "transformer"
    ref = _reference(helpers.build_flux, folder)
    base = helpers.flux_out(ref)
    for name in ("transformer_blocks.0.ff.net.2", "transformer_blocks.0.norm1.linear", "single_transformer_blocks.0.proj_out"):
        layer = ref.get_submodule(name)
        w = layer.weight.data.clone()
        torch.manual_seed(0)
        layer.weight.data = torch.randn_like(w) * w.std()
        moved = rel_err(helpers.flux_out(ref), base)
        layer.weight.data = w
        record("flux_sensitivity", **{name: moved})
        assert moved > TOL, (name, moved)


def test_flux_whole_pipeline_one_call(flux_g128):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    pipe = quantlinear.from_pretrained(flux_g128, device="cpu", dtype=torch.float32)
    assert isinstance(pipe, FluxPipeline)
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler)
    assert set(pipe.quantlinear_reports) == {"transformer"}
    assert _quant_modules(pipe.transformer) == _packed(flux_g128 / "transformer")
    ref = _reference(helpers.build_flux, flux_g128 / "transformer")
    err = rel_err(helpers.flux_out(pipe.transformer), helpers.flux_out(ref))
    record("flux_pipeline_one_call", vs_dequant_ref=err)
    assert err < TOL_EXACT, err


def _tiny_clip(seed=0):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(vocab_size=99, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                         max_position_embeddings=16, projection_dim=32)
    return CLIPTextModel(cfg).eval()


def test_pipeline_dtype_and_device_apply_to_every_component(flux_g128, tmp_path):
    """A pipeline with an AutoRound-quantized transformer, a quantized Transformers text encoder
    (quantlinear's writer) and a float VAE: the quantized ones load through quantlinear, the VAE
    through Diffusers, and dtype reaches all three."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel

    d = tmp_path / "pipe"
    shutil.copytree(flux_g128, d)
    torch.manual_seed(0)
    AutoencoderKL(block_out_channels=(32,), down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
                  layers_per_block=1, latent_channels=4, norm_num_groups=32).save_pretrained(d / "vae")
    clip = _tiny_clip()
    quantlinear.save_quantized(clip, d / "text_encoder", quantlinear.Scheme(bits=4, group_size=32), skip=(), dtype=torch.float32,
                               config_transform=lambda c: {**c, "architectures": ["CLIPTextModel"]})
    index = json.loads((d / "model_index.json").read_text())
    index["vae"] = ["diffusers", "AutoencoderKL"]
    index["text_encoder"] = ["transformers", "CLIPTextModel"]
    (d / "model_index.json").write_text(json.dumps(index))

    pipe = quantlinear.load_pipeline(d, torch_dtype=torch.bfloat16, device={"transformer": "cpu", "vae": "cpu"})
    assert set(pipe.quantlinear_reports) == {"transformer", "text_encoder"}
    assert type(pipe.text_encoder) is CLIPTextModel and len(_quant_modules(pipe.text_encoder)) == 6
    assert type(pipe.vae) is AutoencoderKL and not _quant_modules(pipe.vae)
    for name in ("vae", "transformer", "text_encoder"):
        comp = getattr(pipe, name)
        assert {p.dtype for p in comp.parameters() if p.dtype.is_floating_point} == {torch.bfloat16}, name
        assert {p.device.type for p in comp.parameters()} == {"cpu"}, name
    assert pipe.quantlinear_reports["transformer"].dtype == torch.bfloat16
    ref = _reference(helpers.build_flux, flux_g128 / "transformer")
    err = rel_err(helpers.flux_out(pipe.transformer, torch.bfloat16), helpers.flux_out(ref))
    record("flux_pipeline_bf16", vs_fp32_dequant_ref=err)
    assert err < TOL, err
    # the quantized text encoder computes what its float reference does
    ref_clip = helpers.load_reference(_tiny_clip(seed=5), helpers.dequantized_state_dict(d / "text_encoder", helpers.linear_dims(clip)))
    ids = torch.randint(0, 99, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = pipe.text_encoder(ids).last_hidden_state.float()
        want = ref_clip(ids).last_hidden_state
    err = rel_err(got, want)
    record("pipeline_quantized_clip_text_encoder_bf16", vs_fp32_dequant_ref=err)
    assert err < TOL, err

    with pytest.raises(quantlinear.QuantLinearError, match="text_encoder_3"):
        quantlinear.load_pipeline(d, device={"text_encoder_3": "cpu"})


def test_flux_awq_packed_pipeline_route(flux_g32_asym):
    folder = flux_g32_asym / "transformer"
    assert helpers.read_qcfg(folder)["packing_format"] == "auto_round:auto_awq"
    model = quantlinear.from_pretrained(folder, device="cpu", dtype=torch.float32)
    assert _quant_modules(model) == _packed(folder)
    err = rel_err(helpers.flux_out(model), helpers.flux_out(_reference(helpers.build_flux, folder)))
    record("flux_pipeline_route_g32_asym_awq", vs_dequant_ref=err)
    assert err < TOL_EXACT, err


def test_diffusers_weight_file_names(flux_g128, tmp_path):
    """Diffusers' own names (and a _class_name) load the same; both names at once are ambiguous."""
    d = tmp_path / "transformer"
    shutil.copytree(flux_g128 / "transformer", d)
    (d / "model.safetensors").rename(d / "diffusion_pytorch_model.safetensors")
    cfg = json.loads((d / "config.json").read_text())
    cfg["_class_name"] = "FluxTransformer2DModel"
    (d / "config.json").write_text(json.dumps(cfg))
    a = quantlinear.from_pretrained(d, device="cpu", dtype=torch.float32)
    b = quantlinear.from_pretrained(flux_g128 / "transformer", device="cpu", dtype=torch.float32)
    assert torch.equal(helpers.flux_out(a), helpers.flux_out(b))
    shutil.copy(d / "diffusion_pytorch_model.safetensors", d / "model.safetensors")
    with pytest.raises(quantlinear.CheckpointError, match="ambiguous"):
        quantlinear.from_pretrained(d, device="cpu")


def test_checkpoint_config_wins_over_user_settings(flux_g128, flux_g32_asym):
    from transformers import AutoRoundConfig

    folder = flux_g32_asym / "transformer"
    # AutoRoundConfig's defaults (4 bits, g128, sym) are not the user's choice: the g32 asym
    # checkpoint still loads with its own settings (Diffusers' own path copies them over)
    m = quantlinear.from_pretrained(folder, device="cpu", dtype=torch.float32, quantization_config=AutoRoundConfig())
    spec = next(iter(m.quantlinear_report.layers.values())).spec
    assert (spec.scheme.group_size, spec.scheme.sym) == (32, False)
    with pytest.raises(quantlinear.ConfigError, match=r"group_size=128.*group_size=32"):
        quantlinear.from_pretrained(folder, device="cpu", quantization_config={"group_size": 128})
    with pytest.raises(quantlinear.ConfigError, match=r"sym=True.*sym=False"):
        quantlinear.from_pretrained(folder, device="cpu", quantization_config={"sym": True})
    with pytest.raises(quantlinear.ConfigError, match="group_size=64"):
        quantlinear.from_pretrained(folder, device="cpu", quantization_config=AutoRoundConfig(group_size=64))
    with pytest.raises(quantlinear.ConfigError, match="bits=8"):
        quantlinear.load_pipeline(flux_g128, device="cpu", quantization_config={"bits": 8})
    with pytest.raises(quantlinear.ConfigError, match="unknown setting"):
        quantlinear.from_pretrained(folder, device="cpu", quantization_config={"groupsize": 32})
    # repeating the checkpoint's settings and naming a backend is fine
    m = quantlinear.from_pretrained(folder, device="cpu", dtype=torch.float32,
                                    quantization_config={"bits": 4, "group_size": 32, "sym": False, "backend": "cpu.dequant"})
    assert set(m.quantlinear_report.kernel_counts()) == {"cpu.dequant"}


# ---- model-free route ----------------------------------------------------------------------------
def test_flux_model_free_route(flux_model_free):
    d = flux_model_free
    q = helpers.read_qcfg(d)
    tensors = helpers.read_tensors(d)
    packed = _packed(d)
    blocks = [b for b in q["block_name_to_quantize"].split(",")]
    outside = [n for n in packed if not any(n == b or n.startswith(b + ".") for b in blocks)]
    # the notes: layers packed outside block_name_to_quantize, inputs padded to whole groups
    assert {"norm_out.linear", "proj_out"} <= set(outside), outside
    assert tuple(tensors["proj_out.qweight"].shape) == (128 * 4 // 32, 16)  # K=64 padded to one group of 128
    assert json.loads((d / "config.json").read_text())["_class_name"] == "FluxTransformer2DModel"

    model = quantlinear.from_pretrained(d, device="cpu", dtype=torch.float32)
    assert _quant_modules(model) == packed
    ref = _reference(helpers.build_flux, d)
    err = rel_err(helpers.flux_out(model), helpers.flux_out(ref))
    record("flux_model_free_g128_asym", vs_dequant_ref=err, packing=q["packing_format"], outside_blocks=len(outside))
    assert err < TOL_EXACT, err
    for backend in ("cpu.dequant",):
        m2 = quantlinear.from_pretrained(d, device="cpu", dtype=torch.float32, backend=backend)
        assert rel_err(helpers.flux_out(m2), helpers.flux_out(ref)) < TOL_EXACT


# ---- Z-Image -------------------------------------------------------------------------------------
def test_zimage_pipeline_route(zimage_pipe):
    from diffusers import ZImageTransformer2DModel

    folder = zimage_pipe / "transformer"
    model = quantlinear.from_pretrained(folder, device="cpu", dtype=torch.float32)
    assert type(model) is ZImageTransformer2DModel
    packed = _packed(folder)
    assert packed and _quant_modules(model) == packed
    ref = _reference(helpers.build_zimage, folder)
    err = rel_err(helpers.zimage_out(model), helpers.zimage_out(ref))
    record("zimage_pipeline_route_g64_sym", vs_dequant_ref=err, layers=len(packed),
           block_name_to_quantize=helpers.read_qcfg(folder).get("block_name_to_quantize"))
    assert err < TOL_EXACT, err
