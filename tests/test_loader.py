"""load_quantized end to end on a tiny model, and every kind of bad input it must reject."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import quantlinear as ql
from ql_testmodels import TinyNet


def reference_logits(ckpt_dir, ids):
    """The float model with every quantized weight replaced by its fp32 dequantization."""
    from quantlinear.config import read_quant_config
    from quantlinear.formats import get_format

    qcfg, _ = read_quant_config(ckpt_dir)
    sd = {}
    for f in sorted(ckpt_dir.glob("*.safetensors")):
        sd.update(load_file(str(f)))
    net = TinyNet().eval()
    for name, mod in net.named_modules():
        if f"{name}.qweight" in sd:
            scheme = qcfg.layer_scheme(name)
            spec = ql.LayerSpec(scheme, qcfg.format, mod.in_features, mod.out_features, mod.bias is not None, torch.float32, "cpu", False, name)
            t = {k.rsplit(".", 1)[1]: v for k, v in sd.items() if k.rsplit(".", 1)[0] == name}
            w = get_format(qcfg.format).unpack(t, spec)
            mod.weight.data = w.dequantize(spec.group_size)
            if mod.bias is not None:
                mod.bias.data = t["bias"].float()
            for k in list(t):
                sd.pop(f"{name}.{k}")
    net.load_state_dict({k: v.float() for k, v in sd.items()}, strict=False)
    with torch.no_grad():
        return net(ids)


IDS = torch.randint(0, 96, (2, 7), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("how", ["cpu", "skeleton", "meta_params"])
def test_load_matches_fp32_dequantized_reference(tiny_ckpt, cpu_registry, how):
    if how == "cpu":
        model = TinyNet()
    elif how == "skeleton":
        with ql.skeleton():
            model = TinyNet()
        assert model.layers[0].up.weight.is_meta and not model.position_scale.is_meta
    else:
        model = TinyNet().to_empty(device="meta") if False else None
        with ql.skeleton():
            model = TinyNet()
    model = ql.load_quantized(model, tiny_ckpt, registry=cpu_registry, dtype=torch.float32)
    rep = model.quantlinear_report
    assert set(rep.layers) == {f"layers.{i}.{p}" for i in range(2) for p in ("up", "down")}
    assert all(s.kernel.name.startswith("cpu.") and s.spec.scheme.bits == 4 for s in rep.layers.values())
    assert model.head.weight is model.embed.weight  # tie preserved
    with torch.no_grad():
        out = model(IDS)
    ref = reference_logits(tiny_ckpt, IDS)
    assert (out - ref).abs().max() / ref.abs().max() < 1e-5


def test_quantized_model_is_close_to_the_float_model(tiny_net, tiny_ckpt, cpu_registry):
    model = ql.load_quantized(TinyNet(), tiny_ckpt, registry=cpu_registry, dtype=torch.float32)
    with torch.no_grad():
        a, b = tiny_net(IDS), model(IDS)
    assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.99


def test_backend_forcing_and_dtype(tiny_ckpt, cpu_registry):
    model = ql.load_quantized(TinyNet(), tiny_ckpt, registry=cpu_registry, backend="cpu.dequant", dtype=torch.bfloat16)
    assert {s.kernel.name for s in model.quantlinear_report.layers.values()} == {"cpu.dequant"}
    assert model.embed.weight.dtype == torch.bfloat16
    ref = reference_logits(tiny_ckpt, IDS)
    with torch.no_grad():
        out = model(IDS).float()
    assert (out - ref).abs().max() / ref.abs().max() < 3e-2
    with pytest.raises(ql.UnknownBackendError, match="'exllamav2'"):
        ql.load_quantized(TinyNet(), tiny_ckpt, registry=cpu_registry, backend="exllamav2")


def test_sharded_checkpoint_with_index(tiny_net, tmp_path, cpu_registry):
    out = ql.save_quantized(tiny_net, tmp_path / "sh", "W8A16", skip=("head",), max_shard_size="20KB")
    assert (out / "model.safetensors.index.json").exists() and len(list(out.glob("*.safetensors"))) > 2
    model = ql.load_quantized(TinyNet(), out, registry=cpu_registry, dtype=torch.float32)
    assert all(s.spec.scheme.bits == 8 for s in model.quantlinear_report.layers.values())
    with torch.no_grad():
        assert (model(IDS) - reference_logits(out, IDS)).abs().max() < 1e-4


def test_per_layer_overrides(tiny_net, tmp_path, cpu_registry):
    out = ql.save_quantized(
        tiny_net, tmp_path / "mix", ql.Scheme(bits=4, group_size=32), skip=("head",),
        layer_config={r".*\.down": {"bits": 8, "group_size": -1}, "layers.1.up": {"bits": 16}},
    )
    cfg = json.loads((out / "config.json").read_text())["quantization_config"]
    assert cfg["extra_config"]["layers.1.up"]["bits"] == 16
    model = ql.load_quantized(TinyNet(), out, registry=cpu_registry, dtype=torch.float32)
    schemes = {n: (s.spec.scheme.bits, s.spec.scheme.group_size) for n, s in model.quantlinear_report.layers.items()}
    assert schemes == {"layers.0.up": (4, 32), "layers.0.down": (8, -1), "layers.1.down": (8, -1)}
    assert isinstance(model.layers[1].up, torch.nn.Linear)
    with torch.no_grad():
        assert (model(IDS) - reference_logits(out, IDS)).abs().max() < 1e-4


# ---- bad input ---------------------------------------------------------------------------------------
def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _rewrite(ckpt, fn):
    f = ckpt / "model.safetensors"
    sd = load_file(str(f))
    fn(sd)
    save_file(sd, str(f))


def test_truncated_file(tiny_ckpt, tmp_path, cpu_registry):
    d = _copy(tiny_ckpt, tmp_path / "t")
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ql.CheckpointError, match="truncated"):
        ql.load_quantized(TinyNet(), d, registry=cpu_registry)


def test_corrupt_header(tiny_ckpt, tmp_path, cpu_registry):
    d = _copy(tiny_ckpt, tmp_path / "c")
    data = bytearray((d / "model.safetensors").read_bytes())
    data[8:20] = b"\x00garbage!!!\x01"
    (d / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ql.CheckpointError, match="model.safetensors"):
        ql.load_quantized(TinyNet(), d, registry=cpu_registry)


def test_wrong_shape_names_layer_and_tensor(tiny_ckpt, tmp_path, cpu_registry):
    d = _copy(tiny_ckpt, tmp_path / "s")
    _rewrite(d, lambda sd: sd.__setitem__("layers.0.up.scales", sd["layers.0.up.scales"][:1].clone()))
    with pytest.raises(ql.CheckpointError, match=r"layers\.0\.up.*scales.*\(1, 128\).*\(2, 128\)"):
        ql.load_quantized(TinyNet(), d, registry=cpu_registry)


def test_wrong_dtype(tiny_ckpt, tmp_path, cpu_registry):
    d = _copy(tiny_ckpt, tmp_path / "dt")
    _rewrite(d, lambda sd: sd.__setitem__("layers.1.down.qweight", sd["layers.1.down.qweight"].to(torch.int64)))
    with pytest.raises(ql.CheckpointError, match=r"layers\.1\.down\.qweight.*int64.*int32"):
        ql.load_quantized(TinyNet(), d, registry=cpu_registry)


def test_missing_tensor(tiny_ckpt, tmp_path, cpu_registry):
    d = _copy(tiny_ckpt, tmp_path / "m")
    _rewrite(d, lambda sd: sd.pop("layers.0.down.qzeros"))
    with pytest.raises(ql.CheckpointError, match=r"layers\.0\.down.*qzeros.*missing"):
        ql.load_quantized(TinyNet(), d, registry=cpu_registry)


def test_missing_float_tensor(tiny_ckpt, tmp_path, cpu_registry):
    d = _copy(tiny_ckpt, tmp_path / "mf")
    _rewrite(d, lambda sd: sd.pop("norm.weight"))
    with pytest.raises(ql.CheckpointError, match="norm.weight"):
        ql.load_quantized(TinyNet(), d, registry=cpu_registry)


def test_unexpected_tensor_and_module_mismatch(tiny_ckpt, tmp_path, cpu_registry):
    d = _copy(tiny_ckpt, tmp_path / "u")
    _rewrite(d, lambda sd: sd.__setitem__("layers.0.extra.weight", torch.zeros(3)))
    with pytest.raises(ql.CheckpointError, match="layers.0.extra.weight"):
        ql.load_quantized(TinyNet(), d, registry=cpu_registry)
    m = ql.load_quantized(TinyNet(), d, registry=cpu_registry, strict=False)
    assert any("layers.0.extra.weight" in w for w in m.quantlinear_report.warnings)
    with pytest.raises(ql.CheckpointError, match="no module named 'layers.2.up'"):
        d2 = _copy(tiny_ckpt, tmp_path / "u2")
        _rewrite(d2, lambda sd: [sd.__setitem__(k.replace("layers.1", "layers.2"), sd.pop(k)) for k, v in list(sd.items()) if k.startswith("layers.1.up")])
        ql.load_quantized(TinyNet(), d2, registry=cpu_registry)


def test_bias_mismatch(tiny_ckpt, tmp_path, cpu_registry):
    d = _copy(tiny_ckpt, tmp_path / "b")
    _rewrite(d, lambda sd: sd.pop("layers.0.up.bias"))
    with pytest.raises(ql.CheckpointError, match=r"layers\.0\.up.*bias"):
        ql.load_quantized(TinyNet(), d, registry=cpu_registry)


def test_unsupported_bits_and_packing_in_config(tiny_ckpt, tmp_path, cpu_registry):
    for i, (key, value, match) in enumerate([("bits", 1, "bits=1"), ("packing_format", "auto_round:exl3", "auto_round:exl3"), ("group_size", 48, r"qzeros has shape \(4, 8\), expected \(3, 8\).*int4_g48")]):
        d = _copy(tiny_ckpt, tmp_path / f"cfg{i}")
        cfg = json.loads((d / "config.json").read_text())
        cfg["quantization_config"][key] = value
        (d / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(ql.QuantLinearError, match=match):
            ql.load_quantized(TinyNet(), d, registry=cpu_registry)


def test_pickles_are_never_loaded(tmp_path, cpu_registry):
    d = tmp_path / "pt"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 128}}))
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04 pickle")
    with pytest.raises(ql.CheckpointError, match="never loaded"):
        ql.load_quantized(TinyNet(), d, registry=cpu_registry)
    with pytest.raises(ql.CheckpointError, match="does not exist"):
        ql.load_quantized(TinyNet(), tmp_path / "nope", registry=cpu_registry)


def test_bad_arguments(tiny_ckpt, cpu_registry):
    with pytest.raises(ql.QuantLinearError, match="nn.Module"):
        ql.load_quantized("not a model", tiny_ckpt)
    with pytest.raises(ql.QuantLinearError, match="dtype"):
        ql.load_quantized(TinyNet(), tiny_ckpt, dtype=torch.int8)


def test_no_kernel_for_the_device_lists_reasons(tiny_ckpt, cpu_registry):
    with pytest.raises(ql.NoKernelError, match="runs on cpu, not meta"):
        ql.load_quantized(TinyNet(), tiny_ckpt, registry=cpu_registry, device="meta")


def test_key_mapping_loads_a_checkpoint_named_for_another_module_tree(tiny_ckpt, cpu_registry):
    class Renamed(TinyNet):
        """Same network, blocks under another name (as vLLM-Omni remaps Diffusers names)."""

        def __init__(self):
            super().__init__()
            self.blocks = self.layers
            del self.layers

        def forward(self, ids):
            x = self.embed(ids) * self.position_scale
            for blk in self.blocks:
                x = blk(x)
            return self.head(self.norm(x))

    with pytest.raises(ql.CheckpointError, match="no module named 'layers.0.down'"):
        ql.load_quantized(Renamed(), tiny_ckpt, registry=cpu_registry)
    model = ql.load_quantized(Renamed(), tiny_ckpt, registry=cpu_registry, dtype=torch.float32, key_mapping={r"^layers\.": "blocks."})
    assert "blocks.0.up" in model.quantlinear_report.layers
    with torch.no_grad():
        assert (model(IDS) - reference_logits(tiny_ckpt, IDS)).abs().max() < 1e-4
    with pytest.raises(ql.CheckpointError, match="sends both"):
        ql.load_quantized(Renamed(), tiny_ckpt, registry=cpu_registry, key_mapping={r"^layers\.\d+\.": "blocks.0."})


def test_config_claiming_sym_for_an_asymmetric_checkpoint_is_refused(tiny_net, tmp_path, cpu_registry):
    out = ql.save_quantized(tiny_net, tmp_path / "asym", ql.Scheme(bits=4, group_size=32, sym=False), skip=("head",))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["quantization_config"]["packing_format"] == "auto_round:auto_awq"
    ql.load_quantized(TinyNet(), out, registry=cpu_registry)  # fine as written
    cfg["quantization_config"]["sym"] = True
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ql.CheckpointError, match=r"config says sym=True but tensor layers\.\d\.(up|down)\.qzeros holds zero point \d+ \(output channel"):
        ql.load_quantized(TinyNet(), out, registry=cpu_registry)


def test_key_mapping_can_drop_tensors_of_other_stages(tiny_ckpt, tmp_path, cpu_registry):
    d = _copy(tiny_ckpt, tmp_path / "stages")
    _rewrite(d, lambda sd: sd.__setitem__("talker.layers.0.up.weight", torch.zeros(4, 4)))
    with pytest.raises(ql.CheckpointError, match="talker.layers.0.up.weight"):
        ql.load_quantized(TinyNet(), d, registry=cpu_registry)
    model = ql.load_quantized(TinyNet(), d, registry=cpu_registry, dtype=torch.float32, key_mapping={r"^talker\.": None})
    assert any("dropped 1 checkpoint tensors" in w for w in model.quantlinear_report.warnings)
    with torch.no_grad():
        assert (model(IDS) - reference_logits(tiny_ckpt, IDS)).abs().max() < 1e-4
